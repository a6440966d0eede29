"""What `cache copy` and `cache merge` did: the outcomes they give an image and their report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forklift_boot.cache import CachedImage, human_bytes
from forklift_boot.report import ALREADY_THERE, ImageOutcome, RunReport

__all__ = [
    "ALREADY_THERE",
    "COPIED",
    "KEPT",
    "REPLACED",
    "UPDATED",
    "TransferReport",
    "image_outcome",
]

# Per-image outcomes, besides report.MISSING and report.FAILED.
COPIED = "copied"  # the destination had no image of that name
REPLACED = "replaced"  # it had another manifest under that name; the source's won
KEPT = "kept"  # it had another manifest under that name and kept it (--keep-existing)
UPDATED = "updated"  # the same manifest: blobs it lacked (platforms, damaged ones) or refs added
_DONE = frozenset({COPIED, REPLACED, KEPT, UPDATED, ALREADY_THERE})


@dataclass
class TransferReport(RunReport):
    """What a copy did, image by image, and the blobs it copied or found already there."""

    source_dir: Path
    destination_dir: Path
    action: str = "copy"  # "copy" or "merge": the command, for --json
    blobs_copied: int = 0
    bytes_copied: int = 0
    blobs_skipped: int = 0  # already in the destination
    bytes_skipped: int = 0
    # A destination-wide failure (a full disk) that stopped the copy; the images done before it
    # are recorded.
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.error is not None else super().exit_code

    def headline(self) -> str:
        """``4/5 images in DEST (2 copied, 2 already there); 9 blobs copied (210 MiB), 3 already
        there (1.2 MiB), 2.1 s``."""
        counts = [
            f"{self.count(status)} {status}"
            for status in (COPIED, REPLACED, UPDATED, KEPT, ALREADY_THERE)
            if self.count(status)
        ]
        return (
            f"{self.count(*_DONE)}/{len(self.outcomes)} images in {self.destination_dir}"
            + (f" ({', '.join(counts)})" if counts else "")
            + f"; {self.blobs_copied} blobs copied ({human_bytes(self.bytes_copied)}), "
            f"{self.blobs_skipped} already there ({human_bytes(self.bytes_skipped)}), "
            f"{self.seconds:.1f} s"
        )

    def json_fields(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "source": str(self.source_dir),
            "destination": str(self.destination_dir),
            "error": self.error,
            "blobs": {
                "copied": self.blobs_copied,
                "bytes_copied": self.bytes_copied,
                "skipped": self.blobs_skipped,
                "bytes_skipped": self.bytes_skipped,
            },
        }


def image_outcome(
    image: CachedImage, status: str, detail: str = "", essential: bool = True, new_bytes: int = 0
) -> ImageOutcome:
    return ImageOutcome(
        name=image.canonical,
        refs=image.refs or (image.canonical,),
        status=status,
        detail=detail,
        essential=essential,
        bytes_written=new_bytes,
    )
