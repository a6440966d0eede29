"""`cache copy` and `cache merge` on real temporary directories: caches written with the cache's
own writer API, copied through the CLI (`cli.main`), and checked on disk.

Expected blob sets and byte counts come from the bytes the tests wrote (hashed here with
hashlib), never from the code under test.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from forklift_boot import cli
from forklift_boot.cache import (
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_MANIFEST,
    CachedImage,
    CacheWriter,
    Descriptor,
    ImageCache,
    build_oci_manifest,
)

Capture = pytest.CaptureFixture[str]


@pytest.fixture(autouse=True)
def _keep_sigterm() -> Iterator[None]:
    """cli.main installs a SIGTERM handler; put pytest's back."""
    handler = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, handler)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Written:
    """An image as the test wrote it: its name, and every blob's bytes by digest."""

    canonical: str
    refs: tuple[str, ...]
    manifest: str  # the entry's root digest
    blobs: dict[str, bytes]
    layers: tuple[str, ...]

    @property
    def size(self) -> int:
        return sum(len(data) for data in self.blobs.values())


def write_image(
    writer: CacheWriter, canonical: str, layers: Sequence[bytes], refs: Sequence[str] = ()
) -> Written:
    blobs: dict[str, bytes] = {}
    layer_descriptors = []
    for data in layers:
        layer_descriptors.append(writer.write_blob(data, MEDIA_OCI_LAYER))
        blobs[sha256(data)] = data
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [sha256(d) for d in layers]},
        }
    ).encode()
    config_descriptor = writer.write_blob(config, MEDIA_OCI_CONFIG)
    blobs[sha256(config)] = config
    manifest = build_oci_manifest(config_descriptor, layer_descriptors)
    manifest_descriptor = writer.write_blob(manifest, MEDIA_OCI_MANIFEST)
    blobs[sha256(manifest)] = manifest
    writer.put_images(
        [
            CachedImage(
                canonical=canonical,
                refs=tuple(refs) or (canonical,),
                descriptor=manifest_descriptor,
                image_id=sha256(config),
                platform="linux/amd64",
            )
        ]
    )
    return Written(
        canonical,
        tuple(sorted(refs or (canonical,))),
        sha256(manifest),
        blobs,
        tuple(sha256(d) for d in layers),
    )


def blob_path(cache_dir: Path, digest: str) -> Path:
    return cache_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")


def blobs_on_disk(cache_dir: Path) -> dict[str, int]:
    blobs = cache_dir / "blobs" / "sha256"
    if not blobs.is_dir():
        return {}
    return {"sha256:" + p.name: p.stat().st_size for p in blobs.iterdir()}


def entries(cache_dir: Path) -> dict[str, dict[str, Any]]:
    index = json.loads((cache_dir / "index.json").read_text())
    return {e["annotations"]["io.containerd.image.name"]: e for e in index["manifests"]}


def run(capsys: Capture, *argv: str) -> tuple[int, dict[str, Any] | str, str]:
    """cli.main; stdout parsed as JSON when --json was given."""
    code = cli.main(list(argv), env={"HOME": "/nonexistent"})
    captured = capsys.readouterr()
    out: dict[str, Any] | str = captured.out
    if "--json" in argv and captured.out:
        out = json.loads(captured.out)
    return code, out, captured.err


def verify(capsys: Capture, cache_dir: Path) -> None:
    code, out, err = run(capsys, "cache", "verify", "--cache-dir", str(cache_dir))
    assert (code, out) == (0, ""), err


def statuses(report: Any) -> dict[str, str]:
    return {image["name"]: image["status"] for image in report["images"]}


ALPHA = "docker.io/library/alpha:1.0"
BETA = "docker.io/library/beta:2.0"
GAMMA = "ghcr.io/fb/gamma:3.0"
SHARED = b"a layer that alpha and beta share\n" * 1000


@dataclass(frozen=True)
class Source:
    dir: Path
    alpha: Written
    beta: Written
    gamma: Written

    @property
    def all(self) -> tuple[Written, ...]:
        return (self.alpha, self.beta, self.gamma)


def distinct(*images: Written) -> dict[str, bytes]:
    return {digest: data for image in images for digest, data in image.blobs.items()}


@pytest.fixture
def source(tmp_path: Path) -> Source:
    cache_dir = tmp_path / "source"
    with ImageCache(cache_dir).writing() as writer:
        alpha = write_image(writer, ALPHA, [SHARED, os.urandom(300_000)], ["alpha:1.0"])
        beta = write_image(writer, BETA, [SHARED, b"beta's own\n"], ["beta:2.0", BETA])
        gamma = write_image(writer, GAMMA, [os.urandom(2_500_000)])
    return Source(cache_dir, alpha, beta, gamma)


# Copying everything, then again


def test_copy_everything_into_a_new_directory(
    capsys: Capture, tmp_path: Path, source: Source
) -> None:
    usb = tmp_path / "usb" / "cache"
    source_index = (source.dir / "index.json").read_bytes()
    code, report, err = run(
        capsys, "cache", "copy", "--cache-dir", str(source.dir), "--to", str(usb), "--json"
    )
    assert code == 0, err
    assert isinstance(report, dict)
    assert report["action"] == "copy"
    wanted = distinct(*source.all)
    assert blobs_on_disk(usb) == {digest: len(data) for digest, data in wanted.items()}
    assert report["blobs"] == {
        "copied": len(wanted),
        "bytes_copied": sum(len(d) for d in wanted.values()),
        "skipped": 0,
        "bytes_skipped": 0,
    }
    assert statuses(report) == {ALPHA: "copied", BETA: "copied", GAMMA: "copied"}
    # Entries carried over with their annotations: the same JSON, byte for byte.
    assert entries(usb) == entries(source.dir)
    for digest, data in wanted.items():
        assert blob_path(usb, digest).read_bytes() == data
    assert (source.dir / "index.json").read_bytes() == source_index
    verify(capsys, usb)
    verify(capsys, source.dir)
    # Progress as cache-img shows it off a terminal: a line as each image starts and ends.
    assert f"copying 1/3: {ALPHA} (" in err
    assert "copied alpha:1.0\n" in err
    assert f"3/3 images in {usb} (3 copied)" in err
    assert f"{len(wanted)} blobs copied" in err


def test_a_second_copy_writes_nothing(capsys: Capture, tmp_path: Path, source: Source) -> None:
    usb = tmp_path / "usb"
    args = ("cache", "copy", "--cache-dir", str(source.dir), "--to", str(usb), "--json")
    assert run(capsys, *args)[0] == 0
    index_stat = (usb / "index.json").stat()
    code, report, err = run(capsys, *args)
    assert code == 0, err
    assert isinstance(report, dict)
    wanted = distinct(*source.all)
    assert report["blobs"] == {
        "copied": 0,
        "bytes_copied": 0,
        "skipped": len(wanted),
        "bytes_skipped": sum(len(d) for d in wanted.values()),
    }
    assert set(statuses(report).values()) == {"already there"}
    after = (usb / "index.json").stat()
    assert (after.st_ino, after.st_mtime_ns) == (index_stat.st_ino, index_stat.st_mtime_ns)


def test_copy_named_refs_only(capsys: Capture, tmp_path: Path, source: Source) -> None:
    usb = tmp_path / "usb"
    code, report, err = run(
        capsys, "cache", "copy", "--cache-dir", str(source.dir), "--to", str(usb),
        "alpha:1.0", "docker.io/library/beta:2.0", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert isinstance(report, dict)
    wanted = distinct(source.alpha, source.beta)
    assert set(blobs_on_disk(usb)) == set(wanted)
    # The shared layer once.
    assert (
        report["blobs"]["copied"]
        == len(wanted)
        == len(source.alpha.blobs) + len(source.beta.blobs) - 1
    )
    assert report["blobs"]["bytes_copied"] == sum(len(d) for d in wanted.values())
    assert set(entries(usb)) == {ALPHA, BETA}
    verify(capsys, usb)


def test_copy_from_an_images_file(capsys: Capture, tmp_path: Path, source: Source) -> None:
    listing = tmp_path / "images.txt"
    listing.write_text("ghcr.io/fb/gamma:3.0\n")
    usb = tmp_path / "usb"
    code, _, err = run(
        capsys, "cache", "copy", "--cache-dir", str(source.dir), "--to", str(usb),
        "--images-file", str(listing),
    )  # fmt: skip
    assert code == 0, err
    assert set(blobs_on_disk(usb)) == set(source.gamma.blobs)
    assert set(entries(usb)) == {GAMMA}


def test_a_wanted_image_the_source_lacks(capsys: Capture, tmp_path: Path, source: Source) -> None:
    usb = tmp_path / "usb"
    code, report, err = run(
        capsys, "cache", "copy", "--cache-dir", str(source.dir), "--to", str(usb),
        "alpha:1.0", "nothere:1", "--json",
    )  # fmt: skip
    assert code == 3, err
    assert isinstance(report, dict)
    assert statuses(report) == {ALPHA: "copied", "docker.io/library/nothere:1": "missing"}
    assert f"Error: nothere:1: not in the image cache {source.dir}" in err
    assert set(entries(usb)) == {ALPHA}
    verify(capsys, usb)


def test_two_sources_at_once_is_a_usage_error(
    capsys: Capture, tmp_path: Path, source: Source
) -> None:
    code, _, err = run(
        capsys, "cache", "copy", "--cache-dir", str(source.dir), "--to", str(tmp_path / "usb"),
        "alpha:1.0", "--pallet", str(tmp_path),
    )  # fmt: skip
    assert code == 2, err
    assert not (tmp_path / "usb").exists()


# Merging


def test_merge_into_a_cache_with_other_images(
    capsys: Capture, tmp_path: Path, source: Source
) -> None:
    device = tmp_path / "device"
    with ImageCache(device).writing() as writer:
        # Already there: alpha (same blobs, same manifest), and an image of its own.
        write_image(writer, ALPHA, [SHARED, source.alpha.blobs[source.alpha.layers[1]]])
        own = write_image(writer, "docker.io/library/own:1", [b"the device's own\n"])
    own_entry = json.dumps(entries(device)[own.canonical])
    alpha_files = {d: blob_path(device, d).stat().st_ino for d in source.alpha.blobs}

    code, report, err = run(
        capsys, "cache", "merge", str(source.dir), "--cache-dir", str(device), "--json"
    )
    assert code == 0, err
    assert isinstance(report, dict)
    assert report["action"] == "merge"
    present = set(source.alpha.blobs)
    needed = distinct(*source.all)
    missing = {d: data for d, data in needed.items() if d not in present}
    assert report["blobs"] == {
        "copied": len(missing),
        "bytes_copied": sum(len(d) for d in missing.values()),
        "skipped": len(present),
        "bytes_skipped": sum(len(source.alpha.blobs[d]) for d in present),
    }
    # alpha's entry gains the source's spelling; nothing of alpha is rewritten.
    assert statuses(report) == {ALPHA: "updated", BETA: "copied", GAMMA: "copied"}
    refs = entries(device)[ALPHA]["annotations"]["run.forklift.boot.refs"]
    assert refs == f"alpha:1.0,{ALPHA}"  # sorted, unique
    assert {d: blob_path(device, d).stat().st_ino for d in source.alpha.blobs} == alpha_files
    assert json.dumps(entries(device)[own.canonical]) == own_entry
    assert set(entries(device)) == {ALPHA, BETA, GAMMA, own.canonical}
    verify(capsys, device)


def test_merge_a_missing_directory_or_one_that_is_not_a_cache(
    capsys: Capture, tmp_path: Path
) -> None:
    device = tmp_path / "device"
    code, _, err = run(capsys, "cache", "merge", str(tmp_path / "nope"), "--cache-dir", str(device))
    assert code == 1
    assert err == f"Error: couldn't read the image cache {tmp_path / 'nope'}: no such directory\n"
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"jpeg")
    code, _, err = run(
        capsys, "cache", "merge", str(tmp_path / "photos"), "--cache-dir", str(device)
    )
    assert code == 1
    assert err.startswith(f"Error: couldn't read the image cache {tmp_path / 'photos'}: ")
    assert "oci-layout is missing" in err
    assert not device.exists()


def test_copy_into_a_directory_of_other_files_is_refused(
    capsys: Capture, tmp_path: Path, source: Source
) -> None:
    usb = tmp_path / "usb"
    usb.mkdir()
    (usb / "notes.txt").write_text("mine")
    code, _, err = run(capsys, "cache", "copy", "--cache-dir", str(source.dir), "--to", str(usb))
    assert code == 1
    assert "holds other files (notes.txt) and no oci-layout" in err
    assert sorted(p.name for p in usb.iterdir()) == ["notes.txt"]


def test_copy_into_itself_is_refused(capsys: Capture, tmp_path: Path, source: Source) -> None:
    (tmp_path / "link").symlink_to(source.dir)
    code, _, err = run(
        capsys, "cache", "copy", "--cache-dir", str(source.dir), "--to", str(tmp_path / "link")
    )
    assert code == 2
    assert "are the same image cache" in err


# The same name, different images


@pytest.fixture
def conflict(tmp_path: Path, source: Source) -> tuple[Path, Written]:
    """A destination whose gamma:3.0 is another image, under two spellings of its own."""
    device = tmp_path / "device"
    with ImageCache(device).writing() as writer:
        other = write_image(writer, GAMMA, [b"an older gamma\n"])
    return device, other


def test_the_source_replaces_another_image_of_the_same_name(
    capsys: Capture, source: Source, conflict: tuple[Path, Written]
) -> None:
    device, other = conflict
    code, report, err = run(
        capsys, "cache", "merge", str(source.dir), "--cache-dir", str(device), "--json"
    )
    assert code == 0, err
    assert isinstance(report, dict)
    assert statuses(report)[GAMMA] == "replaced"
    assert f"Warning: {GAMMA} in {device} is another image (manifest {other.manifest}" in err
    entry = entries(device)[GAMMA]
    assert entry["digest"] == source.gamma.manifest
    assert (
        entry["annotations"]["run.forklift.boot.image-id"]
        == entries(source.dir)[GAMMA]["annotations"]["run.forklift.boot.image-id"]
    )
    # The old image's blobs stay until garbage collection; nothing names them now.
    assert set(other.blobs) <= set(blobs_on_disk(device))
    verify(capsys, device)
    code, _, err = run(capsys, "cache", "del-img", "--cache-dir", str(device), "nothere:1")
    assert code == 0, err
    assert not set(other.blobs) & set(blobs_on_disk(device))
    verify(capsys, device)


def test_keep_existing_keeps_the_destinations_image(
    capsys: Capture, source: Source, conflict: tuple[Path, Written]
) -> None:
    device, _ = conflict
    before = entries(device)[GAMMA]
    code, report, err = run(
        capsys, "cache", "merge", str(source.dir), "--cache-dir", str(device),
        "--keep-existing", "--json",
    )  # fmt: skip
    assert code == 0, err
    assert isinstance(report, dict)
    assert statuses(report)[GAMMA] == "kept"
    assert "kept it (--keep-existing)" in err
    assert entries(device)[GAMMA] == before
    # None of the source's gamma blobs was copied.
    assert not set(source.gamma.blobs) & set(blobs_on_disk(device))
    verify(capsys, device)


def test_index_entries_of_the_same_digest_gain_platforms(capsys: Capture, tmp_path: Path) -> None:
    """An entry pinning an image index holds the platforms it cached; merging two caches of the
    same index gives the union of their platforms under the one entry."""
    amd64_layer, arm64_layer = os.urandom(5000), os.urandom(6000)
    configs = {
        arch: json.dumps(
            {"architecture": arch, "os": "linux", "rootfs": {"diff_ids": [d]}}
        ).encode()
        for arch, d in (("amd64", sha256(amd64_layer)), ("arm64", sha256(arm64_layer)))
    }
    manifests = {
        arch: build_oci_manifest(
            Descriptor(MEDIA_OCI_CONFIG, sha256(configs[arch]), len(configs[arch])),
            [Descriptor(MEDIA_OCI_LAYER, sha256(layer), len(layer))],
        )
        for arch, layer in (("amd64", amd64_layer), ("arm64", arm64_layer))
    }
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_OCI_INDEX,
            "manifests": [
                {
                    "mediaType": MEDIA_OCI_MANIFEST,
                    "digest": sha256(manifests[arch]),
                    "size": len(manifests[arch]),
                    "platform": {"architecture": arch, "os": "linux"},
                }
                for arch in ("amd64", "arm64")
            ],
        }
    ).encode()
    name = f"ghcr.io/fb/multi:1@{sha256(index)}"

    def cache_of(arch: str, layer: bytes) -> Path:
        cache_dir = tmp_path / arch
        with ImageCache(cache_dir).writing() as writer:
            writer.write_blob(layer, MEDIA_OCI_LAYER)
            writer.write_blob(configs[arch], MEDIA_OCI_CONFIG)
            writer.write_blob(manifests[arch], MEDIA_OCI_MANIFEST)
            root = writer.write_blob(index, MEDIA_OCI_INDEX)
            writer.put_images([CachedImage(name, (name,), root, platform=f"linux/{arch}")])
        return cache_dir

    amd64, arm64 = cache_of("amd64", amd64_layer), cache_of("arm64", arm64_layer)
    code, report, err = run(
        capsys, "cache", "merge", str(arm64), "--cache-dir", str(amd64), "--json"
    )
    assert code == 0, err
    assert isinstance(report, dict)
    assert statuses(report) == {name: "updated"}
    arm64_blobs = {sha256(arm64_layer), sha256(configs["arm64"]), sha256(manifests["arm64"])}
    assert report["blobs"]["copied"] == 3
    assert set(blobs_on_disk(amd64)) == arm64_blobs | set(blobs_on_disk(arm64)) | {
        sha256(amd64_layer),
        sha256(configs["amd64"]),
        sha256(manifests["amd64"]),
    }
    verify(capsys, amd64)
    for platform, layer in (("linux/amd64", amd64_layer), ("linux/arm64", arm64_layer)):
        code, _, err = run(
            capsys, "cache", "export-img", "--cache-dir", str(amd64), "--platform", platform,
            "--format", "oci", "-o", str(tmp_path / "x.tar"), name,
        )  # fmt: skip
        assert code == 0, err
        assert layer in (tmp_path / "x.tar").read_bytes()


# Damaged sources and destinations


def flip_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))


def test_a_flipped_byte_in_a_source_layer_fails_that_image_only(
    capsys: Capture, tmp_path: Path, source: Source
) -> None:
    usb = tmp_path / "usb"
    damaged = source.gamma.layers[0]
    flip_byte(blob_path(source.dir, damaged))
    code, report, err = run(
        capsys, "cache", "copy", "--cache-dir", str(source.dir), "--to", str(usb), "--json"
    )
    assert code == 3, err
    assert isinstance(report, dict)
    assert statuses(report) == {ALPHA: "copied", BETA: "copied", GAMMA: "failed"}
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert errors == [
        f"Error: couldn't copy {GAMMA} from the image cache {source.dir}: blob {damaged} (layer) "
        f"is corrupt: its content hashes to {sha256(blob_path(source.dir, damaged).read_bytes())}"
        f"; check it with `forklift-boot cache verify --cache-dir {source.dir}`"
    ]
    # Nothing of gamma in the destination: the blobs copied before the bad one went again.
    wanted = distinct(source.alpha, source.beta)
    assert blobs_on_disk(usb) == {d: len(data) for d, data in wanted.items()}
    assert report["blobs"]["copied"] == len(wanted)
    assert set(entries(usb)) == {ALPHA, BETA}
    verify(capsys, usb)
    assert f"failed: {GAMMA} (couldn't copy" in err


@pytest.mark.parametrize("damage", ["truncated", "missing", "manifest"])
def test_other_source_damage_is_found_before_copying(
    capsys: Capture, tmp_path: Path, source: Source, damage: str
) -> None:
    usb = tmp_path / "usb"
    if damage == "manifest":
        digest, problem = source.beta.manifest, "is corrupt: its content hashes to"
        flip_byte(blob_path(source.dir, digest))
    elif damage == "truncated":
        digest = source.beta.layers[1]
        path = blob_path(source.dir, digest)
        path.write_bytes(path.read_bytes()[:-1])
        problem = f"has {len(source.beta.blobs[digest]) - 1} bytes, expected"
    else:
        digest, problem = source.beta.layers[1], "is missing"
        blob_path(source.dir, digest).unlink()
    code, report, err = run(
        capsys, "cache", "copy", "--cache-dir", str(source.dir), "--to", str(usb), "--json"
    )
    assert code == 3, err
    assert isinstance(report, dict)
    assert statuses(report)[BETA] == "failed"
    errors = [line for line in err.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"Error: couldn't copy {BETA} from the image cache {source.dir}: ")
    assert f"blob {digest} (" in errors[0]
    assert problem in errors[0]
    assert set(blobs_on_disk(usb)) == set(distinct(source.alpha, source.gamma))
    verify(capsys, usb)


def test_destination_blobs_of_the_wrong_size_or_corrupt_manifests_are_copied_again(
    capsys: Capture, tmp_path: Path, source: Source
) -> None:
    usb = tmp_path / "usb"
    args = ("cache", "copy", "--cache-dir", str(source.dir), "--to", str(usb), "--json")
    assert run(capsys, *args)[0] == 0
    short = source.gamma.layers[0]
    blob_path(usb, short).write_bytes(b"short")
    flip_byte(blob_path(usb, source.beta.manifest))
    # A layer of the right size is trusted, as every write of the cache trusts it.
    flip_byte(blob_path(usb, source.alpha.layers[1]))
    code, report, err = run(capsys, *args)
    assert code == 0, err
    assert isinstance(report, dict)
    assert report["blobs"]["copied"] == 2
    copied = len(source.gamma.blobs[short]) + len(source.beta.blobs[source.beta.manifest])
    assert report["blobs"]["bytes_copied"] == copied
    assert blob_path(usb, short).read_bytes() == source.gamma.blobs[short]
    assert (
        blob_path(usb, source.beta.manifest).read_bytes() == source.beta.blobs[source.beta.manifest]
    )
    code, out, _ = run(capsys, "cache", "verify", "--cache-dir", str(usb))
    assert code == 1
    assert source.alpha.layers[1] in str(out)


def test_leftovers_of_an_interrupted_copy_are_swept_and_used(
    capsys: Capture, tmp_path: Path, source: Source
) -> None:
    """What kill -9 leaves: whole blobs nothing names yet, and a temporary. The rerun sweeps
    the temporary and copies only what is missing."""
    usb = tmp_path / "usb"
    with ImageCache(usb).writing() as writer:
        for digest in source.gamma.layers:
            writer.write_blob(source.gamma.blobs[digest], MEDIA_OCI_LAYER)
    (usb / "blobs" / "sha256" / ".tmp-0123456789abcdef").write_bytes(b"half a blob")
    (usb / "index.json.tmp-0123456789abcdef").write_bytes(b"{")
    code, report, err = run(
        capsys, "cache", "copy", "--cache-dir", str(source.dir), "--to", str(usb), "--json"
    )
    assert code == 0, err
    assert isinstance(report, dict)
    present = {d: source.gamma.blobs[d] for d in source.gamma.layers}
    wanted = distinct(*source.all)
    assert report["blobs"]["skipped"] == len(present)
    assert report["blobs"]["bytes_copied"] == sum(
        len(data) for d, data in wanted.items() if d not in present
    )
    verify(capsys, usb)
    assert not [p for p in usb.rglob("*") if ".tmp-" in p.name]


def test_entries_of_other_tools_are_left_out_with_a_warning(
    capsys: Capture, tmp_path: Path, source: Source
) -> None:
    index_path = source.dir / "index.json"
    index = json.loads(index_path.read_text())
    foreign = {
        "mediaType": MEDIA_OCI_MANIFEST,
        "digest": source.alpha.manifest,
        "size": len(source.alpha.blobs[source.alpha.manifest]),
        "annotations": {"org.opencontainers.image.ref.name": "skopeo-wrote-this"},
    }
    index["manifests"].append(foreign)
    index_path.write_text(json.dumps(index))
    usb = tmp_path / "usb"
    code, _, err = run(capsys, "cache", "copy", "--cache-dir", str(source.dir), "--to", str(usb))
    assert code == 0, err
    assert (
        f"Warning: left out 1 index.json entries of {source.dir} that name no forklift-boot image"
        in err
    )
    assert set(entries(usb)) == {ALPHA, BETA, GAMMA}
    assert len(json.loads((usb / "index.json").read_text())["manifests"]) == 3


# A hostile source: names checked as image references, nothing printed raw


def add_entries(cache_dir: Path, *added: dict[str, Any]) -> None:
    """Entries written into index.json as another device's cache might hold them: unchecked."""
    index_path = cache_dir / "index.json"
    index = json.loads(index_path.read_text())
    index["manifests"] += list(added)
    index_path.write_text(json.dumps(index))


def entry(written: Written, name: str, refs: str | None = None) -> dict[str, Any]:
    annotations = {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name}
    if refs is not None:
        annotations["run.forklift.boot.refs"] = refs
    return {
        "mediaType": MEDIA_OCI_MANIFEST,
        "digest": written.manifest,
        "size": len(written.blobs[written.manifest]),
        "annotations": annotations,
    }


def test_merge_takes_only_names_that_are_image_references(
    capsys: Capture, tmp_path: Path, source: Source
) -> None:
    evil = "docker.io/evil/app:1"
    escapes = "\x1b[31mError: FAKE\x1b[0m\nx"
    add_entries(
        source.dir,
        entry(source.alpha, "../../../../etc/passwd"),
        entry(source.alpha, escapes),
        entry(source.alpha, "alpha:1.0"),  # an image reference, but not as forklift-boot writes it
        # A spelling that means another image claims it for the report.
        entry(source.beta, evil, refs="nginx:1.27,alpine:3,evil/app:1,\x1b[2J"),
    )
    device = tmp_path / "device"
    around = sorted(p.name for p in tmp_path.iterdir())

    code, out, err = run(capsys, "cache", "merge", str(source.dir), "--cache-dir", str(device))

    assert code == 3, err  # some images failed: the three refused entries
    assert isinstance(out, str)
    assert set(entries(device)) == {ALPHA, BETA, GAMMA, evil}
    annotations = entries(device)[evil]["annotations"]
    assert annotations["run.forklift.boot.refs"] == "evil/app:1"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*around, "device"])
    assert "\x1b" not in out + err
    lines = (out + err).splitlines()
    assert not [line for line in lines if line.startswith(("Error: FAKE", "x"))]
    assert "copied alpine:3" not in err
    assert "copied nginx:1.27" not in err
    assert "left them out: \\x1b[2J, alpine:3, nginx:1.27\n" in err  # sorted
    assert 'invalid image reference "../../../../etc/passwd"' in err
    assert "\\x1b[31mError: FAKE\\x1b[0m\\nx" in err
    assert "alpha:1.0 is not a canonical image reference (that would be" in err
    verify(capsys, device)


def test_a_deeply_nested_manifest_fails_that_image_only(
    capsys: Capture, tmp_path: Path, source: Source
) -> None:
    depth = 100_000
    deep = (
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "x": '
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )
    blob_path(source.dir, sha256(deep)).write_bytes(deep)
    name = "docker.io/library/deep:1"
    add_entries(
        source.dir,
        {
            "mediaType": MEDIA_OCI_MANIFEST,
            "digest": sha256(deep),
            "size": len(deep),
            "annotations": {"io.containerd.image.name": name},
        },
    )
    usb = tmp_path / "usb"
    code, report, err = run(
        capsys, "cache", "copy", "--cache-dir", str(source.dir), "--to", str(usb), "--json"
    )
    assert code == 3, err
    assert isinstance(report, dict)
    assert statuses(report) == {ALPHA: "copied", BETA: "copied", GAMMA: "copied", name: "failed"}
    assert "deeper than 64 levels" in err
    assert "Traceback" not in err
    assert set(entries(usb)) == {ALPHA, BETA, GAMMA}
