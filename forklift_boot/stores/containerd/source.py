"""containerd as an image source: blobs taken from its content store directory, or else copied
out with one ``ctr images export`` stream."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from forklift_boot.archive.oci_layout import copied_from_layout, import_oci_layout
from forklift_boot.cache import CacheWriter, Descriptor
from forklift_boot.errors import EngineError, ImageRefError
from forklift_boot.images import ByteCounter, CopiedImage, SourceImage, Wanted
from forklift_boot.refs import ImageRef, parse_image_ref
from forklift_boot.stores.containerd.content_store import (
    CONTENT_DIR,
    ContentStore,
    configured_root,
    content_store_for,
)
from forklift_boot.stores.containerd.ctr import Ctr, ImageRecord, containerd_name

log = logging.getLogger(__name__)


class ContainerdSource:
    """Copies images out of containerd, blobs unchanged: from its content store directory when
    this process can read it (``containerd_root``, else where containerd says it is, else its
    configuration's), linked into the cache unless ``link`` is off; the rest with one ``ctr
    images export`` stream."""

    def __init__(
        self,
        ctr: Ctr,
        platform: str,
        *,
        all_platforms: bool = False,
        containerd_root: Path | None = None,
        link: bool = True,
        cache_dir: Path | None = None,
    ) -> None:
        self.ctr = ctr
        self.cache_dir = cache_dir  # where linked layers cost no space (the free-space check)
        self.platform = platform
        self.all_platforms = all_platforms
        self.containerd_root = containerd_root
        self.link = link
        self.description = ctr.where
        self._record_names: dict[str, str] = {}  # canonical -> the containerd name found
        self._records: dict[str, ImageRecord] = {}  # canonical -> the record found
        self._store: ContentStore | None = None
        self._store_looked_up = False

    def _links_layers(self) -> bool:
        store = self.content_store()
        return self.cache_dir is not None and store is not None and store.links_into(self.cache_dir)

    def content_store(self) -> ContentStore | None:
        """The content store directory to take blobs from, looked up once; None if none."""
        if not self._store_looked_up:
            self._store_looked_up = True
            candidates = []
            if self.containerd_root is None:
                reported = self.ctr.content_root()
                if reported:
                    candidates.append(Path(reported))
                candidates.append(configured_root() / CONTENT_DIR)
            self._store = content_store_for(self.containerd_root, candidates, share=self.link)
        return self._store

    def find(self, wanted: Wanted) -> SourceImage | None:
        try:
            records = self.ctr.images()
        except EngineError as err:
            raise type(err)(f"{err} (looking for {', '.join(wanted.written)})") from err
        for ref in wanted.refs:
            record = records.get(containerd_name(ref)) or _by_repository_digest(records, ref)
            if record is None:
                continue
            resolved = self.ctr.resolve_record(record, self.platform)
            self._record_names[wanted.canonical] = record.name
            self._records[wanted.canonical] = record
            size = resolved.manifest.size + resolved.config.size
            if not self._links_layers():
                size += sum(layer.size for layer in resolved.layers)
            return SourceImage(
                wanted=wanted,
                image_id=resolved.config.digest,
                registry_digest=ref.digest or record.digest,
                platform=resolved.platform,
                size=size,
            )
        return None

    def copy(
        self,
        images: Sequence[SourceImage],
        writer: CacheWriter,
        *,
        compress: str,
        known_layers: Mapping[str, Descriptor],
        on_bytes: ByteCounter,
    ) -> dict[str, CopiedImage]:
        # Registry blobs are kept as they are: compress and known_layers do not apply.
        copied: dict[str, CopiedImage] = {}
        store = self.content_store()
        if store is not None:
            roots = []
            for image in images:
                record = self._records[image.wanted.canonical]
                root = Descriptor(record.media_type, record.digest, 0)
                roots.append((image, root, record.name, self.platform))
            copied = store.copy_images(
                writer, roots, all_platforms=self.all_platforms, on_bytes=on_bytes
            )
        rest = [image for image in images if image.wanted.canonical not in copied]
        if rest:
            copied.update(self._export(rest, writer, on_bytes))
        return copied

    def _export(
        self, images: Sequence[SourceImage], writer: CacheWriter, on_bytes: ByteCounter
    ) -> dict[str, CopiedImage]:
        names = sorted({self._record_names[image.wanted.canonical] for image in images})
        platform_args = ["--all-platforms"] if self.all_platforms else ["--platform", self.platform]
        about = ", ".join(names)
        layout = import_oci_layout(
            self.ctr.stream_out(["images", "export", *platform_args, "-", *names], ref=about),
            writer,
            what=self.ctr.where,
            on_bytes=on_bytes,
        )
        copied: dict[str, CopiedImage] = {}
        credited: set[str] = set()
        for image in images:
            name = self._record_names[image.wanted.canonical]
            descriptor = layout.names.get(name)
            if descriptor is None:
                raise EngineError(f"{self.ctr.where}: ctr images export left out {name}")
            copied[image.wanted.canonical] = copied_from_layout(
                writer, layout, descriptor, platform=self.platform, name=name, credited=credited
            )
            copied.setdefault(image.image_id, copied[image.wanted.canonical])
        return copied


def _by_repository_digest(records: Mapping[str, ImageRecord], ref: ImageRef) -> ImageRecord | None:
    """For a digest ref: any record of the same repository that points at that digest."""
    if ref.digest is None:
        return None
    for record in sorted(records.values(), key=lambda r: r.name):
        if record.digest != ref.digest:
            continue
        try:
            parsed = parse_image_ref(record.name)
        except ImageRefError:
            continue  # CRI's sha256:<config> names
        if parsed.name == ref.name:
            return record
    return None
