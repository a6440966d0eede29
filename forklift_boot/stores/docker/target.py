"""Docker as an image target: loads cached images, tags them and records digest references."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

from forklift_boot.archive.load_archive import ArchiveImage, write_load_archive
from forklift_boot.cache import (
    INDEX_MEDIA_TYPES,
    MEDIA_OCI_LAYER_GZIP,
    CacheReader,
    Descriptor,
    ensure_free_space,
)
from forklift_boot.errors import EngineError, ForkliftBootError
from forklift_boot.faults import checkpoint
from forklift_boot.images import ByteCounter, LoadPlan, Wanted
from forklift_boot.refs import ImageRef
from forklift_boot.stores.docker import daemon, refstore
from forklift_boot.stores.docker.engine import DockerEngine, EngineInfo
from forklift_boot.systemd import SystemdManager

log = logging.getLogger(__name__)

# A gzip layer unpacks to roughly this many times its size (measured 0.35-0.6 compressed).
GZIP_EXPANSION = 3


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
    """index.json names for the containerd image store (docs/architecture.md, "Docker's
    stores"): each tag ref names the top descriptor; each digest ref names the descriptor of
    that digest. It resolves ``repo@digest`` (and ``repo:tag@digest``) to any image of that
    repository whose target has the digest, so a digest the cache has no manifest for can't
    be named at all."""
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
