"""containerd as an image target: loads cached images and names them as its CRI resolves refs."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from forklift_boot.archive.load_archive import ArchiveImage, write_load_archive
from forklift_boot.cache import CacheReader
from forklift_boot.errors import EngineError, ImageRefError
from forklift_boot.images import ByteCounter, LoadPlan
from forklift_boot.refs import ImageRef, parse_image_ref
from forklift_boot.stores.containerd.ctr import Ctr, containerd_name, names_for

log = logging.getLogger(__name__)


class ContainerdTarget:
    """Loads cached images into containerd, named as its CRI and nerdctl resolve refs."""

    def __init__(self, ctr: Ctr, platform: str) -> None:
        self.ctr = ctr
        self.platform = platform
        self.description = ctr.where
        self._loaded_layers: set[str] = set()  # layer blobs this run's imports put in

    def resolve(self, ref: str) -> str | None:
        try:
            parsed = parse_image_ref(ref)
        except ImageRefError:
            return None
        record = self.ctr.images().get(containerd_name(parsed))
        if record is None:
            return None
        return self.ctr.resolve_record(record, self.platform).config.digest

    def identity(self, plan: LoadPlan, ref: ImageRef | None = None) -> str:
        return plan.image_id

    def has_image(self, image_id: str) -> bool:
        for record in self.ctr.images().values():
            try:
                if self.ctr.resolve_record(record, self.platform).config.digest == image_id:
                    return True
            except EngineError:
                continue  # another platform only, or incomplete content: not this image
        return False

    def ensure_space(self, plans: Sequence[LoadPlan]) -> None:
        """containerd's root is not known from its socket: nothing to check here."""

    def load(
        self, reader: CacheReader, plan: LoadPlan, *, thin: bool, on_bytes: ByteCounter
    ) -> None:
        names = names_for(plan.wanted.refs)
        image = ArchiveImage(
            manifest=plan.manifest,
            config=plan.config,
            layers=plan.layers,
            repo_tags=(),
            names=dict.fromkeys(names, plan.manifest),
        )
        # containerd keeps the blobs an image names: a layer this run already sent is not
        # sent again (ctr import takes it from the content store).
        omit = frozenset(
            self._loaded_layers & {layer.digest for layer in plan.layers} if thin else ()
        )
        argv = ["images", "import", "--platform", self.platform, "-"]
        try:
            self.ctr.stream_in(
                argv,
                write_load_archive(reader, [image], omit_layers=omit, on_bytes=on_bytes),
                ref=", ".join(names),
            )
        except EngineError as err:
            if not omit:
                raise
            log.warning("thin import of %s failed (%s); sending every layer", names[0], err)
            self.ctr.stream_in(
                argv, write_load_archive(reader, [image], on_bytes=on_bytes), ref=", ".join(names)
            )
        if not self.has_image(plan.image_id):
            raise EngineError(
                f"{self.ctr.where}: ctr images import accepted {plan.wanted.canonical} "
                "but does not list it"
            )
        self._loaded_layers.update(layer.digest for layer in plan.layers)

    def make_resolvable(
        self, pending: Sequence[tuple[LoadPlan, ImageRef]], *, record_digests: bool
    ) -> dict[str, str]:
        """Adds missing names with ``ctr images tag`` (digest names too: they cost nothing)."""
        reasons: dict[str, str] = {}
        for plan, ref in pending:
            records = self.ctr.images()
            source = next(
                (
                    record.name
                    for record in sorted(records.values(), key=lambda r: r.name)
                    if record.digest == plan.manifest.digest
                ),
                None,
            )
            if source is None:
                reasons[ref.written] = f"{self.ctr.where} has no image of {plan.manifest.digest}"
                continue
            try:
                self.ctr.run(
                    "images", "tag", "--force", source, containerd_name(ref), ref=ref.written
                )
            except EngineError as err:
                reasons[ref.written] = str(err)
        return reasons
