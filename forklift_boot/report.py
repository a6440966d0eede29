"""What a run did, image by image, and the progress interface that reports it while it runs."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self

from forklift_boot.cache import human_bytes

# Per-image outcomes. Failing ones make the run exit with code 3 when the image is essential.
CACHED, ALREADY_CACHED = "cached", "already cached"
LOADED, PRESENT, TAGGED = "loaded", "present", "tagged"
MISSING, FAILED, UNRESOLVED = "missing", "failed", "unresolved"
FAILING = frozenset({MISSING, FAILED, UNRESOLVED})
# cache copy/merge and cache push: the destination has the same manifest, its blobs and refs;
# nothing was written.
ALREADY_THERE = "already there"

# Where load-img's images came from: the engine had them, the cache, or the registry (fetched
# into the cache in this run, then loaded from it).
# The JSON names the engine ("docker", "containerd") for FROM_ENGINE.
FROM_ENGINE, FROM_CACHE, FROM_REGISTRY = "engine", "cache", "registry"

# Blobs a registry run (cache-img --from registry, cache push) transfers at once.
DEFAULT_JOBS = 4


class Progress(Protocol):
    """Live progress: the terminal shows it on one line, systemd as ``STATUS=``."""

    def start_image(self, index: int, total: int, name: str, size: int) -> None: ...

    def add_bytes(self, count: int) -> None: ...

    def finish_image(self, outcome: ImageOutcome) -> None: ...


class NoProgress:
    def start_image(self, index: int, total: int, name: str, size: int) -> None:
        pass

    def add_bytes(self, count: int) -> None:
        pass

    def finish_image(self, outcome: ImageOutcome) -> None:
        pass


@dataclass(frozen=True)
class ImageOutcome:
    name: str  # the canonical name of the cache entry
    refs: tuple[str, ...]  # the refs as written
    status: str
    detail: str = ""
    essential: bool = True
    bytes_written: int = 0
    source: str | None = None  # load-img: FROM_DOCKER, FROM_CACHE or FROM_REGISTRY

    @property
    def is_failure(self) -> bool:
        return self.status in FAILING and self.essential


@dataclass(kw_only=True)
class RunReport(ABC):
    """What a command did image by image, and what every command reports alike: the time it
    took, the failures and exit code, the summary's tail and the images in ``--json``."""

    outcomes: list[ImageOutcome] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None

    def add(self, outcome: ImageOutcome) -> None:
        self.outcomes.append(outcome)

    def finish(self) -> Self:
        self.finished = time.monotonic()
        return self

    @property
    def seconds(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def failures(self) -> list[ImageOutcome]:
        return [outcome for outcome in self.outcomes if outcome.is_failure]

    def count(self, *statuses: str) -> int:
        return sum(outcome.status in statuses for outcome in self.outcomes)

    @property
    def exit_code(self) -> int:
        return 3 if self.failures else 0

    def summary(self) -> str:
        """The command's own counts, then ``; failed: x:1 (why)`` and ``; not needed now, but
        missing: y:2 (why)`` where there are such images."""
        line = self.headline()
        failures = _describe(self.failures)
        warnings = _describe([o for o in self.outcomes if o.status in FAILING and not o.essential])
        if failures:
            line += f"; failed: {failures}"
        if warnings:
            line += f"; not needed now, but missing: {warnings}"
        return line

    @abstractmethod
    def headline(self) -> str:
        """The summary line up to its failures: what was done, how much, how long."""

    def to_json(self) -> dict[str, Any]:
        """The whole report, for ``--json``."""
        return {
            **self.json_fields(),
            "seconds": round(self.seconds, 3),
            "exit_code": self.exit_code,
            "images": [self.image_json(outcome) for outcome in self.outcomes],
        }

    def json_fields(self) -> dict[str, Any]:
        """What the command adds to the top level of its ``--json``."""
        return {}

    def image_json(self, outcome: ImageOutcome) -> dict[str, Any]:
        return {
            "name": outcome.name,
            "refs": list(outcome.refs),
            "status": outcome.status,
            "detail": outcome.detail,
            "essential": outcome.essential,
            "bytes_written": outcome.bytes_written,
        }


@dataclass
class Report(RunReport):
    """What ``cache-img`` or ``load-img`` did."""

    action: str  # "cache" or "load"
    engine: str = "Docker"  # where a load goes: "Docker", "containerd (namespace k8s.io)"
    show_sources: bool = False  # load-img with read-through: the headline counts sources

    @property
    def bytes_written(self) -> int:
        return sum(outcome.bytes_written for outcome in self.outcomes)

    def headline(self) -> str:
        """``cached 11/12 images (3 new), 3.2 GiB written, 94 s``."""
        total = len(self.outcomes)
        if self.action == "cache":
            done = self.count(CACHED, ALREADY_CACHED)
            return (
                f"cached {done}/{total} images ({self.count(CACHED)} new), "
                f"{human_bytes(self.bytes_written)} written, {self.seconds:.1f} s"
            )
        done = self.count(LOADED, PRESENT, TAGGED)
        sources = ""
        if self.show_sources:
            sources = (
                f"; {self._from(FROM_REGISTRY)} from registries, {self._from(FROM_CACHE)} from "
                f"the cache, {self._from(FROM_ENGINE)} from {self.engine}"
            )
        return (
            f"{done}/{total} images ready in {self.engine} ({self.count(LOADED)} loaded, "
            f"{self.count(TAGGED)} tagged, {self.count(PRESENT)} already there{sources}), "
            f"{human_bytes(self.bytes_written)} sent to {self.engine}, {self.seconds:.1f} s"
        )

    def _from(self, source: str) -> int:
        return sum(
            o.source == source and o.status in (LOADED, PRESENT, TAGGED) for o in self.outcomes
        )

    def json_fields(self) -> dict[str, Any]:
        return {"action": self.action, "bytes_written": self.bytes_written}

    def image_json(self, outcome: ImageOutcome) -> dict[str, Any]:
        """A load also says where each image came from (null: it isn't there)."""
        found = super().image_json(outcome)
        if self.action == "load":
            engine = self.engine.split()[0].lower()  # "docker", "containerd"
            found["source"] = engine if outcome.source == FROM_ENGINE else outcome.source
        return found


def _describe(outcomes: Sequence[ImageOutcome]) -> str:
    return ", ".join(
        f"{outcome.refs[0] if outcome.refs else outcome.name} ({outcome.detail or outcome.status})"
        for outcome in outcomes
    )
