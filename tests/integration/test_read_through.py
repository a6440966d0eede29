"""load-img --fetch (issue 13, part 2): the cache as a read-through cache of the registries.

Images are crafted byte by byte (tests/testbed/oci.py) and pushed to the loopback registry;
every request goes through the counting fault proxy (tests/testbed/fault_proxy.py), so
"fetched", "asked nothing" and "a digest never touches the network" are counted outside the
product. Loads go into private dockerds (Debian's 20.10, the classic store). "Down" is the
registry stopped behind the proxy; "silent" a proxy that holds every manifest request longer
than the lookup waits; "closed" the proxy gone (nothing listens on its port). The offline
bound is measured against raw loopback listeners that complete the TCP handshake and never
answer, and closed ports; the worst case is printed for docs/benchmarks.md.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forklift_boot import cli
from tests.testbed import images, oci
from tests.testbed.dockerd import DaemonFactory, DockerDaemon
from tests.testbed.fault_proxy import Fault, FaultProxy
from tests.testbed.oci import CraftedImage
from tests.testbed.registry import Registry, free_port

pytestmark = [pytest.mark.docker, pytest.mark.registry]

Capture = pytest.CaptureFixture[str]

REPO = "fbread/app"
# The lookup's bounds (forklift_boot/stores/registry/lookup.py, cli/load_img.py): 5 s to the
# first byte, 10 s for a whole run. The tests' limits are hang guards well above those.
FIRST_BYTE = 5.0
RUN_BOUND = 10.0
HANG_GUARD = 10.0


def crafted(name: str) -> CraftedImage:
    return oci.craft_image([{"app/version": f"{name}\n".encode()}])


@pytest.fixture
def proxy(registry: Registry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as fault_proxy:
        yield fault_proxy


def run(capsys: Capture, *argv: str, env: dict[str, str]) -> tuple[int, str, str]:
    code = cli.main(list(argv), env={"HOME": "/nonexistent", **env})
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def load(
    capsys: Capture, daemon: DockerDaemon, cache: Path, *argv: str
) -> tuple[int, dict[str, Any], str]:
    """load-img --json into ``daemon``; the report's images by name."""
    code, out, err = run(
        capsys,
        "load-img", "--json", "--record-digests", "--cache-dir", str(cache), *argv,
        env={"DOCKER_HOST": daemon.host},
    )  # fmt: skip
    return code, json.loads(out) if out else {}, err


def by_name(report: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {image["name"]: (image["status"], image["source"]) for image in report["images"]}


def entries(cache: Path) -> dict[str, dict[str, Any]]:
    index = json.loads((cache / "index.json").read_text())
    return {e["annotations"]["io.containerd.image.name"]: e for e in index["manifests"]}


def warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("Warning:")]


def test_fetch_missing_fetches_into_the_cache_then_loads(
    capsys: Capture, tmp_path: Path, registry: Registry, proxy: FaultProxy,
    fresh_dockerd: DaemonFactory,
) -> None:  # fmt: skip
    image = crafted("missing")
    oci.push_image(registry.url, REPO, "missing", image)
    ref = f"{proxy.host}/{REPO}:missing"
    cache = tmp_path / "cache"
    daemon = fresh_dockerd(mirror=False)

    # Today's behaviour without --fetch: an error, the registry never asked.
    code, _, err = load(capsys, daemon, cache, ref)
    assert code == 3, err
    assert "not in the cache; cache it first" in err
    assert proxy.served == []

    code, report, err = load(capsys, daemon, cache, "--fetch", "missing", ref)
    assert code == 0, err
    assert by_name(report) == {ref: ("loaded", "registry")}
    assert "(1 loaded, 0 tagged, 0 already there; 1 from registries, 0 from the cache" in err
    client = daemon.client()
    assert images.inspect(client, ref)["Id"] == image.image_id
    client.close()
    assert entries(cache)[ref]["annotations"]["run.forklift.boot.image-id"] == image.image_id
    assert {s.path.rpartition("/")[2] for s in proxy.blob_gets()} == {
        blob.digest for blob in image.blobs
    }

    # Docker has it now: a second run asks nobody.
    proxy.reset()
    code, report, err = load(capsys, daemon, cache, "--fetch", "missing", ref)
    assert code == 0, err
    assert by_name(report) == {ref: ("present", "docker")}
    assert proxy.served == []


def test_fetch_newer_follows_a_moved_tag_and_keeps_the_old_image_by_digest(
    capsys: Capture, tmp_path: Path, registry: Registry, proxy: FaultProxy,
    fresh_dockerd: DaemonFactory,
) -> None:  # fmt: skip
    old, new = crafted("moving-1"), crafted("moving-2")
    oci.push_image(registry.url, REPO, "moving", old)
    ref = f"{proxy.host}/{REPO}:moving"
    cache = tmp_path / "cache"
    daemon = fresh_dockerd(mirror=False)
    code, report, err = load(capsys, daemon, cache, "--fetch", "newer", ref)
    assert code == 0, err
    assert by_name(report) == {ref: ("loaded", "registry")}

    # Unchanged: one HEAD, nothing fetched.
    proxy.reset()
    code, report, err = load(capsys, daemon, cache, "--fetch", "newer", ref)
    assert code == 0, err
    assert by_name(report) == {ref: ("present", "docker")}
    assert [(s.method, s.path) for s in proxy.served] == [("HEAD", f"/v2/{REPO}/manifests/moving")]

    # The tag moves at the registry: the new image comes, the old stays cached by digest.
    oci.push_image(registry.url, REPO, "moving", new)
    proxy.reset()
    code, report, err = load(capsys, daemon, cache, "--fetch", "newer", ref)
    assert code == 0, err
    assert by_name(report) == {ref: ("loaded", "registry")}
    assert {s.path.rpartition("/")[2] for s in proxy.blob_gets()} == {
        blob.digest for blob in new.blobs
    }
    client = daemon.client()
    assert images.inspect(client, ref)["Id"] == new.image_id
    client.close()
    kept = f"{proxy.host}/{REPO}@{old.manifest.digest}"
    found = entries(cache)
    assert set(found) == {ref, kept}
    assert found[ref]["digest"] == new.manifest.digest
    assert found[kept]["digest"] == old.manifest.digest
    code, out, err = run(
        capsys, "cache", "verify", "--cache-dir", str(cache), env={"DOCKER_HOST": daemon.host}
    )
    assert (code, out) == (0, ""), err

    # A rollback bundle pins the old image: it loads from the cache, and a digest never
    # touches the network (not a single request at the proxy).
    # Another device, whose Docker has neither image.
    pinned = (kept, f"{ref}@{old.manifest.digest}")
    proxy.reset()
    device = fresh_dockerd(mirror=False)
    code, report, err = load(capsys, device, cache, "--fetch", "newer", *pinned)
    assert code == 0, err
    assert proxy.served == []
    assert by_name(report) == dict.fromkeys(pinned, ("loaded", "cache"))
    client = device.client()  # dockerd was restarted to record the digest references
    for pinned_ref in pinned:
        assert images.inspect(client, pinned_ref)["Id"] == old.image_id, pinned_ref
    client.close()


@pytest.mark.parametrize("failure", ["stopped", "silent", "closed"])
def test_registry_unreachable_the_cache_answers_with_one_warning(
    capsys: Capture, tmp_path: Path, registry: Registry, proxy: FaultProxy,
    fresh_dockerd: DaemonFactory, *, failure: str,
) -> None:  # fmt: skip
    pushed = {tag: crafted(f"{failure}-{tag}") for tag in ("a", "b")}
    refs = []
    for tag, image in pushed.items():
        oci.push_image(registry.url, REPO, f"{failure}-{tag}", image)
        refs.append(f"{proxy.host}/{REPO}:{failure}-{tag}")
    cache = tmp_path / "cache"
    code, _, err = run(
        capsys, "cache-img", "--from", "registry", "--cache-dir", str(cache), *refs,
        env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"},
    )  # fmt: skip
    assert code == 0, err
    # A new tag the registry moved to in the meantime: not reachable, so not seen.
    moved = crafted(f"{failure}-a-moved")
    oci.push_image(registry.url, REPO, f"{failure}-a", moved)
    daemon = fresh_dockerd(mirror=False)
    proxy.reset()

    if failure == "silent":
        proxy.add(Fault("HEAD", "/manifests/", times=100, delay=FIRST_BYTE + 3))
    elif failure == "closed":
        proxy.close()
    started = time.monotonic()
    if failure == "stopped":
        with registry.offline():
            code, report, err = load(capsys, daemon, cache, "--fetch", "newer", *refs)
    else:
        code, report, err = load(capsys, daemon, cache, "--fetch", "newer", *refs)
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\nload-img --fetch newer, registry {failure}: {elapsed:.2f} s")

    assert code == 0, err
    assert by_name(report) == dict.fromkeys(refs, ("loaded", "cache"))
    client = daemon.client()
    for tag, image in pushed.items():
        assert images.inspect(client, f"{proxy.host}/{REPO}:{failure}-{tag}")["Id"] == (
            image.image_id
        )
    client.close()
    assert len(warnings(err)) == 1, err
    assert "registries can't be reached" in warnings(err)[0]
    assert f"the cache answers for 2 images: {refs[0]}, {refs[1]}" in warnings(err)[0]
    if failure == "silent":
        # The first lookup waits out the first byte; the same registry is not asked again
        # (asking it twice would take two first-byte timeouts).
        assert elapsed < 2 * FIRST_BYTE - 1


@pytest.fixture
def silent_ports() -> Iterator[list[int]]:
    """Loopback ports whose kernel completes the TCP handshake (the backlog) and that never
    answer: a registry host that accepts and is silent."""
    sockets = []
    for _ in range(4):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        sockets.append(sock)
    yield [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()


def test_the_network_wait_is_bounded_for_the_whole_run(
    capsys: Capture, tmp_path: Path, dockerd: DockerDaemon, silent_ports: list[int]
) -> None:
    """Images on four silent registries and two closed ports: the run gives up on the
    registries after the per-run bound, not after a timeout per registry."""
    closed = [free_port(), free_port()]
    refs = [f"127.0.0.1:{port}/{REPO}:silent" for port in silent_ports]
    refs += [f"127.0.0.1:{port}/{REPO}:closed" for port in closed]
    cache = tmp_path / "cache"
    measured = {}
    for name, chosen in (
        ("closed ports", refs[4:]),
        ("one silent registry", refs[:1]),
        ("four silent registries and two closed ports", refs),
    ):
        started = time.monotonic()
        code, report, err = load(capsys, dockerd, cache, "--fetch", "missing", *chosen)
        measured[name] = time.monotonic() - started
        assert code == 3, err
        assert {status for status, _ in by_name(report).values()} == {"missing"}
        assert len(warnings(err)) == 1, err
    with capsys.disabled():
        for name, seconds in measured.items():
            print(f"\nload-img --fetch missing, {name}: {seconds:.2f} s")
    assert measured["closed ports"] < HANG_GUARD
    assert measured["one silent registry"] < FIRST_BYTE + HANG_GUARD
    assert measured["four silent registries and two closed ports"] > RUN_BOUND - 1
    # Without it: four first-byte timeouts, 20 s.
    assert measured["four silent registries and two closed ports"] < RUN_BOUND + FIRST_BYTE
