"""Docker as an image source: copies images out of its store directly (the classic store's data
root, containerd's content store) or with ``docker save``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from forklift_boot.archive.docker_save import import_docker_save
from forklift_boot.archive.oci_layout import (
    copied_from_layout,
    drop_other_platforms,
    import_oci_layout,
)
from forklift_boot.cache import CacheWriter, Descriptor
from forklift_boot.errors import EngineError, ImageRefError
from forklift_boot.images import ByteCounter, CopiedImage, SourceImage, Wanted
from forklift_boot.platforms import platform_object
from forklift_boot.refs import ImageRef, parse_image_ref
from forklift_boot.stores.containerd.content_store import (
    CONTENT_DIR,
    ContentStore,
    configured_root,
    content_store_for,
)
from forklift_boot.stores.docker.classic_store import ClassicStore, DirectReadError, ReadCounter
from forklift_boot.stores.docker.direct_copy import copy_direct
from forklift_boot.stores.docker.engine import DockerEngine, EngineInfo, ImageInfo

log = logging.getLogger(__name__)

# A Docker socket on this machine; tcp://, ssh:// and http(s):// may be another machine, whose
# data root (same path or not) is not the one this process would read.
LOCAL_SCHEMES = ("unix", "http+unix")


class DockerSource:
    """Copies images out of a Docker daemon.

    From the classic store, straight from its data root when this process can read it
    (direct_copy.py: on this machine, overlay2, readable), else, and for any image that doesn't
    check out that way, with one ``docker save`` stream; layers are compressed here, as asked.
    From the containerd image store, the registry's own manifests and compressed blobs, kept as
    they are: taken from containerd's content store directory when this process can read it
    (``containerd_root``, else containerd's configuration: Docker does not report it), linked
    into the cache unless ``link`` is off; else from ``docker save``'s OCI layout.
    """

    def __init__(
        self,
        engine: DockerEngine,
        *,
        all_platforms: bool = False,
        containerd_root: Path | None = None,
        link: bool = True,
        cache_dir: Path | None = None,
    ) -> None:
        self.engine = engine
        self.all_platforms = all_platforms  # the containerd image store may hold several
        self.containerd_root = containerd_root
        self.link = link
        self.cache_dir = cache_dir  # where linked layers cost no space (the free-space check)
        self._content: ContentStore | None = None
        self._content_store_looked_up = False
        self.description = f"Docker at {engine.base_url}"
        self._found_as: dict[str, str] = {}  # canonical name -> the ref Docker resolved
        self._info: EngineInfo | None = None
        self._direct: ClassicStore | None = None
        self._direct_checked = False
        self._copied: dict[str, CopiedImage] = {}  # by image ID, copied directly in this run
        self._not_direct: set[str] = set()  # image IDs whose direct copy failed in this run

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            self._info = self.engine.info()
        return self._info

    @property
    def is_containerd_store(self) -> bool:
        return self.info.is_containerd_store

    def find(self, wanted: Wanted) -> SourceImage | None:
        for ref in wanted.refs:
            info = self.engine.inspect_image(ref.written)
            if info is not None:
                self._found_as[wanted.canonical] = ref.written
                return SourceImage(
                    wanted=wanted,
                    image_id=info.image_id,
                    registry_digest=ref.digest or _registry_digest(info, ref),
                    platform=info.platform,
                    size=0 if self._links_layers() else info.size,
                )
        return None

    def _links_layers(self) -> bool:
        """On the containerd image store, whether layers will be hard links into the cache."""
        if self.cache_dir is None or not self.is_containerd_store:
            return False
        store = self._content_store()
        return store is not None and store.links_into(self.cache_dir)

    def _content_store(self) -> ContentStore | None:
        if not self._content_store_looked_up:
            self._content_store_looked_up = True
            self._content = content_store_for(
                self.containerd_root, [configured_root() / CONTENT_DIR], share=self.link
            )
        return self._content

    def copy(
        self,
        images: Sequence[SourceImage],
        writer: CacheWriter,
        *,
        compress: str,
        known_layers: Mapping[str, Descriptor],
        on_bytes: ByteCounter,
    ) -> dict[str, CopiedImage]:
        if self.is_containerd_store:
            return self._copy_layout(images, writer, on_bytes)
        image_ids = sorted({image.image_id for image in images})
        # A run that retries images one at a time (after docker save failed for one of them)
        # neither reads again what it copied directly, nor tries again what failed that way.
        copied = {i: self._copied[i] for i in image_ids if i in self._copied}
        to_read = [i for i in image_ids if i not in copied and i not in self._not_direct]
        store = self._direct_store() if to_read else None
        if store is not None:
            direct = copy_direct(
                store,
                to_read,
                writer,
                compress=compress,
                known_layers=known_layers,
                on_bytes=on_bytes,
            )
            counter = store.counter
            log.debug(
                "read %d bytes in %d files of %d layers from Docker's data root; "
                "%d layers the cache has were not read",
                counter.bytes_read,
                counter.files_opened,
                direct.layers_read,
                direct.layers_skipped,
            )
            for image_id, reason in sorted(direct.failed.items()):
                log.warning("copying %s with docker save: %s", image_id, reason)
                self._not_direct.add(image_id)
            self._copied.update(direct.copied)
            copied.update(direct.copied)
            known_layers = {**known_layers, **direct.stored_layers}
        saved = [i for i in image_ids if i not in copied]
        if saved:
            copied.update(self._copy_saved(saved, writer, compress, known_layers, on_bytes))
        return copied

    def _direct_store(self) -> ClassicStore | None:
        """Docker's classic store, when this process can read it as dockerd does; else None
        (said once), and images are copied with ``docker save``."""
        if self._direct_checked:
            return self._direct
        self._direct_checked = True
        scheme = urlsplit(self.engine.base_url).scheme
        if scheme not in LOCAL_SCHEMES:
            reason = f"Docker at {self.engine.base_url} is not on this machine"
        else:
            info = self.info
            store = ClassicStore(Path(info.data_root), info.storage_driver, ReadCounter())
            try:
                store.check()
            except DirectReadError as err:
                reason = str(err)
            else:
                self._direct = store
                return store
        log.info("copying images with docker save: %s", reason)
        return None

    def _copy_saved(
        self,
        image_ids: Sequence[str],
        writer: CacheWriter,
        compress: str,
        known_layers: Mapping[str, Descriptor],
        on_bytes: ByteCounter,
    ) -> dict[str, CopiedImage]:
        # By image ID: one name per image, and the saved manifest.json needs no tags.
        imported = import_docker_save(
            self.engine.save(image_ids),
            writer,
            compress=compress,
            known_layers=known_layers,
            on_bytes=on_bytes,
        )
        by_id = {image.image_id: image for image in imported}
        missing = [image_id for image_id in image_ids if image_id not in by_id]
        if missing:
            raise EngineError(f"Docker's export left out {', '.join(missing)}")
        return {
            image_id: CopiedImage(
                manifest=_with_platform(image.manifest, image.config),
                new_bytes=image.new_layer_bytes,
            )
            for image_id, image in by_id.items()
        }

    def _copy_layout(
        self, images: Sequence[SourceImage], writer: CacheWriter, on_bytes: ByteCounter
    ) -> dict[str, CopiedImage]:
        """The containerd image store keeps what it pulled: blobs unchanged (compress and
        known_layers do not apply), from the content store directory, else saved as an OCI
        layout by the refs that found them: an image asked for by ID alone has no name in the
        stream, and entries are matched by digest."""
        copied: dict[str, CopiedImage] = {}
        store = self._content_store()
        if store is not None:
            # Docker's image ID in this store is the digest of the manifest or index.
            roots = [
                (
                    image,
                    Descriptor("", image.image_id, 0),
                    self._found_as[image.wanted.canonical],
                    image.platform,
                )
                for image in images
            ]
            copied = store.copy_images(
                writer, roots, all_platforms=self.all_platforms, on_bytes=on_bytes
            )
        rest = [image for image in images if image.wanted.canonical not in copied]
        if rest:
            copied.update(self._save_layout(rest, writer, on_bytes))
        return copied

    def _save_layout(
        self, images: Sequence[SourceImage], writer: CacheWriter, on_bytes: ByteCounter
    ) -> dict[str, CopiedImage]:
        names = sorted({self._found_as[image.wanted.canonical] for image in images})
        layout = import_oci_layout(
            self.engine.save(names), writer, what=self.description, on_bytes=on_bytes
        )
        # Docker's image ID in this store is the digest of the manifest or index it names.
        descriptors: dict[str, Descriptor] = {}
        for image in images:
            descriptor = layout.by_digest.get(image.image_id)
            if descriptor is None:
                raise EngineError(
                    f"Docker's export of {self._found_as[image.wanted.canonical]} left out "
                    f"{image.image_id}"
                )
            descriptors[image.wanted.canonical] = descriptor
        if not self.all_platforms:
            # Docker saves every platform it has pulled (API 1.45 has no platform filter).
            drop_other_platforms(
                writer,
                layout,
                [(descriptors[image.wanted.canonical], image.platform) for image in images],
            )
        copied: dict[str, CopiedImage] = {}
        credited: set[str] = set()
        for image in images:
            descriptor = descriptors[image.wanted.canonical]
            copied[image.wanted.canonical] = copied_from_layout(
                writer,
                layout,
                descriptor,
                platform=image.platform,
                name=image.wanted.canonical,
                credited=credited,
            )
            copied.setdefault(image.image_id, copied[image.wanted.canonical])
        return copied


def _registry_digest(info: ImageInfo, ref: ImageRef) -> str | None:
    """The digest Docker recorded for the ref's repository when it pulled the image."""
    for repo_digest in info.repo_digests:
        try:
            parsed = parse_image_ref(repo_digest)
        except ImageRefError:
            continue
        if parsed.name == ref.name and parsed.digest:
            return parsed.digest
    return None


def _with_platform(manifest: Descriptor, config: Mapping[str, object]) -> Descriptor:
    return Descriptor(
        manifest.media_type, manifest.digest, manifest.size, platform=platform_object(config)
    )
