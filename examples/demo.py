"""forklift-boot's main job on an embedded default: the whole round trip, offline.

Starts a private, throwaway dockerd; builds the images of the sample pallet (examples/pallet)
locally (FROM scratch + busybox, sharing their base layer); lists them with ls-img; copies them
into a fresh cache with cache-img; removes them from Docker; loads them back with load-img;
shows what resolves; stops the daemon and removes everything. Run by scripts/demo (as root).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import docker

EXAMPLES = Path(__file__).resolve().parent
PALLET = EXAMPLES / "pallet"
# The sample pallet's images (compose files write them exactly so) and what each one says.
IMAGES = {
    "forklift-boot-sample/hello:1.0": "hello from forklift-boot's sample web page\n",
    "forklift-boot-sample/banner:1.0": "welcome\n",
    "forklift-boot-sample/clock:1.0": "tick\n",
    "forklift-boot-sample/proxy:1.0": "proxying\n",
    "forklift-boot-sample/debug-tools:1.0": "debugging\n",
}


def build_context(ref: str, message: str) -> bytes:
    """FROM scratch + the static busybox (a layer every image shares) + one file of its own."""
    buffer = io.BytesIO()
    name = ref.split("/")[1].split(":", maxsplit=1)[0]
    dockerfile = (
        "FROM scratch\nCOPY busybox /bin/busybox\n"
        f'COPY {name}.txt /srv/{name}.txt\nCMD ["/bin/busybox", "cat", "/srv/{name}.txt"]\n'
    )
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for arcname, data, mode in (
            ("Dockerfile", dockerfile.encode(), 0o644),
            ("busybox", Path("/bin/busybox").read_bytes(), 0o755),
            (f"{name}.txt", message.encode(), 0o644),
        ):
            info = tarfile.TarInfo(arcname)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def step(title: str) -> None:
    print(f"\n== {title}", file=sys.stderr, flush=True)


def forklift_boot(host: str, *args: str) -> int:
    command = [sys.executable, "-m", "forklift_boot", *args]
    print("$ forklift-boot " + " ".join(args), file=sys.stderr, flush=True)
    return subprocess.run(command, env={**os.environ, "DOCKER_HOST": host}, check=False).returncode


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="fb-demo"))  # short: unix socket paths are limited
    host = f"unix://{work}/docker.sock"
    cache = work / "cache"
    log = (work / "dockerd.log").open("wb")
    dockerd = subprocess.Popen(
        [
            "dockerd",
            "--data-root",
            f"{work}/root",
            "--exec-root",
            f"{work}/exec",
            "--pidfile",
            f"{work}/pid",
            "-H",
            host,
            "--iptables=false",
            "--bridge=none",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        step(f"a private dockerd on {host}")
        deadline = time.monotonic() + 60
        while True:
            try:
                client = docker.DockerClient(base_url=host, timeout=600)
                client.ping()
                break
            except Exception:
                if dockerd.poll() is not None or time.monotonic() > deadline:
                    print((work / "dockerd.log").read_text()[-2000:], file=sys.stderr)
                    return 1
                time.sleep(0.1)
        step("building the sample pallet's images locally")
        for ref, message in IMAGES.items():
            client.images.build(
                fileobj=io.BytesIO(build_context(ref, message)),
                custom_context=True,
                tag=ref,
                rm=True,
            )
            print(f"built {ref}", file=sys.stderr)

        pallet = ["--pallet", str(PALLET), "--workspace", str(EXAMPLES)]
        step("which images does the pallet need, exactly as Forklift would list them?")
        status = forklift_boot(host, "ls-img", *pallet)
        step("copy them out of Docker into the cache")
        status |= forklift_boot(host, "cache-img", "--cache-dir", str(cache), *pallet)
        forklift_boot(host, "cache", "ls-img", "--cache-dir", str(cache))
        step("remove them from Docker (a pruned or fresh device)")
        for ref in IMAGES:
            client.images.remove(ref, force=True)
        forklift_boot(host, "ls-img", "--status", "--cache-dir", str(cache), *pallet)
        step("load them back from the cache, offline")
        status |= forklift_boot(host, "load-img", "--cache-dir", str(cache), *pallet)
        step("every image resolves as the compose files write it")
        status |= forklift_boot(host, "ls-img", "--status", "--cache-dir", str(cache), *pallet)
        container = client.containers.run("forklift-boot-sample/hello:1.0", remove=True)
        print(
            f"docker run forklift-boot-sample/hello:1.0 -> {container.decode().strip()}",
            file=sys.stderr,
        )
        step("run it again: nothing to do")
        status |= forklift_boot(host, "load-img", "--cache-dir", str(cache), *pallet)
        return status
    finally:
        dockerd.send_signal(signal.SIGTERM)
        try:
            dockerd.wait(timeout=30)
        except subprocess.TimeoutExpired:
            dockerd.kill()
        subprocess.run(["umount", "-R", f"{work}/root"], check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
