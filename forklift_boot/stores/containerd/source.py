"""containerd as an image source: copies images out with one ``ctr images export`` stream."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from forklift_boot.archive.oci_layout import copied_from_layout, import_oci_layout
from forklift_boot.cache import CacheWriter, Descriptor
from forklift_boot.errors import EngineError, ImageRefError
from forklift_boot.images import ByteCounter, CopiedImage, SourceImage, Wanted
from forklift_boot.refs import ImageRef, parse_image_ref
from forklift_boot.stores.containerd.ctr import Ctr, ImageRecord, containerd_name


class ContainerdSource:
    """Copies images out of containerd with one ``ctr images export`` stream, blobs unchanged."""

    def __init__(self, ctr: Ctr, platform: str, *, all_platforms: bool = False) -> None:
        self.ctr = ctr
        self.platform = platform
        self.all_platforms = all_platforms
        self.description = ctr.where
        self._record_names: dict[str, str] = {}  # canonical -> the containerd name found

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
            size = resolved.manifest.size + resolved.config.size
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
