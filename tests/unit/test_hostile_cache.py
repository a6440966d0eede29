"""Hostile caches (issue 14): a USB stick or a foreign cache built to hang, exhaust memory, read
or write outside itself, or crash forklift-boot with a traceback.

Every hostile file is built here. Each command runs in a child process under a timeout and an
address-space limit (hang and memory guards, generous against what the commands need), and
each test checks the bounded outcome: the exit code, exactly one error line and no traceback,
and that nothing around the cache changed (marker files and their checksums).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

import forklift_boot
from forklift_boot.cache import (
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_MANIFEST,
    CachedImage,
    ImageCache,
    build_oci_manifest,
)
from forklift_boot.cache.json_limits import JsonTooDeepError, load_json
from forklift_boot.errors import CacheError, RegistryError
from forklift_boot.stores.registry.manifests import Manifest, manifest_media_type

PROJECT_DIR = Path(forklift_boot.__file__).resolve().parents[1]
# Hang guard: these commands finish in about a second.
TIMEOUT_SECONDS = 60
# Memory guard: the interpreter and a command take well under 200 MiB.
ADDRESS_SPACE = 1 << 30


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str

    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("Error: ")]


def forklift(*argv: str, home: Path) -> Result:
    """forklift-boot in a child under the guards; a hang fails the test (TimeoutExpired)."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))

    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "PYTHONPATH": str(PROJECT_DIR),
        # No Docker: load-img reads the cache before it needs one.
        "DOCKER_HOST": f"unix://{home}/no-docker.sock",
    }
    completed = subprocess.run(
        [sys.executable, "-m", "forklift_boot", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        preexec_fn=limit,
        check=False,
    )
    return Result(completed.returncode, completed.stdout, completed.stderr)


def assert_one_error(result: Result, *fragments: str, code: int = 1) -> str:
    """The command failed with ``code`` and exactly one error line holding ``fragments``."""
    assert "Traceback" not in result.err, result.err
    assert "MemoryError" not in result.err, result.err
    lines = result.error_lines()
    assert len(lines) == 1, result.err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert result.code == code, result.err
    return lines[0]


def snapshot(directory: Path) -> dict[str, str]:
    """Every entry under ``directory`` (links not followed): a link's target, a file's hash."""
    found: dict[str, str] = {}
    for path in sorted(directory.rglob("*")):
        name = str(path.relative_to(directory))
        if path.is_symlink():
            found[name] = "-> " + os.readlink(path)
        elif path.is_file():
            found[name] = sha256(path.read_bytes())
        elif path.is_dir():
            found[name] = "dir"
        else:
            found[name] = "special"
    return found


@dataclass(frozen=True)
class Image:
    canonical: str
    manifest: str
    config: str
    layer: str


def write_image(cache_dir: Path, name: str, layer: bytes, *, exclusive: bool = True) -> Image:
    """A one-layer image written with the cache's own writer."""
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"diff_ids": [sha256(layer)]}}
    ).encode()
    with ImageCache(cache_dir).writing(exclusive=exclusive) as writer:
        layer_descriptor = writer.write_blob(layer, MEDIA_OCI_LAYER)
        config_descriptor = writer.write_blob(config, MEDIA_OCI_CONFIG)
        manifest = build_oci_manifest(config_descriptor, [layer_descriptor])
        descriptor = writer.write_blob(manifest, MEDIA_OCI_MANIFEST)
        writer.put_images([CachedImage(name, (name,), descriptor, platform="linux/amd64")])
    return Image(name, sha256(manifest), sha256(config), sha256(layer))


def blob_path(cache_dir: Path, digest: str) -> Path:
    return cache_dir / "blobs" / "sha256" / digest.removeprefix("sha256:")


@pytest.fixture
def stick(tmp_path: Path) -> Path:
    """A cache on a "USB stick" with one good image, and marker files beside it."""
    cache_dir = tmp_path / "stick" / "images"
    write_image(cache_dir, "docker.io/library/good:1", b"good layer")
    (tmp_path / "stick" / "marker").write_text("beside the cache\n")
    return cache_dir


@pytest.fixture
def device(tmp_path: Path) -> Path:
    """The device's own cache, with one image."""
    cache_dir = tmp_path / "device"
    write_image(cache_dir, "docker.io/library/own:1", b"own layer")
    return cache_dir


# --- item 5: index.json and oci-layout that are no regular files, or too large ------------


def replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def replace_with_link(path: Path, target: str) -> None:
    path.unlink()
    path.symlink_to(target)


HOSTILE_TOP_LEVEL_FILES = [
    pytest.param("index.json", "fifo", "a named pipe (FIFO)", id="index-fifo"),
    pytest.param("index.json", "/dev/zero", "a symbolic link", id="index-dev-zero"),
    pytest.param("index.json", "/dev/urandom", "a symbolic link", id="index-dev-urandom"),
    pytest.param("oci-layout", "fifo", "a named pipe (FIFO)", id="layout-fifo"),
    pytest.param("oci-layout", "/dev/zero", "a symbolic link", id="layout-dev-zero"),
    pytest.param(".lock", "fifo", "a named pipe (FIFO)", id="lock-fifo"),
    pytest.param(".lock", "/dev/null", "a symbolic link", id="lock-dev-null"),
]


def make_hostile(stick: Path, name: str, how: str) -> None:
    if how == "fifo":
        replace_with_fifo(stick / name)
    else:
        replace_with_link(stick / name, how)


@pytest.mark.parametrize(("name", "how", "kind"), HOSTILE_TOP_LEVEL_FILES)
def test_merge_from_a_stick_with_a_hostile_top_level_file(
    tmp_path: Path, stick: Path, device: Path, *, name: str, how: str, kind: str
) -> None:
    make_hostile(stick, name, how)
    around = snapshot(tmp_path)
    result = forklift("--cache-dir", str(device), "cache", "merge", str(stick), home=tmp_path)
    assert_one_error(result, f"{stick / name}", f"is {kind}, not a regular file")
    assert snapshot(tmp_path) == around


@pytest.mark.parametrize(("name", "how", "kind"), HOSTILE_TOP_LEVEL_FILES)
@pytest.mark.parametrize("command", [["cache", "ls-img"], ["load-img", "--all-cached"]])
def test_reading_a_stick_with_a_hostile_top_level_file(
    tmp_path: Path, stick: Path, *, name: str, how: str, kind: str, command: list[str]
) -> None:
    make_hostile(stick, name, how)
    around = snapshot(tmp_path)
    result = forklift("--cache-dir", str(stick), *command, home=tmp_path)
    if name == "oci-layout":
        # Readers read index.json and blobs only: the layout file is not opened. load-img
        # goes on to Docker, which is not there.
        if command[0] == "cache":
            assert (result.code, result.error_lines()) == (0, []), result.err
        else:
            assert_one_error(result, "couldn't reach Docker")
    else:
        assert_one_error(result, f"{stick / name}", f"is {kind}, not a regular file")
    assert snapshot(tmp_path) == around


@pytest.mark.parametrize(("name", "how", "kind"), HOSTILE_TOP_LEVEL_FILES[:5])
def test_verify_reports_a_hostile_top_level_file(
    tmp_path: Path, stick: Path, name: str, how: str, kind: str
) -> None:
    make_hostile(stick, name, how)
    result = forklift("--cache-dir", str(stick), "cache", "verify", home=tmp_path)
    assert "Traceback" not in result.err, result.err
    assert result.code == 1, result.err
    assert f"couldn't read {stick / name}: it is {kind}, not a regular file" in result.out


def test_an_oversized_index_is_refused_before_it_is_read(tmp_path: Path, stick: Path) -> None:
    """126 MB of index.json took 573 MB to parse; the cap is 16 MiB."""
    index = stick / "index.json"
    document = json.loads(index.read_bytes())
    padding = {"schemaVersion": 2, "mediaType": MEDIA_OCI_MANIFEST, "size": 1}
    document["manifests"] += [
        {**padding, "digest": f"sha256:{n:064x}"} for n in range((17 << 20) // 100)
    ]
    index.write_text(json.dumps(document))
    assert index.stat().st_size > 16 << 20
    for argv in (["cache", "ls-img"], ["cache", "verify"]):
        result = forklift("--cache-dir", str(stick), *argv, home=tmp_path)
        if argv[1] == "verify":
            assert result.code == 1, result.err
            assert "index.json: it is larger than 16 MiB" in result.out
            assert "Traceback" not in result.err
        else:
            assert_one_error(result, f"{index}: it is larger than 16 MiB")


def test_an_index_at_the_cap_is_read(tmp_path: Path, stick: Path) -> None:
    """The cap refuses only what is larger: padding up to it still lists the image."""
    index = stick / "index.json"
    data = index.read_bytes().rstrip()
    index.write_bytes(data + b" " * ((16 << 20) - len(data)))
    result = forklift("--cache-dir", str(stick), "cache", "ls-img", home=tmp_path)
    assert (result.code, result.error_lines()) == (0, []), result.err
    assert "docker.io/library/good:1" in result.out


# --- item 13: blobs that are links, pipes or devices are never opened ----------------------


def test_a_layer_linked_to_a_secret_is_not_read_and_nothing_of_it_is_said(
    tmp_path: Path, device: Path
) -> None:
    stick = tmp_path / "stick" / "images"
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$6$secret-hash:19000:0:99999:7:::\n")
    claimed = b"what the manifest claims"
    image = write_image(stick, "docker.io/library/evil:1", claimed)
    good = write_image(stick, "docker.io/library/good:1", b"good layer")
    layer = blob_path(stick, image.layer)
    layer.unlink()
    layer.symlink_to(secret)
    around = snapshot(tmp_path)
    os.utime(secret, (0, 0))  # relatime updates an access time older than the change time
    result = forklift(
        "--cache-dir", str(device), "cache", "merge", str(stick), "--json", home=tmp_path
    )
    assert secret.stat().st_atime == 0  # the secret was not even opened
    assert "Traceback" not in result.err, result.err
    assert result.code == 3, result.err
    line = assert_one_error(result, image.layer, "is a symbolic link, not a regular file", code=3)
    # Neither the secret's hash nor its size is told.
    assert sha256(secret.read_bytes()) not in result.err + result.out
    # The size as a word of its own, once the test's own paths are out of the line
    # (pytest's numbered directories hold digits of any size).
    told = line.replace(str(tmp_path), "<tmp>")
    assert not re.search(rf"\b{len(secret.read_bytes())}\b", told), told
    report = json.loads(result.out)
    statuses = {outcome["name"]: outcome["status"] for outcome in report["images"]}
    assert statuses == {image.canonical: "failed", good.canonical: "copied"}
    assert not blob_path(device, image.layer).exists()
    assert blob_path(device, good.layer).read_bytes() == b"good layer"
    assert outside_device(snapshot(tmp_path)) == outside_device(around)


def outside_device(found: dict[str, str]) -> dict[str, str]:
    """What merge must not change: everything but the device's cache."""
    return {name: value for name, value in found.items() if not name.startswith("device")}


@pytest.mark.parametrize("how", ["fifo", "/dev/zero"])
def test_a_manifest_blob_that_is_a_pipe_or_a_device_link_fails_its_image_only(
    tmp_path: Path, stick: Path, device: Path, how: str
) -> None:
    image = write_image(stick, "docker.io/library/evil:1", b"evil layer")
    path = blob_path(stick, image.manifest)
    if how == "fifo":
        replace_with_fifo(path)
    else:
        replace_with_link(path, how)
    result = forklift("--cache-dir", str(device), "cache", "merge", str(stick), home=tmp_path)
    kind = "a named pipe (FIFO)" if how == "fifo" else "a symbolic link"
    assert_one_error(result, image.canonical, f"is {kind}, not a regular file", code=3)
    result = forklift("--cache-dir", str(stick), "cache", "verify", home=tmp_path)
    assert result.code == 1, result.err
    assert f"blob {image.manifest} (manifest of {image.canonical}) is {kind}" in result.out
    assert "Traceback" not in result.err


# --- item 6: links inside the layout lead nothing out of it -------------------------------


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A directory outside every cache, with a file named like a blob (the device's cache,
    say), which no command may write to or delete from."""
    directory = tmp_path / "elsewhere"
    directory.mkdir()
    (directory / ("ab" * 32)).write_bytes(b"a blob of the device's own cache")
    (directory / "marker").write_text("outside\n")
    return directory


@pytest.mark.parametrize("linked", ["blobs", "blobs/sha256"])
def test_copy_to_a_stick_whose_blobs_directory_is_a_link(
    tmp_path: Path, device: Path, elsewhere: Path, linked: str
) -> None:
    stick = tmp_path / "stick" / "images"
    write_image(stick, "docker.io/library/good:1", b"good layer")
    moved = tmp_path / "stick" / "moved"
    (stick / linked).rename(moved)
    (stick / linked).symlink_to(elsewhere if linked == "blobs/sha256" else tmp_path / "stick")
    around = snapshot(tmp_path)
    result = forklift(
        "--cache-dir", str(device), "cache", "copy", "--to", str(stick), home=tmp_path
    )
    assert_one_error(result, f"{stick}", f"{linked} is a symbolic link, not a directory")
    assert outside_device(snapshot(tmp_path)) == outside_device(around)


@pytest.mark.parametrize(
    "argv",
    [
        ["cache", "del-img", "docker.io/library/good:1"],
        ["cache", "verify", "--repair"],
        ["cache", "ls-img"],
    ],
)
def test_commands_on_a_cache_whose_blobs_directory_is_a_link(
    tmp_path: Path, elsewhere: Path, argv: list[str]
) -> None:
    stick = tmp_path / "stick" / "images"
    write_image(stick, "docker.io/library/good:1", b"good layer")
    for blob in blob_path(stick, sha256(b"good layer")).parent.iterdir():
        blob.rename(elsewhere / blob.name)
    blobs = stick / "blobs" / "sha256"
    blobs.rmdir()
    blobs.symlink_to(elsewhere)
    around = snapshot(tmp_path)
    result = forklift("--cache-dir", str(stick), *argv, home=tmp_path)
    assert_one_error(result, f"{stick}", "blobs/sha256 is a symbolic link, not a directory")
    assert snapshot(tmp_path) == around


def test_merge_from_a_stick_whose_blobs_directory_is_a_link(
    tmp_path: Path, device: Path, elsewhere: Path
) -> None:
    stick = tmp_path / "stick" / "images"
    image = write_image(stick, "docker.io/library/good:1", b"good layer")
    for blob in blob_path(stick, image.layer).parent.iterdir():
        blob.rename(elsewhere / blob.name)
    blobs = stick / "blobs" / "sha256"
    blobs.rmdir()
    blobs.symlink_to(elsewhere)
    around = snapshot(tmp_path)
    result = forklift("--cache-dir", str(device), "cache", "merge", str(stick), home=tmp_path)
    assert_one_error(result, f"{stick}", "blobs/sha256 is a symbolic link, not a directory")
    assert snapshot(tmp_path) == around


def test_a_blob_link_in_the_destination_is_replaced_not_written_through(
    tmp_path: Path, device: Path, elsewhere: Path
) -> None:
    """A stick's blob that links out of it (with the right size) is not taken as the blob:
    the copy writes the blob itself in its place, and the link's target is untouched."""
    stick = tmp_path / "stick"
    own_layer = blob_path(device, sha256(b"own layer"))
    outside = elsewhere / "same-size"
    outside.write_bytes(b"X" * own_layer.stat().st_size)
    with ImageCache(stick).writing():
        pass
    blob_path(stick, sha256(b"own layer")).symlink_to(outside)
    around = snapshot(elsewhere)
    result = forklift(
        "--cache-dir", str(device), "cache", "copy", "--to", str(stick), home=tmp_path
    )
    assert (result.code, result.error_lines()) == (0, []), result.err
    copied = blob_path(stick, sha256(b"own layer"))
    assert not copied.is_symlink()
    assert copied.read_bytes() == b"own layer"
    assert snapshot(elsewhere) == around


def test_gc_and_the_sweep_remove_links_never_their_targets(tmp_path: Path, elsewhere: Path) -> None:
    cache_dir = tmp_path / "cache"
    image = write_image(cache_dir, "docker.io/library/good:1", b"good layer")
    blobs = blob_path(cache_dir, image.layer).parent
    (blobs / ("cd" * 32)).symlink_to(elsewhere / ("ab" * 32))  # an unreferenced "blob"
    (blobs / ".tmp-0123").symlink_to(elsewhere / "marker")  # a "leftover temporary"
    (cache_dir / "index.json.tmp-0123").symlink_to(elsewhere / "marker")
    around = snapshot(elsewhere)
    result = forklift(
        "--cache-dir", str(cache_dir), "cache", "del-img", image.canonical, home=tmp_path
    )
    assert (result.code, result.error_lines()) == (0, []), result.err
    assert snapshot(elsewhere) == around
    assert not (blobs / ".tmp-0123").is_symlink()
    assert not (cache_dir / "index.json.tmp-0123").is_symlink()
    assert sorted(p.name for p in blobs.iterdir()) == ["cd" * 32]  # not a blob: left alone


def test_the_cache_directory_itself_may_be_a_link(tmp_path: Path) -> None:
    real = tmp_path / "data" / "images"
    image = write_image(real, "docker.io/library/good:1", b"good layer")
    link = tmp_path / "images"
    link.symlink_to(real)
    result = forklift("--cache-dir", str(link), "cache", "ls-img", home=tmp_path)
    assert (result.code, result.error_lines()) == (0, []), result.err
    assert image.canonical in result.out
    result = forklift("--cache-dir", str(link), "cache", "del-img", image.canonical, home=tmp_path)
    assert (result.code, result.error_lines()) == (0, []), result.err
    assert list(blob_path(real, image.layer).parent.iterdir()) == []


# --- item 7: deeply nested JSON fails its image alone, with one line ----------------------


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def write_deep_image(cache_dir: Path, name: str, depth: int) -> Image:
    """A correctly digested manifest with a field nested ``depth`` levels (plus its own)."""
    image = write_image(cache_dir, name, f"layer of {name}".encode())
    manifest = json.loads(blob_path(cache_dir, image.manifest).read_bytes())
    deep = json.dumps(manifest).encode()[:-1] + b', "x": ' + nested(depth) + b"}"
    blob_path(cache_dir, sha256(deep)).write_bytes(deep)
    index = json.loads((cache_dir / "index.json").read_bytes())
    for entry in index["manifests"]:
        if entry["annotations"]["io.containerd.image.name"] == name:
            entry.update(digest=sha256(deep), size=len(deep))
    (cache_dir / "index.json").write_text(json.dumps(index))
    return Image(name, sha256(deep), image.config, image.layer)


DEPTHS = [pytest.param(100, id="depth-100"), pytest.param(100_000, id="depth-100000")]


@pytest.mark.parametrize("depth", DEPTHS)
def test_merge_of_a_deeply_nested_manifest_fails_that_image_only(
    tmp_path: Path, stick: Path, device: Path, depth: int
) -> None:
    deep = write_deep_image(stick, "docker.io/library/deep:1", depth)
    result = forklift(
        "--cache-dir", str(device), "cache", "merge", str(stick), "--json", home=tmp_path
    )
    assert_one_error(result, deep.canonical, deep.manifest, "deeper than 64 levels", code=3)
    statuses = {o["name"]: o["status"] for o in json.loads(result.out)["images"]}
    assert statuses == {deep.canonical: "failed", "docker.io/library/good:1": "copied"}
    assert not blob_path(device, deep.manifest).exists()


@pytest.mark.parametrize("depth", DEPTHS)
def test_ls_img_and_verify_of_a_deeply_nested_manifest(
    tmp_path: Path, stick: Path, depth: int
) -> None:
    deep = write_deep_image(stick, "docker.io/library/deep:1", depth)
    result = forklift("--cache-dir", str(stick), "cache", "ls-img", home=tmp_path)
    assert_one_error(result, deep.canonical, "deeper than 64 levels")
    result = forklift("--cache-dir", str(stick), "cache", "verify", home=tmp_path)
    assert (result.code, result.error_lines()) == (1, []), result.err
    assert "Traceback" not in result.err
    assert result.out.splitlines() == [
        f"blob {deep.manifest} (manifest of {deep.canonical}) isn't valid JSON"
        " (it nests arrays and objects deeper than 64 levels)"
    ]


@pytest.mark.parametrize("depth", DEPTHS)
def test_a_deeply_nested_index_json(tmp_path: Path, stick: Path, depth: int) -> None:
    index = stick / "index.json"
    document = json.loads(index.read_bytes())
    index.write_bytes(json.dumps(document).encode()[:-1] + b', "x": ' + nested(depth) + b"}")
    result = forklift("--cache-dir", str(stick), "cache", "ls-img", home=tmp_path)
    assert_one_error(result, f"{index}", "deeper than 64 levels")


def test_json_nested_up_to_the_cap_is_read() -> None:
    assert load_json(nested(64)) == json.loads(nested(64))
    assert load_json(b'{"a": "' + b"[" * 1000 + b'"}') == {"a": "[" * 1000}  # text, not nesting
    with pytest.raises(JsonTooDeepError):
        load_json(nested(65))
    with pytest.raises(JsonTooDeepError):
        load_json(b'{"a": ' * 70_000 + b"1" + b"}" * 70_000)


def test_a_registry_manifest_nested_too_deeply_is_one_registry_error() -> None:
    data = nested(100_000)
    manifest = Manifest(data, MEDIA_OCI_MANIFEST, sha256(data))
    with pytest.raises(RegistryError, match="deeper than 64 levels"):
        manifest.document()
    assert manifest_media_type("application/json", data) == "application/json"


# --- item 8: digests of other algorithms are refused before anything is fetched ----------


SHA512_CHILD = {
    "mediaType": MEDIA_OCI_MANIFEST,
    "digest": "sha512:" + hashlib.sha512(b"a child").hexdigest(),
    "size": 7,
    "platform": {"architecture": "amd64", "os": "linux"},
}


class _Registry(http.server.BaseHTTPRequestHandler):
    """Serves one image index, whose only child has a sha512 digest; records every request."""

    index = json.dumps(
        {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": [SHA512_CHILD]}
    ).encode()
    requests: ClassVar[list[str]] = []

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def _answer(self, *, with_body: bool) -> None:
        self.requests.append(f"{self.command} {self.path}")
        if self.path == "/v2/":
            body, media_type = b"{}", "application/json"
        elif self.path == "/v2/library/app/manifests/1":
            body, media_type = self.index, MEDIA_OCI_INDEX
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", media_type)
        self.send_header("Docker-Content-Digest", sha256(body))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_cache_img_refuses_a_sha512_child_before_fetching_it(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ref = f"127.0.0.1:{server.server_address[1]}/library/app:1"
        result = forklift(
            "--cache-dir", str(tmp_path / "cache"), "--platform", "linux/amd64",
            "cache-img", "--from", "registry", ref, home=tmp_path,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()
    assert_one_error(result, ref, "uses sha512, which forklift-boot does not support", code=3)
    assert not any("sha512" in request for request in _Registry.requests), _Registry.requests
    assert any(request.endswith("/manifests/1") for request in _Registry.requests)


def test_a_cached_index_with_a_sha512_child_fails_that_image_only(
    tmp_path: Path, stick: Path, device: Path
) -> None:
    index = json.dumps(
        {"schemaVersion": 2, "mediaType": MEDIA_OCI_INDEX, "manifests": [SHA512_CHILD]}
    ).encode()
    name = "docker.io/library/sha512:1"
    with ImageCache(stick).writing() as writer:
        descriptor = writer.write_blob(index, MEDIA_OCI_INDEX)
        writer_index = json.loads((stick / "index.json").read_bytes())
    entry = CachedImage(name, (name,), descriptor).to_entry()
    writer_index["manifests"].append(entry)
    (stick / "index.json").write_text(json.dumps(writer_index))
    result = forklift(
        "--cache-dir", str(device), "cache", "merge", str(stick), "--json", home=tmp_path
    )
    assert_one_error(result, name, "uses sha512, which forklift-boot does not support", code=3)
    statuses = {o["name"]: o["status"] for o in json.loads(result.out)["images"]}
    assert statuses == {name: "failed", "docker.io/library/good:1": "copied"}
    result = forklift("--cache-dir", str(stick), "cache", "verify", home=tmp_path)
    assert result.code == 1, result.err
    assert "Traceback" not in result.err
    assert "uses sha512, which forklift-boot does not support" in result.out


# --- item 9: a writer waiting on the network holds the cache lock shared -----------------

# A cache-img in another process, slowed down at two points: it writes a layer (the test
# looks at its temporary), commits it, and only then records its image, each step when the
# test creates the file it waits for.
SLOW_WRITER = """
import json, sys, time
from pathlib import Path
from forklift_boot.cache import (
    MEDIA_OCI_CONFIG, MEDIA_OCI_LAYER, MEDIA_OCI_MANIFEST, CachedImage, ImageCache,
    build_oci_manifest,
)
cache_dir, signals = Path(sys.argv[1]), Path(sys.argv[2])

def step(name):
    (signals / name).touch()
    while not (signals / ("go-" + name)).exists():
        time.sleep(0.02)

with ImageCache(cache_dir).writing(exclusive=False) as writer:
    with writer.blob_writer() as blob:
        blob.write(b"slow layer")
        step("in-flight")
        layer = blob.commit().to_descriptor(MEDIA_OCI_LAYER)
    step("stored")
    config = writer.write_blob(b'{"architecture": "amd64", "os": "linux"}', MEDIA_OCI_CONFIG)
    manifest = writer.write_blob(build_oci_manifest(config, [layer]), MEDIA_OCI_MANIFEST)
    name = "docker.io/library/slow:1"
    writer.put_images([CachedImage(name, (name,), manifest)])
print("recorded", flush=True)
"""


def wait_for(path: Path, process: subprocess.Popen[str]) -> None:
    for _ in range(1500):  # 30 s
        if path.exists():
            return
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{path.name} never came")


def test_a_writer_shares_the_cache_and_gc_waits_for_it(tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    good = write_image(cache_dir, "docker.io/library/good:1", b"good layer")
    signals = tmp_path / "signals"
    signals.mkdir()
    env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR)}
    slow = subprocess.Popen(
        [sys.executable, "-c", SLOW_WRITER, str(cache_dir), str(signals)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(signals / "in-flight", slow)
        blobs = blob_path(cache_dir, good.layer).parent
        (in_flight,) = [p for p in blobs.iterdir() if p.name.startswith(".tmp-")]

        # Readers go on (the lock timeout is 60 s; they finish long before).
        started = time.monotonic()
        listed = forklift("--cache-dir", str(cache_dir), "cache", "ls-img", home=tmp_path)
        assert (listed.code, listed.error_lines()) == (0, []), listed.err
        assert good.canonical in listed.out
        loaded = forklift("--cache-dir", str(cache_dir), "load-img", "--all-cached", home=tmp_path)
        assert_one_error(loaded, "couldn't reach Docker")  # past the cache, at Docker
        assert time.monotonic() - started < 30

        # A second writer goes on too, records its image, and sweeps nothing of the first's.
        second = write_image(
            cache_dir, "docker.io/library/second:1", b"second layer", exclusive=False
        )
        assert in_flight.exists()

        # What deletes waits for the writer: it can't have the cache alone.
        with (
            pytest.raises(CacheError, match="another forklift-boot is using it"),
            ImageCache(cache_dir).writing(timeout=0.5),
        ):
            pass
        (signals / "go-in-flight").touch()
        wait_for(signals / "stored", slow)
        assert not in_flight.exists()  # renamed to its digest
        stored = blob_path(cache_dir, sha256(b"slow layer"))
        assert stored.read_bytes() == b"slow layer"

        # gc (del-img) starts while the stored layer is in no entry yet: it waits for the
        # writer, which records it, so the layer is kept.
        delete = subprocess.Popen(
            [sys.executable, "-m", "forklift_boot", "--cache-dir", str(cache_dir),
             "cache", "del-img", good.canonical],
            env={**env, "HOME": str(tmp_path)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        time.sleep(1.0)
        assert delete.poll() is None  # waiting for the lock
        assert stored.exists()
        (signals / "go-stored").touch()
        assert slow.communicate(timeout=30)[0].strip() == "recorded"
        out, err = delete.communicate(timeout=60)
        assert (delete.returncode, out) == (0, f"deleted {good.canonical}\n"), err
    finally:
        for name in ("go-in-flight", "go-stored"):
            (signals / name).touch()
        slow.wait(timeout=30)
    assert stored.read_bytes() == b"slow layer"
    assert not blob_path(cache_dir, good.layer).exists()
    with ImageCache(cache_dir).reading() as reader:
        names = [image.canonical for image in reader.images()]
        assert names == ["docker.io/library/second:1", "docker.io/library/slow:1"]
        assert reader.verify() == []
    assert blob_path(cache_dir, second.layer).exists()


def test_a_sharing_writer_may_not_collect_garbage(tmp_path: Path) -> None:
    with ImageCache(tmp_path).writing(exclusive=False) as writer:
        with pytest.raises(CacheError, match="needs the cache alone"):
            writer.collect_garbage()
        with pytest.raises(CacheError, match="needs the cache alone"):
            writer.repair()


def test_a_sharing_writer_alone_sweeps_leftovers(tmp_path: Path) -> None:
    write_image(tmp_path, "docker.io/library/good:1", b"good layer")
    leftover = tmp_path / "blobs" / "sha256" / ".tmp-0123456789abcdef"
    leftover.write_bytes(b"from a crash")
    with ImageCache(tmp_path).writing(exclusive=False):
        pass
    assert not leftover.exists()


def test_a_sharing_writer_keeps_blobs_another_writer_recorded(tmp_path: Path) -> None:
    """remove_blobs of a blob this writer stored, which another writer has recorded since
    (its commit found this one's copy), keeps it."""
    with ImageCache(tmp_path).writing(exclusive=False) as first:
        layer = first.write_blob(b"shared layer", MEDIA_OCI_LAYER)
        other = write_image(tmp_path, "docker.io/library/other:1", b"shared layer", exclusive=False)
        assert other.layer == layer.digest
        first.remove_blobs([layer.digest])
        assert first.has_blob(layer.digest)


@pytest.mark.parametrize("how", ["fifo", "/dev/zero"])
def test_serve_of_a_stick_whose_index_is_no_regular_file_answers_at_once(
    tmp_path: Path, stick: Path, how: str
) -> None:
    """cache serve hung on the first request; now each one is answered with the reason."""
    make_hostile(stick, "index.json", how)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONPATH": str(PROJECT_DIR)}
    serve = subprocess.Popen(
        [sys.executable, "-m", "forklift_boot", "--cache-dir", str(stick),
         "cache", "serve", "--listen", "127.0.0.1:0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert serve.stdout is not None
        address = serve.stdout.readline().strip()
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(f"http://{address}/v2/library/good/manifests/1", timeout=30)
        body = json.loads(answer.value.read())
    finally:
        serve.terminate()
        _, err = serve.communicate(timeout=30)
    assert answer.value.code == 500
    kind = "a named pipe (FIFO)" if how == "fifo" else "a symbolic link"
    message = f"couldn't read {stick / 'index.json'}: it is {kind}, not a regular file"
    assert message in body["errors"][0]["message"]
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if message in line] == [
        f"Warning: couldn't answer GET /v2/library/good/manifests/1: {message};"
        " remove it or use another image cache"
    ]
