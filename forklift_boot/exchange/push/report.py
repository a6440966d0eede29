"""What `cache push` did: the images it pushed and the blobs and bytes it sent."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from forklift_boot.cache import human_bytes
from forklift_boot.report import ALREADY_THERE, ImageOutcome, RunReport

__all__ = ["PUSHED", "PushCounts", "PushReport"]

PUSHED = "pushed"


@dataclass
class PushCounts:
    """What the run sent: blobs by how they got there, and the bytes of request bodies."""

    uploaded: int = 0
    mounted: int = 0  # linked from another repository of the registry: nothing sent
    present: int = 0  # the repository had it already
    manifests: int = 0
    bytes_sent: int = 0

    def to_json(self) -> dict[str, int]:
        return {
            "blobs_uploaded": self.uploaded,
            "blobs_mounted": self.mounted,
            "blobs_already_there": self.present,
            "manifests_pushed": self.manifests,
            "bytes_sent": self.bytes_sent,
        }


@dataclass
class PushReport(RunReport):
    """What a push did, image by image, and what it sent."""

    target: str  # host/prefix
    counts: PushCounts = field(default_factory=PushCounts)
    # Credentials the registry refused, or a registry that couldn't be reached: the run stopped
    # there; the images done before it are recorded.
    error: str | None = None

    @property
    def exit_code(self) -> int:
        return 1 if self.error is not None else super().exit_code

    def headline(self) -> str:
        """``pushed 4/5 images to host/prefix (1 already there); blobs: 7 uploaded, 3 mounted,
        2 already there; 12.3 MiB sent, 1.2 s``."""
        counts = self.counts
        done = self.count(PUSHED, ALREADY_THERE)
        return (
            f"pushed {done}/{len(self.outcomes)} images to {self.target} "
            f"({self.count(ALREADY_THERE)} already there); blobs: {counts.uploaded} uploaded, "
            f"{counts.mounted} mounted, {counts.present} already there; "
            f"{human_bytes(counts.bytes_sent)} sent, {self.seconds:.1f} s"
        )

    def json_fields(self) -> dict[str, Any]:
        return {
            "action": "push",
            "target": self.target,
            "error": self.error,
            **self.counts.to_json(),
        }

    def image_json(self, outcome: ImageOutcome) -> dict[str, Any]:
        # A push counts the bytes it sends per run (bytes_sent), not per image.
        document = super().image_json(outcome)
        del document["bytes_written"]
        return document
