"""Registries that misbehave on purpose, served for real on loopback: a redirect to a host that
asks for credentials, bodies that trickle, long Retry-After, escape codes in error bodies.

Every server is a real HTTP server on its own 127.0.0.x address; each records the requests it
got with their Authorization header, so the tests see what left forklift-boot, not what it
meant to send. Credentials and the crafted image come from the test bed; expected headers
are built here from the test's user and password.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from forklift_boot import cli
from forklift_boot.cache import Descriptor, ImageCache
from forklift_boot.errors import RegistryError
from forklift_boot.refs import parse_image_ref
from forklift_boot.stores.registry.bodies import TransferTooSlowError
from forklift_boot.stores.registry.client import RegistryClient
from forklift_boot.stores.registry.transport import MinimumRate, RetryPolicy
from tests.testbed import oci
from tests.testbed.credentials import PASSWORD, USER, basic, docker_config

Capture = pytest.CaptureFixture[str]

BASIC = f"Basic {basic(USER, PASSWORD)}"  # what the registry's password looks like on the wire
REGISTRY_TOKEN = "token-for-the-registry"
REPO = "fb/app"
IMAGE = oci.craft_image([{"app/file": oci.pseudo_random("hostile", 200_000)}])
LAYER = IMAGE.layers[0]


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    authorization: str | None
    body: bytes


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    # Trickling: the body in pieces of ``piece`` bytes, ``pause`` seconds apart, and the
    # connection closed after ``cut_after`` bytes.
    piece: int = 0
    pause: float = 0.0
    cut_after: int | None = None


Respond = Callable[[str, str, dict[str, str]], Reply]


class Server:
    """A real HTTP/1.1 server on ``address`` (a free port) answering with ``respond``."""

    def __init__(self, address: str, respond: Respond) -> None:
        self.respond = respond
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner.handle(self)

            def do_HEAD(self) -> None:
                owner.handle(self)

            def do_POST(self) -> None:
                owner.handle(self)

        self._server = ThreadingHTTPServer((address, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.host = f"{address}:{self._server.server_address[1]}"

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self._lock:
            self.seen.append(
                Seen(handler.command, handler.path, handler.headers.get("Authorization"), body)
            )
        reply = self.respond(handler.command, handler.path, dict(handler.headers.items()))
        handler.send_response(reply.status)
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(reply.body)))
        handler.end_headers()
        if handler.command == "HEAD":
            return
        data = reply.body if reply.cut_after is None else reply.body[: reply.cut_after]
        piece = reply.piece or len(data) or 1
        try:
            for start in range(0, len(data), piece):
                handler.wfile.write(data[start : start + piece])
                handler.wfile.flush()
                if reply.pause:
                    time.sleep(reply.pause)
        except OSError:  # the client gave up: what the trickle tests want
            handler.close_connection = True
            return
        if reply.cut_after is not None:
            handler.close_connection = True

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    """Servers a test starts (``started.append``), closed after it."""
    started: list[Server] = []
    yield started
    for server in started:
        server.close()


def start(servers: list[Server], address: str, respond: Respond) -> Server:
    server = Server(address, respond)
    servers.append(server)
    return server


def registry_answers(method: str, path: str, *, layer: Callable[[], Reply] | None = None) -> Reply:
    """The crafted image's manifest, config and (unless ``layer`` says otherwise) layer."""
    blobs = {blob.digest: blob for blob in IMAGE.blobs}
    if path == f"/v2/{REPO}/manifests/1":
        manifest = IMAGE.manifest
        headers = {"Content-Type": manifest.media_type, "Docker-Content-Digest": manifest.digest}
        return Reply(200, headers, manifest.data)
    if path.startswith(f"/v2/{REPO}/blobs/"):
        digest = path.rsplit("/", 1)[1]
        if digest == LAYER.digest and layer is not None:
            return layer()
        if digest in blobs:
            return Reply(200, {"Content-Type": "application/octet-stream"}, blobs[digest].data)
    if method in ("GET", "HEAD"):
        return Reply(404)
    return Reply(405)


def cache_img(capsys: Capture, cache: Path, host: str, **env: str) -> tuple[int, str]:
    base = {"HOME": "/nonexistent", "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    argv = ["cache-img", "--from", "registry", "--cache-dir", str(cache)]
    code = cli.main([*argv, f"{host}/{REPO}:1"], env={**base, **env})
    return code, capsys.readouterr().err


# Credentials never follow a redirect (the class of containerd's CVE-2020-15157)


class Scene:
    """A registry with a password in config.json (basic auth, or bearer tokens from its own
    token service), whose layer GET redirects to a storage host."""

    def __init__(
        self, servers: list[Server], scheme: str, storage: Respond, tmp_path: Path
    ) -> None:
        self.realm = start(servers, "127.0.0.3", self._realm)
        self.storage = start(servers, "127.0.0.2", storage)
        self.scheme = scheme
        self.registry = start(servers, "127.0.0.1", self._registry)
        self.config = docker_config(
            tmp_path / "docker", {"auths": {self.registry.host: {"auth": basic(USER, PASSWORD)}}}
        )

    def _realm(self, method: str, path: str, headers: dict[str, str]) -> Reply:
        if headers.get("Authorization") != BASIC:
            return Reply(401)
        return Reply(
            200, {"Content-Type": "application/json"}, b'{"token": "%s"}' % REGISTRY_TOKEN.encode()
        )

    def _registry(self, method: str, path: str, headers: dict[str, str]) -> Reply:
        if self.scheme == "basic" and headers.get("Authorization") != BASIC:
            return Reply(401, {"WWW-Authenticate": 'Basic realm="registry"'})
        if self.scheme == "bearer" and headers.get("Authorization") != f"Bearer {REGISTRY_TOKEN}":
            challenge = (
                f'Bearer realm="http://{self.realm.host}/token",service="registry",'
                f'scope="repository:{REPO}:pull"'
            )
            return Reply(401, {"WWW-Authenticate": challenge})
        storage = f"http://{self.storage.host}/storage/{LAYER.digest}?signature=abc"
        return registry_answers(method, path, layer=lambda: Reply(307, {"Location": storage}))


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_a_challenge_from_where_a_redirect_led_gets_no_credentials(
    capsys: Capture, tmp_path: Path, servers: list[Server], scheme: str
) -> None:
    attacker = start(
        servers,
        "127.0.0.4",
        lambda m, p, h: Reply(200, {"Content-Type": "application/json"}, b'{"token": "x"}'),
    )
    challenge = f'Bearer realm="http://{attacker.host}/token",service="storage"'
    scene = Scene(
        servers,
        scheme,
        lambda m, p, h: Reply(401, {"WWW-Authenticate": challenge}),
        tmp_path,
    )
    code, err = cache_img(
        capsys, tmp_path / "cache", scene.registry.host, DOCKER_CONFIG=scene.config
    )
    assert code == 3, err  # the image failed
    assert "Traceback" not in err
    assert (
        f"it sent us to {scene.storage.host}, which asks for credentials (HTTP 401); "
        f"forklift-boot gives {scene.registry.host}'s credentials only to {scene.registry.host}"
    ) in err
    assert attacker.seen == []  # no password, no token request at all
    assert [s.authorization for s in scene.storage.seen] == [None]
    assert scene.storage.seen[0].path.startswith(f"/storage/{LAYER.digest}")
    # The registry and the token service it named had the credentials, and only they.
    expected = BASIC if scheme == "basic" else f"Bearer {REGISTRY_TOKEN}"
    assert {s.authorization for s in scene.registry.seen} == {None, expected}
    if scheme == "bearer":
        assert [s.authorization for s in scene.realm.seen] == [BASIC]
    else:
        assert scene.realm.seen == []


@pytest.mark.parametrize("scheme", ["basic", "bearer"])
def test_a_redirect_to_storage_carries_no_authorization(
    capsys: Capture, tmp_path: Path, servers: list[Server], scheme: str
) -> None:
    """requests follows the GET's redirect itself: it must drop the Authorization header."""
    scene = Scene(
        servers,
        scheme,
        lambda m, p, h: Reply(200, {"Content-Type": "application/octet-stream"}, LAYER.data),
        tmp_path,
    )
    code, err = cache_img(
        capsys, tmp_path / "cache", scene.registry.host, DOCKER_CONFIG=scene.config
    )
    assert code == 0, err
    assert (tmp_path / "cache" / "blobs" / "sha256" / LAYER.digest.split(":")[1]).is_file()
    assert len(scene.storage.seen) == 1
    assert scene.storage.seen[0].authorization is None
    # ... while the registry's own requests did carry them (the redirect came after one).
    expected = BASIC if scheme == "basic" else f"Bearer {REGISTRY_TOKEN}"
    layer_gets = [s for s in scene.registry.seen if s.path.endswith(LAYER.digest)]
    assert [s.authorization for s in layer_gets] == [expected]


def test_a_token_service_that_redirects_the_refresh_token_is_not_followed(
    capsys: Capture, tmp_path: Path, servers: list[Server]
) -> None:
    """An identity token goes in a POST body, which a 307 would carry to another host."""
    elsewhere = start(servers, "127.0.0.4", lambda m, p, h: Reply(200, {}, b'{"token": "x"}'))
    realm = start(
        servers,
        "127.0.0.3",
        lambda m, p, h: Reply(307, {"Location": f"http://{elsewhere.host}/token"}),
    )
    challenge = f'Bearer realm="http://{realm.host}/token",service="registry"'
    registry = start(
        servers, "127.0.0.1", lambda m, p, h: Reply(401, {"WWW-Authenticate": challenge})
    )
    config = docker_config(
        tmp_path / "docker", {"auths": {registry.host: {"identitytoken": "refresh-me-not"}}}
    )
    code, err = cache_img(capsys, tmp_path / "cache", registry.host, DOCKER_CONFIG=config)
    assert code == 3, err
    assert f"its token service {realm.host} answered HTTP 307" in err
    assert [s.method for s in realm.seen] == ["POST"]
    assert b"refresh-me-not" in realm.seen[0].body  # the realm the registry named: allowed
    assert elsewhere.seen == []


# Bodies that trickle, and waits the registry asks for


def download_layer(client: RegistryClient, host: str, cache: Path) -> None:
    repository = client.repository(parse_image_ref(f"{host}/{REPO}:1"))
    descriptor = Descriptor(LAYER.media_type, LAYER.digest, LAYER.size)
    with ImageCache(cache).writing() as writer:
        repository.download_blob(descriptor, writer)


def trickling_registry(servers: list[Server], layer: Callable[[dict[str, str]], Reply]) -> Server:
    def respond(method: str, path: str, headers: dict[str, str]) -> Reply:
        return registry_answers(method, path, layer=lambda: layer(headers))

    return start(servers, "127.0.0.1", respond)


def test_a_trickling_blob_ends_at_the_minimum_rate(tmp_path: Path, servers: list[Server]) -> None:
    # 1 byte every 20 ms: 50 bytes/s, forever as far as the read timeout (60 s) is concerned.
    registry = trickling_registry(
        servers, lambda h: Reply(200, {}, LAYER.data, piece=1, pause=0.02)
    )
    client = RegistryClient(min_rate=MinimumRate(min_bytes=4096, window=0.5))
    started = time.monotonic()
    with pytest.raises(TransferTooSlowError) as caught:
        download_layer(client, registry.host, tmp_path / "cache")
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 5.0
    message = str(caught.value)
    assert f"couldn't download blob {LAYER.digest} of {REPO} from {registry.host}" in message
    assert "less than the minimum of 4 KiB in 0.5 s" in message
    assert not (tmp_path / "cache" / "blobs" / "sha256" / LAYER.digest.split(":")[1]).exists()


def test_a_trickle_that_cuts_and_resumes_still_ends(tmp_path: Path, servers: list[Server]) -> None:
    """Each request makes a little progress, so no resume counts as a failure: the minimum
    rate spans the resumes."""

    def layer(headers: dict[str, str]) -> Reply:
        offset = int(headers.get("Range", "bytes=0-")[6:].rstrip("-"))
        rest = LAYER.data[offset:]
        content_range = f"bytes {offset}-{LAYER.size - 1}/{LAYER.size}"
        status, extra = (206, {"Content-Range": content_range}) if offset else (200, {})
        return Reply(status, extra, rest, piece=1, pause=0.02, cut_after=5)

    registry = trickling_registry(servers, layer)
    client = RegistryClient(min_rate=MinimumRate(min_bytes=4096, window=0.5))
    started = time.monotonic()
    with pytest.raises(TransferTooSlowError):
        download_layer(client, registry.host, tmp_path / "cache")
    assert time.monotonic() - started < 5.0
    gets = [s for s in registry.seen if s.path.endswith(LAYER.digest)]
    assert len(gets) >= 2  # it did resume before giving up


def test_a_slow_but_steady_blob_is_not_cut(tmp_path: Path, servers: list[Server]) -> None:
    # 16 KiB every 50 ms (about 320 KiB/s) against a minimum of 4 KiB per 0.2 s.
    registry = trickling_registry(
        servers, lambda h: Reply(200, {}, LAYER.data, piece=16 << 10, pause=0.05)
    )
    client = RegistryClient(min_rate=MinimumRate(min_bytes=4096, window=0.2))
    download_layer(client, registry.host, tmp_path / "cache")
    stored = tmp_path / "cache" / "blobs" / "sha256" / LAYER.digest.split(":")[1]
    assert stored.read_bytes() == LAYER.data


def test_a_trickling_manifest_ends_at_the_minimum_rate(servers: list[Server]) -> None:
    def respond(method: str, path: str, headers: dict[str, str]) -> Reply:
        manifest = IMAGE.manifest
        return Reply(200, {"Content-Type": manifest.media_type}, manifest.data, piece=1, pause=0.05)

    registry = start(servers, "127.0.0.1", respond)
    client = RegistryClient(min_rate=MinimumRate(min_bytes=1024, window=0.3))
    repository = client.repository(parse_image_ref(f"{registry.host}/{REPO}:1"))
    started = time.monotonic()
    with pytest.raises(TransferTooSlowError, match="less than the minimum of 1 KiB in 0.3 s"):
        repository.get_manifest("1")
    assert time.monotonic() - started < 5.0
    assert len(registry.seen) == 1  # too slow is not retried


def test_retry_after_is_capped_and_so_are_all_the_waits(servers: list[Server]) -> None:
    waits: dict[str, str] = {"value": "61"}
    registry = start(
        servers,
        "127.0.0.1",
        lambda m, p, h: Reply(429, {"Retry-After": waits["value"]}),
    )
    slept: list[float] = []
    client = RegistryClient(sleep=slept.append)  # the default policy: nothing set by the test
    repository = client.repository(parse_image_ref(f"{registry.host}/{REPO}:1"))

    with pytest.raises(RegistryError, match="it asks to wait 61 s; try again later"):
        repository.head_manifest("1")
    assert (slept, len(registry.seen)) == ([], 1)

    # 60 s is allowed, twice: a third would take the request past 120 s of waiting.
    waits["value"] = "60"
    with pytest.raises(RegistryError) as caught:
        repository.head_manifest("1")
    assert slept == [60.0, 60.0]
    assert len(registry.seen) == 1 + 3
    assert "HTTP 429, too many requests 3 times, and waiting 60 s more would take it past " in str(
        caught.value
    )
    assert RetryPolicy().max_retry_after == 60.0
    assert RetryPolicy().max_total_wait == 120.0


# Text from a registry reaches the terminal escaped


def test_escape_codes_in_a_registry_error_are_escaped(
    capsys: Capture, tmp_path: Path, servers: list[Server]
) -> None:
    evil = {"errors": [{"code": "DENIED\x1b[31m", "message": "\x1b[2K\rError: FAKE\nmore"}]}

    def respond(method: str, path: str, headers: dict[str, str]) -> Reply:
        if method == "HEAD":
            return Reply(405)  # the GET will tell
        return Reply(400, {"Content-Type": "application/json"}, json.dumps(evil).encode())

    registry = start(servers, "127.0.0.1", respond)
    code, err = cache_img(capsys, tmp_path / "cache", registry.host)
    assert code == 3, err
    assert "\x1b" not in err
    assert "\r" not in err
    assert "HTTP 400 (DENIED\\x1b[31m: \\x1b[2K\\rError: FAKE\\nmore)" in err
    assert not any(line.startswith("Error: FAKE") for line in err.splitlines())
