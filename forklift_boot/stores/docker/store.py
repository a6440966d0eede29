"""Docker as an image source (copy out) and an image target (load, tag, record digests)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from forklift_boot.archive import (
    ArchiveImage,
    import_docker_save,
    import_oci_layout,
    write_load_archive,
)
from forklift_boot.archive.oci_layout import copied_from_layout, drop_other_platforms
from forklift_boot.cache import (
    INDEX_MEDIA_TYPES,
    MEDIA_OCI_LAYER_GZIP,
    CacheReader,
    CacheWriter,
    Descriptor,
    ensure_free_space,
)
from forklift_boot.errors import EngineError, ForkliftBootError, ImageRefError
from forklift_boot.faults import checkpoint
from forklift_boot.images import ByteCounter, CopiedImage, LoadPlan, SourceImage, Wanted
from forklift_boot.refs import ImageRef, parse_image_ref
from forklift_boot.stores.docker import daemon, refstore
from forklift_boot.stores.docker.engine import DockerEngine, EngineInfo, ImageInfo
from forklift_boot.systemd import SystemdManager

log = logging.getLogger(__name__)

# A gzip layer unpacks to roughly this many times its size (measured 0.35-0.6 compressed).
GZIP_EXPANSION = 3


class DockerSource:
    """Copies images out of a Docker daemon with one ``docker save`` stream.

    From the classic store the stream holds layer tars (compressed here, as asked); from the
    containerd image store, the registry's own manifests and compressed blobs, kept as they are.
    """

    def __init__(self, engine: DockerEngine, *, all_platforms: bool = False) -> None:
        self.engine = engine
        self.all_platforms = all_platforms  # the containerd image store may hold several
        self.description = f"Docker at {engine.base_url}"
        self._found_as: dict[str, str] = {}  # canonical name -> the ref Docker resolved
        self._is_containerd_store: bool | None = None

    @property
    def is_containerd_store(self) -> bool:
        if self._is_containerd_store is None:
            self._is_containerd_store = self.engine.info().is_containerd_store
        return self._is_containerd_store

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
                    size=info.size,
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
        if self.is_containerd_store:
            return self._copy_layout(images, writer, on_bytes)
        # By image ID: one name per image, and the saved manifest.json needs no tags.
        image_ids = sorted({image.image_id for image in images})
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
        """The containerd image store saves an OCI layout of what it pulled: blobs unchanged
        (compress and known_layers do not apply). Saved by the refs that found them: an image
        asked for by ID alone has no name in the stream, and entries are matched by digest."""
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


class DockerTarget:
    """Loads cached images into a Docker daemon and makes every ref as written resolve."""

    def __init__(self, engine: DockerEngine, info: EngineInfo, platform: str | None = None) -> None:
        self.engine = engine
        self.info = info
        self.description = f"Docker at {engine.base_url}"
        # The platform whose images are loaded: Docker's own unless the caller names another
        # (an OS image build fills an arm64 rootfs's Docker from an amd64 machine).
        self.platform = platform or info.platform
        self._loaded_layers: set[str] = set()  # layer blobs this run's loads put in the store

    def resolve(self, ref: str) -> str | None:
        info = self.engine.inspect_image(ref)
        return info.image_id if info is not None else None

    def identity(self, plan: LoadPlan, ref: ImageRef | None = None) -> str:
        """The classic store's image ID is the config digest; the containerd image store's is
        the digest of what the name points at: the manifest a digest ref pins, else the
        cache's image index (which Docker pulled too) or manifest."""
        if not self.info.is_containerd_store:
            return plan.image_id
        if ref is not None and ref.digest == plan.manifest.digest:
            return plan.manifest.digest
        return _top(plan).digest

    def has_image(self, image_id: str) -> bool:
        return self.engine.inspect_image(image_id) is not None

    def ensure_space(self, plans: Sequence[LoadPlan]) -> None:
        """A load stages the whole archive under ``<data-root>/tmp``, then unpacks the layers."""
        data_root = Path(self.info.data_root)
        if not plans or not self._is_local() or not data_root.is_dir():
            return
        archive = sum(plan.archive_size for plan in plans)
        unpacked = sum(
            layer.size * (GZIP_EXPANSION if layer.media_type == MEDIA_OCI_LAYER_GZIP else 1)
            for plan in plans
            for layer in plan.layers
        )
        ensure_free_space(
            data_root,
            archive + unpacked,
            f"loading {len(plans)} images into Docker",
            action="load images",
            hint="free space in Docker's data root (docker image prune) or load fewer images",
        )

    def load(
        self, reader: CacheReader, plan: LoadPlan, *, thin: bool, on_bytes: ByteCounter
    ) -> None:
        image = ArchiveImage(
            manifest=plan.manifest,
            config=plan.config,
            layers=plan.layers,
            repo_tags=_repo_tags(plan.wanted),
            names=_containerd_store_names(plan),
        )
        omit: set[str] = set()
        if thin:
            omit = (
                self._loaded_layers & {layer.digest for layer in plan.layers}
                if self.info.is_containerd_store
                else self._present_layers(plan)
            )
        try:
            self.engine.load(
                write_load_archive(reader, [image], omit_layers=frozenset(omit), on_bytes=on_bytes)
            )
        except EngineError as err:
            if not omit:
                raise
            # skopeo#2107: archives without some layers are a dockerd implementation detail.
            log.warning(
                "thin load of %s failed (%s); sending every layer", plan.wanted.canonical, err
            )
            self.engine.load(write_load_archive(reader, [image], on_bytes=on_bytes))
        if not self.has_image(self.identity(plan)):
            raise EngineError(f"Docker accepted {plan.wanted.canonical} but does not list it")
        # The containerd image store keeps the blobs an image names: a later image of this run
        # that shares a layer needn't send it again (the store can't be asked which it has).
        self._loaded_layers.update(layer.digest for layer in plan.layers)

    def make_resolvable(
        self, pending: Sequence[tuple[LoadPlan, ImageRef]], *, record_digests: bool
    ) -> dict[str, str]:
        reasons: dict[str, str] = {}
        digest_refs: list[tuple[LoadPlan, ImageRef]] = []
        for plan, ref in pending:
            if ref.digest:
                digest_refs.append((plan, ref))
                continue
            tagged = ref.with_default_tag()
            try:
                self.engine.tag(self.identity(plan), tagged.familiar_name, tagged.tag or "latest")
            except EngineError as err:
                reasons[ref.written] = str(err)
        if digest_refs:
            reasons.update(self._record_digests(digest_refs, enabled=record_digests))
        return reasons

    def _record_digests(
        self, pending: Sequence[tuple[LoadPlan, ImageRef]], *, enabled: bool
    ) -> dict[str, str]:
        """Docker's classic store keeps digest references only in its reference file."""

        def every(reason: str) -> dict[str, str]:
            return {ref.written: reason for _plan, ref in pending}

        if self.info.is_containerd_store:
            return {ref.written: _unnamable_digest(plan, ref) for plan, ref in pending}
        if not enabled:
            return every("recording digest references is off (--record-digests=false)")
        if not self._is_local():
            return every(f"Docker at {self.engine.base_url} is not on this machine")
        path = refstore.reference_store_path(Path(self.info.data_root), self.info.storage_driver)
        wanted = [
            refstore.DigestReference(ref.familiar_name, ref.digest or "", plan.image_id)
            for plan, ref in pending
        ]
        try:
            missing = refstore.missing_references(path, wanted)
            if missing:
                process = daemon.find_daemon(self.engine.base_url)
                daemon.restart_around(
                    process,
                    edit=lambda: refstore.add_references(path, missing),
                    wait_ready=self._wait_until_ready,
                    units=SystemdManager() if process.systemd_unit else None,
                    checkpoint=checkpoint,
                )
        except (ForkliftBootError, OSError) as err:
            return every(f"couldn't record it: {err}")
        return {}

    def _wait_until_ready(self) -> None:
        self.engine.reconnect()
        daemon.wait_until(self.engine.is_answering, 60, f"Docker at {self.engine.base_url}")

    def _present_layers(self, plan: LoadPlan) -> set[str]:
        """Layer blobs whose chain ID the daemon has: the classic loader never opens those."""
        present_chains: set[str] = set()
        for image_id in self.engine.list_image_ids():
            info = self.engine.inspect_image(image_id)
            if info is not None:
                present_chains.update(chain_ids(info.diff_ids))
        return {
            layer.digest
            for layer, chain in zip(plan.layers, chain_ids(plan.diff_ids), strict=True)
            if chain in present_chains
        }

    def _is_local(self) -> bool:
        return self.engine.base_url.startswith("unix://")


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The image spec's ChainID of every layer prefix."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            text = f"{chains[-1]} {diff_id}".encode()
            chains.append("sha256:" + hashlib.sha256(text).hexdigest())
    return chains


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


def _repo_tags(wanted: Wanted) -> tuple[str, ...]:
    """What the classic loader tags: every ref's ``name:tag`` (``:latest`` for a bare name)."""
    tags = set()
    for ref in wanted.refs:
        if ref.digest and not ref.tag:
            continue
        tagged = ref.with_default_tag()
        tags.add(f"{tagged.familiar_name}:{tagged.tag}")
    return tuple(sorted(tags))


def _top(plan: LoadPlan) -> Descriptor:
    """What a tag names in the containerd image store: the cached index (as after a pull),
    or the manifest."""
    entry = plan.entry.descriptor
    return entry if entry.media_type in INDEX_MEDIA_TYPES else plan.manifest


def _containerd_store_names(plan: LoadPlan) -> dict[str, Descriptor]:
    """index.json names for the containerd image store (DOCKER-STORES.md): each tag ref
    names the top descriptor; each digest ref names the descriptor of that digest. It resolves
    ``repo@digest`` (and ``repo:tag@digest``) to any image of that repository whose target has
    the digest, so a digest the cache has no manifest for can't be named at all."""
    names: dict[str, Descriptor] = {}
    top = _top(plan)
    for ref in plan.wanted.refs:
        tagged = ref.with_default_tag()
        if tagged.tagged:
            names[tagged.tagged] = top
        target = next((d for d in (top, plan.manifest) if d.digest == ref.digest), None)
        if ref.digested and target is not None:
            names[ref.digested] = target
    return names


def _unnamable_digest(plan: LoadPlan, ref: ImageRef) -> str:
    registry_digest = plan.entry.registry_digest
    held = _top(plan).digest
    if registry_digest and registry_digest != held:
        origin = f"Docker's export of {plan.entry.canonical} ({held}), not the registry's manifest"
    else:
        origin = f"no manifest {ref.digest} of {plan.entry.canonical} (it holds {held})"
    return (
        f"the cache holds {origin}, and the containerd image store resolves a digest only to "
        "the manifest it names; cache it again from the registry (cache-img --from registry) or "
        "from a Docker that uses the containerd image store"
    )


def _with_platform(manifest: Descriptor, config: Mapping[str, object]) -> Descriptor:
    platform = {
        "os": str(config.get("os", "linux")),
        "architecture": str(config.get("architecture", "")),
    }
    if config.get("variant"):
        platform["variant"] = str(config["variant"])
    return Descriptor(manifest.media_type, manifest.digest, manifest.size, platform=platform)
