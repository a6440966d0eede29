"""The flows (cache-img, load-img) over fake sources and targets and a real cache.

The fakes implement the ImageSource and ImageTarget protocols of ``forklift_boot.images`` in
memory; what they copy they write as real blobs through the CacheWriter they are handed, and
what they load they read back from the cache. Each test says which calls the fakes must see,
in order, and what the report must hold.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from forklift_boot import cli
from forklift_boot.cache import (
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_MANIFEST,
    CachedImage,
    CacheReader,
    CacheWriter,
    Descriptor,
    ImageCache,
)
from forklift_boot.errors import (
    CacheError,
    EngineError,
    EngineUnavailableError,
    RegistryError,
    RegistryUnreachableError,
)
from forklift_boot.flows import FallbackSource, cache_images, load_images
from forklift_boot.flows.read_through import FETCH_MISSING, FETCH_NEWER, ReadThrough
from forklift_boot.images import ByteCounter, CopiedImage, LoadPlan, SourceImage, Wanted
from forklift_boot.refs import ImageRef, parse_image_ref
from forklift_boot.report import (
    ALREADY_CACHED,
    CACHED,
    FAILED,
    FROM_CACHE,
    FROM_ENGINE,
    FROM_REGISTRY,
    LOADED,
    MISSING,
    PRESENT,
    TAGGED,
    UNRESOLVED,
    Report,
)
from forklift_boot.requirements import RequiredImage

PLATFORM = "linux/amd64"
# Canonical names of the refs the tests use.
A1, B1, C1 = "docker.io/library/a:1", "docker.io/library/b:1", "docker.io/library/c:1"
A_LATEST = "docker.io/library/a:latest"


@dataclass(frozen=True)
class FakeImage:
    """An image as a fake engine holds it: one uncompressed layer, its config and manifest."""

    layer: bytes

    @property
    def config(self) -> bytes:
        diff_id = _digest(self.layer)
        return json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"diff_ids": [diff_id]}}
        ).encode()

    @property
    def manifest(self) -> bytes:
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": MEDIA_OCI_MANIFEST,
                "config": _descriptor(MEDIA_OCI_CONFIG, self.config),
                "layers": [_descriptor(MEDIA_OCI_LAYER, self.layer)],
            }
        ).encode()

    @property
    def image_id(self) -> str:
        return _digest(self.config)

    def write_to(self, writer: CacheWriter) -> Descriptor:
        writer.write_blob(self.layer, MEDIA_OCI_LAYER)
        writer.write_blob(self.config, MEDIA_OCI_CONFIG)
        return writer.write_blob(self.manifest, MEDIA_OCI_MANIFEST)


# Layer sizes that make every byte count in the reports easy to work out by hand.
IMAGE_A = FakeImage(b"a" * 1000)
IMAGE_B = FakeImage(b"b" * 2000)
IMAGE_C = FakeImage(b"c" * 3000)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {"mediaType": media_type, "digest": _digest(data), "size": len(data)}


@dataclass
class FakeSource:
    """An ImageSource: ``images`` by ref as written; ``find_errors`` by canonical name are
    raised by find; a copy that includes a canonical name of ``broken`` raises EngineError,
    any copy raises ``copy_error`` when it is set; ``down`` makes every call unreachable."""

    description: str
    images: Mapping[str, FakeImage]
    find_errors: Mapping[str, Exception] = field(default_factory=dict)
    broken: frozenset[str] = frozenset()
    copy_error: Exception | None = None
    down: bool = False
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def find(self, wanted: Wanted) -> SourceImage | None:
        self.calls.append(("find", wanted.canonical))
        if self.down:
            raise EngineUnavailableError(f"couldn't reach {self.description}: connection refused")
        if wanted.canonical in self.find_errors:
            raise self.find_errors[wanted.canonical]
        for ref in wanted.refs:
            image = self.images.get(ref.written)
            if image is not None:
                return SourceImage(
                    wanted=wanted,
                    image_id=image.image_id,
                    registry_digest=None,
                    platform=PLATFORM,
                    size=len(image.layer) + len(image.config) + len(image.manifest),
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
        self.calls.append(("copy", *(image.wanted.canonical for image in images)))
        if self.copy_error is not None:
            raise self.copy_error
        broken = [
            image.wanted.canonical for image in images if image.wanted.canonical in self.broken
        ]
        if broken:
            raise EngineError(f"{self.description} couldn't export {', '.join(broken)}")
        copied = {}
        for found in images:
            image = next(
                self.images[ref.written] for ref in found.wanted.refs if ref.written in self.images
            )
            manifest = image.write_to(writer)
            on_bytes(len(image.layer))
            copied[found.image_id] = CopiedImage(manifest=manifest, new_bytes=len(image.layer))
        return copied


@dataclass
class FakeTarget:
    """An ImageTarget that behaves like Docker's classic store: the image ID is the config
    digest, a load tags the image's tag refs, make_resolvable names the rest unless ``refuse``
    lists the ref (with the reason it gives, or None for no reason)."""

    present: set[str] = field(default_factory=set)  # image IDs
    names: dict[str, str] = field(default_factory=dict)  # ref as written -> image ID
    broken: frozenset[str] = frozenset()  # canonical names whose load fails
    refuse: Mapping[str, str | None] = field(default_factory=dict)
    description: str = "fake engine"
    platform: str = PLATFORM
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def resolve(self, ref: str) -> str | None:
        return self.names.get(ref)

    def identity(self, plan: LoadPlan, ref: ImageRef | None = None) -> str:
        return plan.image_id

    def has_image(self, image_id: str) -> bool:
        return image_id in self.present

    def ensure_space(self, plans: Sequence[LoadPlan]) -> None:
        self.calls.append(("ensure_space", *(plan.wanted.canonical for plan in plans)))

    def load(
        self, reader: CacheReader, plan: LoadPlan, *, thin: bool, on_bytes: ByteCounter
    ) -> None:
        self.calls.append(("load", plan.wanted.canonical, *plan.wanted.written))
        if plan.wanted.canonical in self.broken:
            raise EngineError(f"{self.description} refused {plan.wanted.canonical}")
        for layer in plan.layers:  # read back what the cache holds, verified
            with reader.open_blob(layer.digest, expected_size=layer.size) as blob:
                on_bytes(len(blob.read()))
        self.present.add(plan.image_id)
        for ref in plan.wanted.refs:
            if ref.tag and not ref.digest:
                self.names[ref.written] = plan.image_id

    def make_resolvable(
        self, pending: Sequence[tuple[LoadPlan, ImageRef]], *, record_digests: bool
    ) -> dict[str, str]:
        self.calls.append(("make_resolvable", *(ref.written for _plan, ref in pending)))
        reasons = {}
        for plan, ref in pending:
            if ref.written in self.refuse:
                reason = self.refuse[ref.written]
                if reason is not None:
                    reasons[ref.written] = reason
                continue
            self.names[ref.written] = plan.image_id
        return reasons


def required(*refs: str, essential: bool = True) -> list[RequiredImage]:
    return [RequiredImage(parse_image_ref(ref), ("app",), (), essential) for ref in refs]


def fill(cache_dir: Path, entries: Mapping[str, tuple[FakeImage, Sequence[str]]]) -> None:
    """Cache entries by canonical name, written straight through a CacheWriter."""
    with ImageCache(cache_dir).writing() as writer:
        writer.put_images(
            [
                CachedImage(
                    canonical=canonical,
                    refs=tuple(refs),
                    descriptor=image.write_to(writer),
                    image_id=image.image_id,
                    platform=PLATFORM,
                )
                for canonical, (image, refs) in entries.items()
            ]
        )


def cached(cache_dir: Path) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    """canonical name -> (image ID, refs) of every index.json entry."""
    with ImageCache(cache_dir).reading() as reader:
        return {image.canonical: (image.image_id, image.refs) for image in reader.images()}


def statuses(report: Report) -> list[tuple[str, str, str]]:
    return [(outcome.name, outcome.status, outcome.detail) for outcome in report.outcomes]


def written(report: Report) -> dict[str, int]:
    return {outcome.name: outcome.bytes_written for outcome in report.outcomes}


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    # Listen on forklift_boot itself, and only there (each record once): the CLI may have
    # stopped it propagating to the root, where caplog listens.
    logger = logging.getLogger("forklift_boot")
    propagate = logger.propagate
    logger.addHandler(caplog.handler)
    logger.propagate = False
    try:
        yield caplog
    finally:
        logger.propagate = propagate
        logger.removeHandler(caplog.handler)


def warnings_and_errors(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [
        (record.levelname, record.getMessage())
        for record in caplog.records
        if record.levelno >= logging.WARNING
    ]


# cache-img


def test_cache_with_everything_cached_asks_the_source_nothing(tmp_path: Path) -> None:
    fill(tmp_path, {A1: (IMAGE_A, ["a:1"]), B1: (IMAGE_B, ["b:1"])})
    source = FakeSource("fake engine", {"a:1": IMAGE_A, "b:1": IMAGE_B})

    report = cache_images(
        required("a:1", "docker.io/library/b:1"), source, ImageCache(tmp_path), compress="gzip"
    )

    assert source.calls == []
    assert statuses(report) == [(A1, ALREADY_CACHED, ""), (B1, ALREADY_CACHED, "")]
    assert report.count(CACHED) == 0
    assert report.bytes_written == 0
    assert report.exit_code == 0
    # The new spelling of b:1 is recorded in the index; nothing else changes.
    assert cached(tmp_path) == {
        A1: (IMAGE_A.image_id, ("a:1",)),
        B1: (IMAGE_B.image_id, ("b:1", "docker.io/library/b:1")),
    }


def test_cache_copies_what_is_missing_in_one_copy(tmp_path: Path) -> None:
    fill(tmp_path, {A1: (IMAGE_A, ["a:1"])})
    source = FakeSource("fake engine", {"a:1": IMAGE_A, "b:1": IMAGE_B, "c:1": IMAGE_C})

    report = cache_images(
        required("a:1", "b:1", "c:1"), source, ImageCache(tmp_path), compress="gzip"
    )

    assert source.calls == [("find", B1), ("find", C1), ("copy", B1, C1)]
    assert statuses(report) == [(A1, ALREADY_CACHED, ""), (B1, CACHED, ""), (C1, CACHED, "")]
    assert written(report) == {A1: 0, B1: 2000, C1: 3000}
    assert report.exit_code == 0
    assert cached(tmp_path) == {
        A1: (IMAGE_A.image_id, ("a:1",)),
        B1: (IMAGE_B.image_id, ("b:1",)),
        C1: (IMAGE_C.image_id, ("c:1",)),
    }


def test_cache_one_image_breaking_the_copy_fails_alone(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    source = FakeSource(
        "fake engine", {"a:1": IMAGE_A, "b:1": IMAGE_B, "c:1": IMAGE_C}, broken=frozenset({B1})
    )

    report = cache_images(
        required("a:1", "b:1", "c:1"), source, ImageCache(tmp_path), compress="gzip"
    )

    # All three at once fail, then one at a time: only b:1's copy fails.
    assert source.calls == [
        ("find", A1),
        ("find", B1),
        ("find", C1),
        ("copy", A1, B1, C1),
        ("copy", A1),
        ("copy", B1),
        ("copy", C1),
    ]
    why = f"fake engine couldn't export {B1}"
    assert statuses(report) == [(A1, CACHED, ""), (B1, FAILED, why), (C1, CACHED, "")]
    assert report.count(CACHED) == 2
    assert report.bytes_written == 1000 + 3000
    assert report.exit_code == 3
    assert set(cached(tmp_path)) == {A1, C1}
    assert warnings_and_errors(logs) == [
        (
            "WARNING",
            "exporting 3 images at once failed (fake engine couldn't export "
            f"{B1}); trying one at a time",
        ),
        ("ERROR", why),
    ]


def test_cache_images_the_source_lacks_are_missing(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    source = FakeSource("fake engine", {"a:1": IMAGE_A})

    report = cache_images(
        [*required("a:1", "b:1"), *required("c:1", essential=False)],
        source,
        ImageCache(tmp_path),
        compress="gzip",
    )

    assert source.calls == [("find", A1), ("find", B1), ("find", C1), ("copy", A1)]
    why = "neither fake engine nor the cache has it"
    # Outcomes in the order they are known: the missing ones at find, then the copied one.
    assert statuses(report) == [(B1, MISSING, why), (C1, MISSING, why), (A1, CACHED, "")]
    # Only the essential image makes the run fail; the fallback-only one is a warning.
    assert [outcome.name for outcome in report.failures] == [B1]
    assert report.exit_code == 3
    assert warnings_and_errors(logs) == [
        ("ERROR", f"b:1: {why}"),
        ("WARNING", f"c:1 (needed only by a fallback bundle): {why}"),
    ]
    assert set(cached(tmp_path)) == {A1}


def test_cache_without_essential_images_missing_succeeds(tmp_path: Path) -> None:
    report = cache_images(
        required("a:1", essential=False),
        FakeSource("fake engine", {}),
        ImageCache(tmp_path),
        compress="gzip",
    )
    assert statuses(report) == [(A1, MISSING, "neither fake engine nor the cache has it")]
    assert report.exit_code == 0


def test_cache_a_registry_error_in_find_fails_that_image_only(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    why = "couldn't fetch b:1: registry-1.docker.io answered 500 Internal Server Error"
    source = FakeSource(
        "registries",
        {"a:1": IMAGE_A, "b:1": IMAGE_B, "c:1": IMAGE_C},
        find_errors={B1: RegistryError(why)},
    )

    report = cache_images(
        required("a:1", "b:1", "c:1"), source, ImageCache(tmp_path), compress="gzip"
    )

    assert source.calls == [("find", A1), ("find", B1), ("find", C1), ("copy", A1, C1)]
    assert statuses(report) == [(B1, FAILED, why), (A1, CACHED, ""), (C1, CACHED, "")]
    assert report.exit_code == 3
    assert warnings_and_errors(logs) == [("ERROR", why)]
    assert set(cached(tmp_path)) == {A1, C1}


def test_cache_a_cache_error_fails_every_image_without_retrying(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    why = f"couldn't write to the image cache {tmp_path}: No space left on device"
    source = FakeSource("fake engine", {"a:1": IMAGE_A, "b:1": IMAGE_B}, copy_error=CacheError(why))

    report = cache_images(required("a:1", "b:1"), source, ImageCache(tmp_path), compress="gzip")

    assert source.calls == [("find", A1), ("find", B1), ("copy", A1, B1)]
    assert statuses(report) == [(A1, FAILED, why), (B1, FAILED, why)]
    assert report.exit_code == 3
    assert warnings_and_errors(logs) == [("ERROR", why)]
    assert cached(tmp_path) == {}


def test_fallback_with_the_first_source_down_takes_everything_from_the_second(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    docker = FakeSource("Docker at unix:///run/docker.sock", {"a:1": IMAGE_A}, down=True)
    registries = FakeSource("registries", {"a:1": IMAGE_A, "b:1": IMAGE_B})

    report = cache_images(
        required("a:1", "b:1"),
        FallbackSource(docker, registries),
        ImageCache(tmp_path),
        compress="gzip",
    )

    assert docker.calls == [("find", A1)]  # asked once, then never again
    assert registries.calls == [("find", A1), ("find", B1), ("copy", A1, B1)]
    assert statuses(report) == [(A1, CACHED, ""), (B1, CACHED, "")]
    assert report.exit_code == 0
    assert warnings_and_errors(logs) == [
        (
            "WARNING",
            "couldn't reach Docker at unix:///run/docker.sock: connection refused; "
            "fetching every image from registries",
        )
    ]


def test_fallback_takes_what_the_first_source_has_from_there(tmp_path: Path) -> None:
    docker = FakeSource("Docker", {"a:1": IMAGE_A})
    registries = FakeSource("registries", {"a:1": IMAGE_A, "b:1": IMAGE_B})

    report = cache_images(
        required("a:1", "b:1"),
        FallbackSource(docker, registries),
        ImageCache(tmp_path),
        compress="gzip",
    )

    assert docker.calls == [("find", A1), ("find", B1), ("copy", A1)]
    assert registries.calls == [("find", B1), ("copy", B1)]
    assert statuses(report) == [(A1, CACHED, ""), (B1, CACHED, "")]


# load-img


def test_load_with_everything_present_loads_nothing(tmp_path: Path) -> None:
    fill(tmp_path, {A1: (IMAGE_A, ["a:1"]), B1: (IMAGE_B, ["b:1"])})
    target = FakeTarget(
        present={IMAGE_A.image_id, IMAGE_B.image_id, IMAGE_C.image_id},
        names={"a:1": IMAGE_A.image_id, "b:1": IMAGE_B.image_id, "c:1": IMAGE_C.image_id},
    )

    # c:1 is not cached, but the target has it: present too.
    report = load_images(required("a:1", "b:1", "c:1"), target, ImageCache(tmp_path))

    assert target.calls == [("ensure_space",)]
    assert statuses(report) == [(A1, PRESENT, ""), (B1, PRESENT, ""), (C1, PRESENT, "")]
    assert report.bytes_written == 0
    assert report.exit_code == 0


def test_load_images_neither_cached_nor_present_are_missing(tmp_path: Path) -> None:
    fill(tmp_path, {A1: (IMAGE_A, ["a:1"])})
    target = FakeTarget()

    report = load_images(
        [*required("a:1", "b:1"), *required("c:1", essential=False)],
        target,
        ImageCache(tmp_path),
    )

    assert target.calls == [("ensure_space", A1), ("load", A1, "a:1")]
    why = "not in the cache; cache it first"
    assert statuses(report) == [(A1, LOADED, ""), (B1, MISSING, why), (C1, MISSING, why)]
    assert [outcome.name for outcome in report.failures] == [B1]
    assert report.exit_code == 3


def test_load_one_image_failing_keeps_the_others(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    fill(
        tmp_path,
        {A1: (IMAGE_A, ["a:1"]), B1: (IMAGE_B, ["b:1"]), C1: (IMAGE_C, ["c:1"])},
    )
    target = FakeTarget(broken=frozenset({B1}))

    report = load_images(required("a:1", "b:1", "c:1"), target, ImageCache(tmp_path))

    # The loads tag a:1 and c:1 themselves: nothing is left for make_resolvable.
    assert target.calls == [
        ("ensure_space", A1, B1, C1),
        ("load", A1, "a:1"),
        ("load", B1, "b:1"),
        ("load", C1, "c:1"),
    ]
    why = f"fake engine refused {B1}"
    assert statuses(report) == [(A1, LOADED, ""), (B1, FAILED, why), (C1, LOADED, "")]
    assert written(report) == {A1: 1000, B1: 0, C1: 3000}
    assert report.exit_code == 3
    assert target.present == {IMAGE_A.image_id, IMAGE_C.image_id}
    assert warnings_and_errors(logs) == [("ERROR", f"couldn't load {B1}: {why}")]


def test_load_refs_that_stay_unresolved(tmp_path: Path) -> None:
    fill(
        tmp_path,
        {A1: (IMAGE_A, ["a:1"]), B1: (IMAGE_B, ["b:1"]), C1: (IMAGE_C, ["c:1"])},
    )
    # Every image is there, none of the names: make_resolvable names c:1 only.
    target = FakeTarget(
        present={IMAGE_A.image_id, IMAGE_B.image_id, IMAGE_C.image_id},
        refuse={"a:1": "names are read-only here", "b:1": None},
    )

    report = load_images(required("a:1", "b:1", "c:1"), target, ImageCache(tmp_path))

    assert target.calls == [("ensure_space",), ("make_resolvable", "a:1", "b:1", "c:1")]
    assert statuses(report) == [
        (A1, UNRESOLVED, "a:1: names are read-only here"),
        (B1, UNRESOLVED, "b:1: does not resolve"),
        (C1, TAGGED, ""),
    ]
    assert [outcome.name for outcome in report.failures] == [A1, B1]
    assert report.exit_code == 3


def test_load_spellings_of_one_image_load_it_once(tmp_path: Path) -> None:
    manifest_digest = _digest(IMAGE_A.manifest)
    by_digest = f"a@{manifest_digest}"
    a_digest = f"docker.io/library/{by_digest}"
    fill(
        tmp_path,
        {
            A1: (IMAGE_A, ["a:1"]),
            A_LATEST: (IMAGE_A, ["a:latest"]),
            a_digest: (IMAGE_A, [by_digest]),
        },
    )
    target = FakeTarget()

    # a:1 and docker.io/library/a:1 are one cache entry; a:latest and a@sha256: are other
    # entries of the same image.
    report = load_images(
        required("a:1", "docker.io/library/a:1", "a:latest", by_digest),
        target,
        ImageCache(tmp_path),
    )

    # One load with every ref, under the first entry's name (index.json order: a:1,
    # a:latest, then a@sha256:, since ":" sorts before "@"); the load tags the tags, and
    # make_resolvable is left the digest ref alone.
    assert target.calls == [
        ("ensure_space", A1),
        ("load", A1, "a:1", "docker.io/library/a:1", "a:latest", by_digest),
        ("make_resolvable", by_digest),
    ]
    assert statuses(report) == [(A1, LOADED, ""), (A_LATEST, LOADED, ""), (a_digest, LOADED, "")]
    assert written(report) == {A1: 1000, A_LATEST: 0, a_digest: 0}
    assert report.outcomes[0].refs == ("a:1", "docker.io/library/a:1")
    assert target.names == {
        "a:1": IMAGE_A.image_id,
        "docker.io/library/a:1": IMAGE_A.image_id,
        "a:latest": IMAGE_A.image_id,
        by_digest: IMAGE_A.image_id,
    }
    assert report.exit_code == 0


def test_load_after_cache_with_the_same_fakes(tmp_path: Path) -> None:
    """What cache-img wrote, load-img loads: the blobs a fake source wrote are real."""
    source = FakeSource("fake engine", {"a:1": IMAGE_A, "b:1": IMAGE_B})
    cache_images(required("a:1", "b:1"), source, ImageCache(tmp_path), compress="gzip")
    target = FakeTarget()

    report = load_images(required("a:1", "b:1"), target, ImageCache(tmp_path))

    assert statuses(report) == [(A1, LOADED, ""), (B1, LOADED, "")]
    assert report.bytes_written == 1000 + 2000
    assert target.present == {IMAGE_A.image_id, IMAGE_B.image_id}


# load-img --fetch: the read-through


def _manifest_digest(image: FakeImage) -> str:
    return _digest(image.manifest)


@dataclass
class FakeLookup:
    """A TagLookup: what each ref as written names now (``serves``), by the manifest digest
    of a fake image; ``down`` makes every call unreachable."""

    serves: Mapping[str, FakeImage]
    down: bool = False
    description: str = "its registry"
    calls: list[str] = field(default_factory=list)

    def current_digest(self, wanted: Wanted) -> str | None:
        self.calls.append(wanted.canonical)
        if self.down:
            raise RegistryUnreachableError(
                "couldn't look up a:1 at 127.0.0.1:9: connection refused"
            )
        image = self.serves.get(wanted.written[0])
        return _manifest_digest(image) if image is not None else None


def read_through_of(mode: str, source: FakeSource, lookup: FakeLookup) -> ReadThrough:
    return ReadThrough(mode=mode, source=source, lookup=lookup)


def sources(report: Report) -> dict[str, str | None]:
    return {outcome.name: outcome.source for outcome in report.outcomes}


def test_fetch_missing_fetches_what_neither_the_engine_nor_the_cache_has(
    tmp_path: Path,
) -> None:
    fill(tmp_path, {A1: (IMAGE_A, ["a:1"])})
    registry = {"a:1": IMAGE_C, "b:1": IMAGE_B, "c:1": IMAGE_C}
    source = FakeSource("its registry", registry)
    lookup = FakeLookup(registry)
    # c:1 is not cached but the engine has it; a:1 is cached (its tag moved: not asked).
    target = FakeTarget(present={IMAGE_C.image_id}, names={"c:1": IMAGE_C.image_id})

    report = load_images(
        required("a:1", "b:1", "c:1"),
        target,
        ImageCache(tmp_path),
        fetch=read_through_of(FETCH_MISSING, source, lookup),
    )

    assert lookup.calls == [B1]
    assert source.calls == [("find", B1), ("copy", B1)]
    assert statuses(report) == [(A1, LOADED, ""), (B1, LOADED, ""), (C1, PRESENT, "")]
    assert sources(report) == {A1: FROM_CACHE, B1: FROM_REGISTRY, C1: FROM_ENGINE}
    # Fetched into the cache, then loaded from it.
    assert cached(tmp_path)[B1] == (IMAGE_B.image_id, ("b:1",))
    assert target.present == {IMAGE_A.image_id, IMAGE_B.image_id, IMAGE_C.image_id}
    assert [image["source"] for image in report.to_json()["images"]] == [
        "cache",
        "registry",
        "docker",
    ]
    assert "; 1 from registries, 1 from the cache, 1 from Docker)" in report.summary()


def test_fetch_missing_an_image_its_registry_lacks_is_missing(tmp_path: Path) -> None:
    source = FakeSource("its registry", {})
    lookup = FakeLookup({})

    report = load_images(
        required("b:1"),
        FakeTarget(),
        ImageCache(tmp_path),
        fetch=read_through_of(FETCH_MISSING, source, lookup),
    )

    assert source.calls == []
    why = "neither fake engine, the cache nor its registry has it"
    assert statuses(report) == [(B1, MISSING, why)]
    assert sources(report) == {B1: None}
    assert report.exit_code == 3


def test_fetch_newer_refreshes_a_moved_tag_and_keeps_the_old_image_by_digest(
    tmp_path: Path,
) -> None:
    fill(tmp_path, {A1: (IMAGE_A, ["a:1", "docker.io/library/a:1"]), B1: (IMAGE_B, ["b:1"])})
    old_digest = _manifest_digest(IMAGE_A)
    pinned = f"a@{old_digest}"
    registry = {"a:1": IMAGE_C, "b:1": IMAGE_B}  # a:1 moved to C; b:1 is unchanged
    source = FakeSource("its registry", registry)
    lookup = FakeLookup(registry)
    target = FakeTarget()

    report = load_images(
        required("a:1", "b:1"),
        target,
        ImageCache(tmp_path),
        fetch=read_through_of(FETCH_NEWER, source, lookup),
    )

    assert lookup.calls == [A1, B1]
    assert source.calls == [("find", A1), ("copy", A1)]
    assert statuses(report) == [(A1, LOADED, ""), (B1, LOADED, "")]
    assert sources(report) == {A1: FROM_REGISTRY, B1: FROM_CACHE}
    kept = f"docker.io/library/a@{old_digest}"
    assert cached(tmp_path) == {
        A1: (IMAGE_C.image_id, ("a:1", "docker.io/library/a:1")),
        B1: (IMAGE_B.image_id, ("b:1",)),
        kept: (IMAGE_A.image_id, (kept,)),
    }
    assert target.names["a:1"] == IMAGE_C.image_id

    # A rollback bundle pinning the old image loads it from the cache, offline: a digest is
    # never asked about, by either spelling.
    lookup.calls.clear()
    rollback = load_images(
        required(pinned, f"a:1@{old_digest}"),
        target,
        ImageCache(tmp_path),
        fetch=read_through_of(FETCH_NEWER, source, FakeLookup(registry, down=True)),
    )
    assert [o.status for o in rollback.outcomes] == [LOADED, LOADED]
    assert set(sources(rollback).values()) == {FROM_CACHE}
    assert target.names[pinned] == IMAGE_A.image_id
    assert target.names[f"a:1@{old_digest}"] == IMAGE_A.image_id


def test_fetch_newer_with_registries_down_loads_from_the_cache_with_one_warning(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    fill(tmp_path, {A1: (IMAGE_A, ["a:1"]), B1: (IMAGE_B, ["b:1"])})
    source = FakeSource("its registry", {})
    lookup = FakeLookup({}, down=True)

    report = load_images(
        required("a:1", "b:1"),
        FakeTarget(),
        ImageCache(tmp_path),
        fetch=read_through_of(FETCH_NEWER, source, lookup),
    )

    assert source.calls == []
    assert statuses(report) == [(A1, LOADED, ""), (B1, LOADED, "")]
    assert sources(report) == {A1: FROM_CACHE, B1: FROM_CACHE}
    assert warnings_and_errors(logs) == [
        (
            "WARNING",
            "registries can't be reached (couldn't look up a:1 at 127.0.0.1:9: connection "
            "refused); the cache answers for 2 images: a:1, b:1",
        )
    ]
    assert report.exit_code == 0


def test_fetch_newer_unchanged_tags_fetch_nothing(tmp_path: Path) -> None:
    fill(tmp_path, {A1: (IMAGE_A, ["a:1"])})
    registry = {"a:1": IMAGE_A}
    source = FakeSource("its registry", registry)
    lookup = FakeLookup(registry)

    report = load_images(
        required("a:1"),
        FakeTarget(),
        ImageCache(tmp_path),
        fetch=read_through_of(FETCH_NEWER, source, lookup),
    )

    assert lookup.calls == [A1]
    assert source.calls == []
    assert sources(report) == {A1: FROM_CACHE}
    assert list(cached(tmp_path)) == [A1]


def test_an_image_containerd_had_is_reported_as_from_containerd(tmp_path: Path) -> None:
    target = FakeTarget(present={IMAGE_C.image_id}, names={"c:1": IMAGE_C.image_id})
    fill(tmp_path, {C1: (IMAGE_C, ["c:1"])})

    report = load_images(
        required("c:1"), target, ImageCache(tmp_path), engine="containerd (namespace k8s.io)"
    )

    assert statuses(report) == [(C1, PRESENT, "")]
    assert report.to_json()["images"][0]["source"] == "containerd"


def test_load_without_fetch_reports_sources_in_json_only(tmp_path: Path) -> None:
    fill(tmp_path, {A1: (IMAGE_A, ["a:1"])})

    report = load_images(required("a:1"), FakeTarget(), ImageCache(tmp_path))

    assert report.to_json()["images"][0]["source"] == "cache"
    assert "from registries" not in report.summary()
    assert "(1 loaded, 0 tagged, 0 already there)" in report.summary()


def test_cache_del_img_drops_kept_digests_that_no_bundle_pins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What load-img --fetch newer kept as name@digest stays while a bundle pins it (either
    spelling) and goes with ``cache del-img`` once none does."""
    cache_dir, stages = tmp_path / "cache", tmp_path / "stages"
    pinned, unpinned = _manifest_digest(IMAGE_B), _manifest_digest(IMAGE_C)
    fill(
        cache_dir,
        {
            A1: (IMAGE_A, ["a:1"]),
            f"docker.io/library/a@{pinned}": (IMAGE_B, [f"docker.io/library/a@{pinned}"]),
            f"docker.io/library/a@{unpinned}": (IMAGE_C, [f"docker.io/library/a@{unpinned}"]),
        },
    )
    (stages / "1").mkdir(parents=True)
    (stages / "1/forklift-bundle.yml").write_text(
        "forklift-version: v0.8.0-alpha.6\n"
        "exports:\n  apps/demo:\n    compose-app:\n      images:\n"
        f"        - a:1\n        - a:1@{pinned}\n"
    )
    (stages / "forklift-stage-store.yml").write_text("staged:\n  next: 1\n")
    argv = ["cache", "del-img", "--cache-dir", str(cache_dir), "--stage-store", str(stages)]

    code = cli.main(argv, env={"HOME": str(tmp_path)})

    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out == f"deleted docker.io/library/a@{unpinned}\n"
    assert set(cached(cache_dir)) == {A1, f"docker.io/library/a@{pinned}"}
