"""A standalone containerd on its own socket (docs/testbed.md), for ctr-based tests."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.testbed.registry import tail


class Containerd:
    def __init__(self) -> None:
        # Short dir: unix socket paths are limited to 108 bytes.
        self.dir = Path(tempfile.mkdtemp(prefix="fb-c"))
        self.sock = self.dir / "containerd.sock"
        self.log_path = self.dir / "containerd.log"
        config = self.dir / "config.toml"
        config.write_text(
            "version = 2\n"
            f'root = "{self.dir}/root"\nstate = "{self.dir}/state"\n'
            f'[grpc]\n  address = "{self.sock}"\n'
            f'[ttrpc]\n  address = "{self.sock}.ttrpc"\n'
            f'[debug]\n  address = "{self.dir}/debug.sock"\n'
        )
        self._argv = ["containerd", "--config", str(config)]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> None:
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self._argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while self.ctr("version", check=False).returncode != 0:
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not start:\n{tail(self.log_path)}")
            time.sleep(0.05)

    def ctr(
        self, *args: str, namespace: str = "default", check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ctr", "-a", str(self.sock), "-n", namespace, *args],
            capture_output=True,
            text=True,
            check=check,
        )

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        subprocess.run(
            ["umount", "-R", str(self.dir / "root")], check=False, stderr=subprocess.DEVNULL
        )
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Containerd:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
