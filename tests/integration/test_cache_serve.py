"""`cache serve` against real clients: a cache filled from the loopback registry (and one image from
Docker), served by `python -m forklift_boot cache serve` as its own process, then pulled by a clean
private dockerd (directly and as its registry mirror), by skopeo (compared byte for byte with the
cache) and by containerd's ctr (directly and through a hosts.toml mirror). Expected image IDs and
digests are the registry's and the test images' own, never the server's.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.conftest import require_component
from tests.testbed import images, oci
from tests.testbed.containerd import Containerd
from tests.testbed.dockerd import DaemonFactory, DockerDaemon
from tests.testbed.faults import command, product_env, run
from tests.testbed.images import PublishedImage
from tests.testbed.oci import Blob, CraftedImage
from tests.testbed.registry import Registry

pytestmark = [pytest.mark.docker, pytest.mark.registry]

MULTI = "fbserve/multi"  # Docker Hub user namespace, through the registry as a mirror
GHCR_ALPHA = "ghcr.io/fbserve/alpha:1.0"  # cached from Docker: a manifest forklift-boot wrote


@dataclass(frozen=True)
class Multi:
    index: Blob
    amd64: CraftedImage
    arm64: CraftedImage


@dataclass
class Served:
    """The cache, what went into it, and the server process in front of it."""

    cache_dir: Path
    address: str  # 127.0.0.1:PORT
    published: dict[str, PublishedImage]
    multi: Multi
    registry_host: str
    process: subprocess.Popen[str]
    stderr_path: Path

    @property
    def log(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def index_entry(self, canonical: str) -> dict[str, Any]:
        index = json.loads((self.cache_dir / "index.json").read_text())
        found: dict[str, Any] = next(
            e
            for e in index["manifests"]
            if e["annotations"]["io.containerd.image.name"] == canonical
        )
        return found

    def blob(self, digest: str) -> bytes:
        return (self.cache_dir / "blobs/sha256" / digest.removeprefix("sha256:")).read_bytes()

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.headers, response.read()
        finally:
            connection.close()


def start_server(
    cache_dir: Path, log_dir: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], str, Path]:
    """`forklift-boot -v cache serve` on a free port; its address from its first stdout line."""
    stderr_path = Path(tempfile.mkstemp(prefix="serve-", suffix=".log", dir=log_dir)[1])
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            command(
                "-v",
                "cache",
                "serve",
                "--cache-dir",
                str(cache_dir),
                "--listen",
                "127.0.0.1:0",
                *args,
            ),
            env={**product_env("unix:///nonexistent/docker.sock"), **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdout is not None
    address = process.stdout.readline().strip()
    assert address.startswith("127.0.0.1:"), stderr_path.read_text()
    return process, address, stderr_path


def stop_server(process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> int:
    process.send_signal(signum)
    try:
        return process.wait(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def push_multi(registry: Registry) -> Multi:
    """An OCI index of amd64 and arm64 images, as Docker Hub's fbserve/multi:1.0 (via the mirror)."""
    shared = {"etc/fbserve": b"shared by both platforms\n"}
    amd64 = oci.craft_image([shared, {"app/amd64": oci.pseudo_random("fbserve-amd64", 1 << 20)}])
    arm64 = oci.craft_image(
        [shared, {"app/arm64": b"arm64 only\n"}], architecture="arm64", variant="v8"
    )
    for image in (amd64, arm64):
        oci.push_image(registry.url, MULTI, image.manifest.digest, image)
    index = oci.index_of([amd64.child(), arm64.child()])
    oci.put_manifest(registry.url, MULTI, "1.0", index)
    return Multi(index, amd64, arm64)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory,
    registry: Registry,
    dockerd: DockerDaemon,
    docker_client: docker.DockerClient,
    published_images: dict[str, PublishedImage],
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("serve")
    cache_dir = root / "cache"
    multi = push_multi(registry)
    alpha, gamma, delta = (published_images[n] for n in ("alpha", "gamma", "delta"))
    mirror = ("--registry-mirror", registry.url)
    # One platform: each tag's entry is the amd64 manifest, as the registry serves it.
    result = run(
        "cache-img", "--from", "registry", "--cache-dir", str(cache_dir), *mirror,
        "--platform", "linux/amd64",
        alpha.tag_ref, alpha.digest_ref, gamma.tag_ref, delta.tag_ref,
        docker_host=dockerd.host,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # Every platform: the entry is the index, byte for byte; arm64's manifest is there too.
    result = run(
        "cache-img", "--from", "registry", "--cache-dir", str(cache_dir), *mirror,
        "--all-platforms", f"{MULTI}:1.0",
        docker_host=dockerd.host,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    # From Docker's classic store: an OCI manifest written by forklift-boot, gzip layers.
    docker_client.api.tag(alpha.tag_ref, GHCR_ALPHA.rpartition(":")[0], "1.0")
    result = run("cache-img", "--cache-dir", str(cache_dir), GHCR_ALPHA, docker_host=dockerd.host)
    assert result.returncode == 0, result.stderr
    images.remove_images(docker_client, [GHCR_ALPHA])
    process, address, stderr_path = start_server(cache_dir, root)
    yield Served(cache_dir, address, published_images, multi, registry.host, process, stderr_path)
    assert stop_server(process) == 0, stderr_path.read_text()


def pull(client: docker.DockerClient, ref: str) -> dict[str, Any]:
    """``docker pull ref``; its ``docker inspect``."""
    repository, _, reference = ref.rpartition("@") if "@" in ref else ref.rpartition(":")
    chunks = list(client.api.pull(repository, tag=reference, stream=True, decode=True))
    errors = [chunk["error"] for chunk in chunks if "error" in chunk]
    assert not errors, f"pull {ref}: {errors}"
    return images.inspect(client, ref)


# Docker


def test_docker_pulls_by_tag_and_by_digest(served: Served, fresh_dockerd: DaemonFactory) -> None:
    alpha, gamma, delta = (served.published[n] for n in ("alpha", "gamma", "delta"))
    host = served.address
    delta_path = f"{served.registry_host.replace(':', '_')}/fbtest/delta"
    expected = {
        f"{host}/library/alpha:1.0": alpha.image_id,
        f"{host}/library/alpha@{alpha.registry_digest}": alpha.image_id,
        f"{host}/alpha:1.0": alpha.image_id,  # Docker's short name for library/alpha
        f"{host}/fbtest/gamma:3.0": gamma.image_id,
        f"{host}/{delta_path}:4.0": delta.image_id,
        f"{host}/{MULTI}:1.0": served.multi.amd64.image_id,  # Docker picks amd64 from the index
        f"{host}/{GHCR_ALPHA}": alpha.image_id,  # config bytes kept: the same image ID
    }
    daemon = fresh_dockerd(mirror=False)
    client = daemon.client()
    try:
        for ref, image_id in expected.items():
            assert pull(client, ref)["Id"] == image_id, ref
        digests = images.inspect(client, f"{host}/library/alpha:1.0")["RepoDigests"]
        assert f"{host}/library/alpha@{alpha.registry_digest}" in digests
        multi = images.inspect(client, f"{host}/{MULTI}:1.0")["RepoDigests"]
        assert multi == [f"{host}/{MULTI}@{served.multi.index.digest}"]
        # The image runs: its layers arrived whole.
        output = client.containers.run(
            f"{host}/library/alpha:1.0", remove=True, network_mode="none"
        )
        assert output.startswith(b"alpha\n")
    finally:
        client.close()


def test_docker_uses_it_as_its_registry_mirror(
    served: Served, fresh_dockerd: DaemonFactory
) -> None:
    alpha, gamma = served.published["alpha"], served.published["gamma"]
    daemon = fresh_dockerd(
        mirror=False, extra_args=("--registry-mirror", f"http://{served.address}")
    )
    client = daemon.client()
    try:
        assert pull(client, "alpha:1.0")["Id"] == alpha.image_id
        assert pull(client, f"alpha@{alpha.registry_digest}")["Id"] == alpha.image_id
        assert pull(client, "fbtest/gamma:3.0")["Id"] == gamma.image_id
        assert pull(client, f"{MULTI}:1.0")["Id"] == served.multi.amd64.image_id
        assert images.inspect(client, "alpha:1.0")["RepoDigests"] == [alpha.digest_ref]
        # Nothing but the mirror could have answered: there is no network, and no other mirror.
        assert '"HEAD /v2/library/alpha/manifests/1.0" 200' in served.log
        assert '"HEAD /v2/fbtest/gamma/manifests/3.0" 200' in served.log
        # A name the cache lacks: the mirror says so, and Docker Hub can't be reached.
        with pytest.raises((docker.errors.APIError, AssertionError)):
            pull(client, "beta:2.0")
        assert '"HEAD /v2/library/beta/manifests/2.0" 404' in served.log
    finally:
        client.close()


# skopeo


def test_skopeo_copies_every_byte_as_cached(served: Served, tmp_path: Path) -> None:
    alpha = served.published["alpha"]
    delta_path = f"{served.registry_host.replace(':', '_')}/fbtest/delta"
    for name, canonical in [
        ("library/alpha:1.0", "docker.io/library/alpha:1.0"),
        (
            f"library/alpha@{alpha.registry_digest}",
            f"docker.io/library/alpha@{alpha.registry_digest}",
        ),
        (f"{delta_path}:4.0", f"{served.registry_host}/fbtest/delta:4.0"),
        (GHCR_ALPHA, GHCR_ALPHA),
    ]:
        out = tmp_path / name.replace("/", "_").replace(":", "_").replace("@", "_")
        result = subprocess.run(
            ["skopeo", "copy", "--src-tls-verify=false", f"docker://{served.address}/{name}", f"dir:{out}"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        entry = served.index_entry(canonical)
        manifest = (out / "manifest.json").read_bytes()
        assert manifest == served.blob(entry["digest"]), name  # byte for byte: same digest
        document = json.loads(manifest)
        wanted = [document["config"], *document["layers"]]
        copied = {p.name for p in out.iterdir()} - {"manifest.json", "version"}
        assert copied == {d["digest"].removeprefix("sha256:") for d in wanted}
        for descriptor in wanted:
            data = (out / descriptor["digest"].removeprefix("sha256:")).read_bytes()
            assert data == served.blob(descriptor["digest"])
            assert "sha256:" + hashlib.sha256(data).hexdigest() == descriptor["digest"]
    # The registry's own manifest for alpha:1.0, the index as the registry has it.
    assert (
        served.blob(served.index_entry("docker.io/library/alpha:1.0")["digest"])
        == oci.get_manifest(f"http://{served.registry_host}", "library/alpha", "1.0").data
    )
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{served.address}/{MULTI}:1.0"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    assert raw == served.multi.index.data
    tags = subprocess.run(
        ["skopeo", "list-tags", "--tls-verify=false", f"docker://{served.address}/library/alpha"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert json.loads(tags)["Tags"] == ["1.0"]


# containerd


@pytest.fixture
def ctr_daemon(request: pytest.FixtureRequest) -> Iterator[Containerd]:
    """A containerd of this test's own: its content store starts empty, so every blob of a pull
    really comes from the server."""
    if shutil.which("containerd") is None or shutil.which("ctr") is None:
        require_component(request.config, "needs containerd and ctr (apt-get install containerd)")
    if os.geteuid() != 0:
        require_component(request.config, "needs root to run containerd")
    with Containerd() as daemon:
        yield daemon


def ctr_image_digests(daemon: Containerd) -> dict[str, str]:
    listed = daemon.ctr("images", "ls").stdout.splitlines()[1:]
    return {line.split()[0]: line.split()[2] for line in listed}


@pytest.mark.containerd
def test_ctr_pulls_by_tag_and_by_digest(served: Served, ctr_daemon: Containerd) -> None:
    alpha = served.published["alpha"]
    host = served.address
    refs = {
        f"{host}/library/alpha:1.0": alpha.registry_digest,
        f"{host}/library/alpha@{alpha.registry_digest}": alpha.registry_digest,
        f"{host}/{MULTI}:1.0": served.multi.index.digest,
        f"{host}/{GHCR_ALPHA}": served.index_entry(GHCR_ALPHA)["digest"],
    }
    for ref in refs:
        result = ctr_daemon.ctr("images", "pull", "--plain-http", ref, check=False)
        assert result.returncode == 0, result.stderr
    assert ctr_image_digests(ctr_daemon) == refs
    # Every platform of the index: arm64's manifest is in the cache, so this works too.
    result = ctr_daemon.ctr(
        "images", "pull", "--plain-http", "--all-platforms", f"{host}/{MULTI}:1.0", check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.containerd
def test_ctr_uses_it_as_a_hosts_toml_mirror(
    served: Served, ctr_daemon: Containerd, tmp_path: Path
) -> None:
    """The upstream server of every registry is a dead port: only the mirror can answer."""
    dead = f"http://127.0.0.1:{_dead_port()}"
    hosts_dir = tmp_path / "certs.d"
    for registry in ("docker.io", "ghcr.io", served.registry_host):
        (hosts_dir / registry).mkdir(parents=True)
        (hosts_dir / registry / "hosts.toml").write_text(
            f'server = "{dead}"\n\n[host."http://{served.address}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
        )
    alpha, delta = served.published["alpha"], served.published["delta"]
    refs = {
        "docker.io/library/alpha:1.0": alpha.registry_digest,
        f"docker.io/library/alpha@{alpha.registry_digest}": alpha.registry_digest,
        GHCR_ALPHA: served.index_entry(GHCR_ALPHA)["digest"],
        f"{served.registry_host}/fbtest/delta:4.0": delta.registry_digest,
    }
    for ref in refs:
        result = ctr_daemon.ctr("images", "pull", "--hosts-dir", str(hosts_dir), ref, check=False)
        assert result.returncode == 0, result.stderr
    assert ctr_image_digests(ctr_daemon) == refs
    log = served.log
    assert '"HEAD /v2/library/alpha/manifests/1.0?ns=docker.io" 200' in log
    assert '"HEAD /v2/fbserve/alpha/manifests/1.0?ns=ghcr.io" 200' in log
    port = served.registry_host.rpartition(":")[2]
    assert f'"HEAD /v2/fbtest/delta/manifests/4.0?ns=127.0.0.1%3A{port}" 200' in log


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# The API over the wire


def test_head_and_ranges_on_a_cached_layer(served: Served) -> None:
    digest = served.multi.amd64.layers[1].digest
    data = served.blob(digest)
    assert len(data) > 1 << 20
    path = f"/v2/{MULTI}/blobs/{digest}"
    status, headers, body = served.request("HEAD", path)
    assert (status, body, headers["Content-Length"]) == (200, b"", str(len(data)))
    assert headers["Docker-Content-Digest"] == digest
    status, headers, body = served.request("GET", path, {"Range": "bytes=1000-1999"})
    assert (status, body) == (206, data[1000:2000])
    assert headers["Content-Range"] == f"bytes 1000-1999/{len(data)}"
    status, headers, body = served.request("GET", path, {"Range": "bytes=-10"})
    assert (status, body) == (206, data[-10:])
    status, headers, body = served.request("GET", path, {"Range": f"bytes={len(data)}-"})
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(data)}"
    # A download resumed where it stopped adds up to the blob.
    first = served.request("GET", path, {"Range": "bytes=0-99999"})[2]
    rest = served.request("GET", path, {"Range": "bytes=100000-"})[2]
    assert first + rest == data


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v2/library/nothing/manifests/1.0", 404, "NAME_UNKNOWN"),
        ("GET", "/v2/library/alpha/manifests/0.0", 404, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/library/alpha/blobs/sha256:" + "0" * 64, 404, "BLOB_UNKNOWN"),
        ("GET", "/v2/library/alpha/blobs/sha256:XYZ", 400, "DIGEST_INVALID"),
        ("GET", "/v2/../../etc/passwd/blobs/sha256:" + "0" * 64, 400, "NAME_INVALID"),
        ("GET", "/v2/library%2Falpha/manifests/1.0", 400, "NAME_INVALID"),
        ("GET", "/v2/library/alpha/blobs/..%2F..%2F..%2Fetc%2Fpasswd", 400, "DIGEST_INVALID"),
        ("GET", "/v2/library/alpha/blobs/sha256:..%2F..%2Findex.json", 400, "DIGEST_INVALID"),
        ("PUT", "/v2/library/alpha/manifests/1.0", 405, "UNSUPPORTED"),
        ("POST", "/v2/library/alpha/blobs/uploads/", 405, "UNSUPPORTED"),
        ("PATCH", "/v2/library/alpha/blobs/uploads/x", 405, "UNSUPPORTED"),
        ("DELETE", "/v2/library/alpha/manifests/1.0", 405, "UNSUPPORTED"),
    ],
)
def test_errors_over_the_wire(
    served: Served, method: str, path: str, status: int, code: str
) -> None:
    got_status, headers, body = served.request(method, path)
    assert (got_status, json.loads(body)["errors"][0]["code"]) == (status, code)
    assert headers["Docker-Distribution-API-Version"] == "registry/2.0"


# Stopping and systemd


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_stop_the_server_cleanly(served: Served, tmp_path: Path, signum: int) -> None:
    process, address, stderr_path = start_server(served.cache_dir, tmp_path)
    port = int(address.rpartition(":")[2])
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    started = time.monotonic()
    assert stop_server(process, signum) == 0, stderr_path.read_text()
    assert time.monotonic() - started < 5
    assert "stopped serving the image cache" in stderr_path.read_text()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_ready_under_systemd(served: Served) -> None:
    """READY=1 once listening, STOPPING=1 on SIGTERM, through a NOTIFY_SOCKET as systemd sets."""
    directory = Path(tempfile.mkdtemp(prefix="fb-n"))  # short: unix socket paths are limited
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
            notify.bind(str(directory / "notify"))
            notify.settimeout(15)
            process, address, stderr_path = start_server(
                served.cache_dir, directory, env={"NOTIFY_SOCKET": str(directory / "notify")}
            )
            ready = notify.recv(4096).decode()
            assert ready.splitlines() == [
                "READY=1",
                f"STATUS=serving {served.cache_dir} at http://{address}",
            ]
            assert stop_server(process) == 0, stderr_path.read_text()
            assert notify.recv(4096).decode() == "STOPPING=1"
    finally:
        shutil.rmtree(directory, ignore_errors=True)
