"""A throw-away ``docker-registry`` (Debian's distribution 2.8) on 127.0.0.1 with a free port.

Standard library only (urllib), so it runs on the PyPI and the Debian (docker SDK 5.0.3) stacks.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

# Everything a dockerd 20.10 push can produce (schema 2) plus OCI, single images and indexes.
MANIFEST_ACCEPT = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)

# Loopback only: never let an http_proxy from the environment intercept 127.0.0.1.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A port that was free a moment ago (the kernel picks it for port 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class Registry:
    """``docker-registry serve`` on ``127.0.0.1:<port>``; stop/start keeps the port and the blobs."""

    def __init__(self, *, storage: Path | None = None, extra_config: str = "") -> None:
        """``storage``: serve another registry's blobs and manifests (e.g. the same images behind
        authentication); ``extra_config``: more top-level YAML sections (``auth:``,
        ``validation:``)."""
        self.dir = Path(tempfile.mkdtemp(prefix="fb-r"))
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.storage = storage or self.dir / "storage"
        self.log_path = self.dir / "registry.log"
        self.config_path = self.dir / "config.yml"
        # delete.enabled lets tests remove manifests (DELETE /v2/<repo>/manifests/<digest>).
        self.config_path.write_text(
            "version: 0.1\n"
            "log:\n  level: info\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {self.storage}\n"
            "  delete:\n    enabled: true\n"
            f"http:\n  addr: {self.host}\n" + extra_config
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 30) -> None:
        if self.is_running():
            return
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                ["docker-registry", "serve", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"docker-registry exited rc={self._proc.returncode}:\n{tail(self.log_path)}"
                )
            try:
                with _OPENER.open(f"{self.url}/v2/", timeout=2) as response:
                    if response.status == 200:
                        return
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # behind authentication: it answers, so it is ready
                    return
            except OSError:  # URLError/ConnectionRefused until it listens
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"docker-registry not ready in {timeout}s:\n{tail(self.log_path)}"
                )
            time.sleep(0.02)

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    @contextlib.contextmanager
    def offline(self) -> Iterator[None]:
        """Stopped inside the block (the network is gone), running again afterwards."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Registry:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def manifest_digest(self, repo: str, ref: str) -> str:
        """The registry's ``Docker-Content-Digest`` for ``repo:ref`` (ref = tag or digest)."""
        request = urllib.request.Request(
            f"{self.url}/v2/{repo}/manifests/{ref}",
            method="HEAD",
            headers={"Accept": MANIFEST_ACCEPT},
        )
        with _OPENER.open(request, timeout=10) as response:
            digest = response.headers["Docker-Content-Digest"]
        if not isinstance(digest, str) or not digest.startswith("sha256:"):
            raise RuntimeError(f"no Docker-Content-Digest for {repo}:{ref}: {digest!r}")
        return digest

    def manifest(self, repo: str, ref: str) -> bytes:
        """The manifest bytes the registry serves for ``repo:ref`` (ref = tag or digest)."""
        request = urllib.request.Request(
            f"{self.url}/v2/{repo}/manifests/{ref}", headers={"Accept": MANIFEST_ACCEPT}
        )
        with _OPENER.open(request, timeout=10) as response:
            body: bytes = response.read()
        return body

    def has_manifest(self, repo: str, ref: str) -> bool:
        try:
            self.manifest_digest(repo, ref)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return False
            raise
        return True
