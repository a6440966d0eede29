"""The Debian package and its three units in a booted systemd, driven with systemctl.

The .deb is built on the host (scripts/build-deb) and installed in the booted bookworm with apt,
after boot, from Debian's packages only. Images come from a loopback registry (real digests),
pulled by the container's own dockerd; a stage store names them in all three forms.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_DIR, require_component
from tests.integration.test_direct_copy import entries, manifest_layers
from tests.testbed import oci
from tests.testbed.images import PublishedImage
from tests.testbed.nspawn import ART_MOUNT, BootedContainer
from tests.testbed.registry import Registry

pytestmark = [pytest.mark.systemd, pytest.mark.docker, pytest.mark.registry]

CACHE_UNIT = "forklift-boot-cache-img.service"
LOAD_UNIT = "forklift-boot-load-img.service"
SERVE_UNIT = "forklift-boot-serve.service"
STAGES = "/var/lib/forklift/stages"
# What `systemd-analyze security` may score each unit at most (tests/unit/test_packaging.py).
EXPOSURE = {CACHE_UNIT: 5.0, LOAD_UNIT: 5.0, SERVE_UNIT: 3.0}


@pytest.fixture(scope="module")
def refs(published_images: dict[str, PublishedImage]) -> list[str]:
    alpha, beta, delta = (published_images[name] for name in ("alpha", "beta", "delta"))
    return [
        alpha.tag_ref,  # alpha:1.0
        alpha.tag_digest_ref,  # alpha:1.0@sha256:...
        beta.full_digest_ref,  # docker.io/library/beta@sha256:...
        delta.tag_ref,  # 127.0.0.1:PORT/fbtest/delta:4.0
        delta.tag_digest_ref,
    ]


@pytest.fixture(scope="module")
def installed(
    booted: BootedContainer,
    registry: Registry,
    published_images: dict[str, PublishedImage],
    refs: list[str],
) -> BootedContainer:
    """The .deb installed, the images pulled into the container's Docker, a stage store."""
    assert booted.art_dir is not None
    result = subprocess.run(
        [str(REPO_DIR / "scripts/build-deb"), str(booted.art_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    deb = Path(result.stdout.strip().splitlines()[-1])
    booted.run(
        "sh",
        "-c",
        f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q {ART_MOUNT}/{deb.name}",
        timeout=600,
    )
    # Docker Hub names come from the loopback registry as a mirror (the container shares the
    # host's network); the daemon must not touch the host's network either way.
    (booted.root / "etc/docker/daemon.json").write_text(
        json.dumps(
            {
                "iptables": False,
                "bridge": "none",
                "registry-mirrors": [f"http://{registry.host}"],
                "insecure-registries": [registry.host],
            }
        )
    )
    booted.run("systemctl", "restart", "docker.service")
    for name in ("alpha", "beta", "delta"):
        image = published_images[name]
        booted.run("docker", "pull", image.tag_ref, timeout=300)
    bundle = (
        "forklift-version: v0.8.0-alpha.6\n"
        "exports:\n  apps/demo:\n    compose-app:\n      images:\n"
        + "".join(f"        - {ref}\n" for ref in refs)
    )
    stages = booted.root / STAGES.lstrip("/")
    (stages / "1").mkdir(parents=True)
    (stages / "1/forklift-bundle.yml").write_text(bundle)
    (stages / "forklift-stage-store.yml").write_text("staged:\n  next: 1\n")
    return booted


def start(container: BootedContainer, unit: str, *, check: bool = True) -> dict[str, str]:
    """``systemctl start`` (waits for the oneshot to finish) and the unit's properties."""
    container.run("systemctl", "start", unit, check=check, timeout=900)
    return show(container, unit)


def show(container: BootedContainer, unit: str) -> dict[str, str]:
    text = container.run(
        "systemctl",
        "show",
        unit,
        "-p",
        "Result,ExecMainStatus,ActiveState,StatusText,InvocationID,"
        "ExecMainStartTimestampMonotonic,ExecMainExitTimestampMonotonic,"
        "InactiveExitTimestampMonotonic,ActiveEnterTimestampMonotonic",
    ).stdout
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def last_run_journal(
    container: BootedContainer, unit: str, *, until: str = "", timeout: float = 15
) -> str:
    """What the unit's last run logged. journald may still be reading the service's output
    stream when ``systemctl start`` returns (CI once read nothing of an ``ln`` that had failed),
    so this waits, up to ``timeout`` seconds, for a journal that holds ``until`` (or anything)."""
    invocation = show(container, unit)["InvocationID"]
    deadline = time.monotonic() + timeout
    while True:
        container.run("journalctl", "--sync")
        text = container.run(
            "journalctl", f"_SYSTEMD_INVOCATION_ID={invocation}", "-o", "cat", "--no-pager"
        ).stdout
        if (text and until in text) or time.monotonic() > deadline:
            return text
        time.sleep(0.2)


def resolves(container: BootedContainer, ref: str) -> bool:
    return container.run("docker", "image", "inspect", ref, check=False).returncode == 0


def test_cache_then_load_through_the_units(
    installed: BootedContainer,
    registry: Registry,
    published_images: dict[str, PublishedImage],
    refs: list[str],
) -> None:
    props = start(installed, CACHE_UNIT)
    assert (props["Result"], props["ExecMainStatus"]) == ("success", "0")
    journal = last_run_journal(installed, CACHE_UNIT, until="cached 5/5")
    assert "cached 5/5 images (5 new)" in journal, journal
    # The sandbox breaks nothing, not even quietly (a library failing on a hidden file).
    assert "Traceback" not in journal, journal
    listing = json.loads(installed.run("forklift-boot", "cache", "ls-img", "--json").stdout)
    assert {ref for image in listing["images"] for ref in image["refs"]} == set(refs)

    ids = {published_images[n].image_id for n in ("alpha", "beta", "delta")}
    installed.run("docker", "rmi", "-f", *ids)
    with registry.offline():
        props = start(installed, LOAD_UNIT)
        assert (props["Result"], props["ExecMainStatus"]) == ("success", "0")
        journal = last_run_journal(installed, LOAD_UNIT)
        assert "Traceback" not in journal, journal
        # Digest refs on the classic store: Docker restarted through systemd to record them
        # (dockerd's /proc entries read with CAP_SYS_PTRACE, Docker's units over D-Bus).
        assert "stopping Docker" in journal, journal
        assert "Docker is running again" in journal, journal
        assert installed.run("systemctl", "is-active", "docker.service").stdout.strip() == "active"
        for ref in refs:
            assert resolves(installed, ref), ref
            # docker create resolves the ref itself; with the registry down a pull would fail.
            name = installed.run("docker", "create", ref, "/bin/busybox", "true").stdout.strip()
            installed.run("docker", "rm", name)
    assert "5/5 images ready in Docker" in journal

    # Every later start: nothing to do, nothing exported, loaded or written.
    props = start(installed, CACHE_UNIT)
    assert props["Result"] == "success"
    journal = last_run_journal(installed, CACHE_UNIT, until="cached 5/5")
    assert "cached 5/5 images (0 new), 0 B written" in journal, journal
    props = start(installed, LOAD_UNIT)
    assert props["Result"] == "success"
    journal = last_run_journal(installed, LOAD_UNIT, until="5 already there")
    assert "(0 loaded, 0 tagged, 5 already there), 0 B sent to Docker" in journal, journal
    assert "stopping Docker" not in journal


def test_status_shows_the_last_runs(installed: BootedContainer) -> None:
    start(installed, LOAD_UNIT)
    status = json.loads(installed.run("forklift-boot", "status", "--json").stdout)
    units = {unit["unit"]: unit for unit in status["units"]}
    assert units[LOAD_UNIT]["result"] == "success"
    assert units[LOAD_UNIT]["exit_status"] == 0
    assert units[LOAD_UNIT]["last_run"]
    # The last STATUS= the unit sent: its summary line.
    assert units[LOAD_UNIT]["status"].startswith("5/5 images ready in Docker")
    assert status["cache"]["images"] == 5
    text = installed.run("systemctl", "status", LOAD_UNIT, "--no-pager", check=False).stdout
    assert 'Status: "5/5 images ready in Docker' in text


def test_units_run_at_boot_in_order_and_do_nothing(installed: BootedContainer) -> None:
    # A stand-in for Forklift's own unit, ordered as PlanktoScope OS orders it.
    (installed.root / "etc/systemd/system/forklift-apply.service").write_text(
        "[Unit]\nDescription=stand-in for forklift stage apply\n"
        "Wants=docker.service\nAfter=docker.service\n"
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/true\n"
        "[Install]\nWantedBy=multi-user.target\n"
    )
    installed.run("systemctl", "enable", "forklift-apply.service")
    assert installed.run("systemctl", "is-enabled", CACHE_UNIT, LOAD_UNIT).stdout.split() == [
        "enabled",
        "enabled",
    ]
    installed.reboot()
    stamp = {
        unit: show(installed, unit)
        for unit in ("docker.service", LOAD_UNIT, "forklift-apply.service", CACHE_UNIT)
    }
    target = (
        installed.run(
            "systemctl", "show", "multi-user.target", "-p", "ActiveEnterTimestampMonotonic"
        )
        .stdout.split("=")[1]
        .strip()
    )

    def began(unit: str) -> int:
        return int(stamp[unit]["ExecMainStartTimestampMonotonic"])

    def ended(unit: str) -> int:
        return int(stamp[unit]["ExecMainExitTimestampMonotonic"])

    assert int(stamp["docker.service"]["ActiveEnterTimestampMonotonic"]) < began(LOAD_UNIT)
    assert ended(LOAD_UNIT) <= began("forklift-apply.service")
    assert int(target) <= began(CACHE_UNIT)  # the copy-out waits for the system to be up
    for unit in (LOAD_UNIT, CACHE_UNIT):
        assert stamp[unit]["Result"] == "success", unit
    # Installed disabled: nothing serves the cache unless the device's owner says so.
    assert installed.run("systemctl", "is-enabled", SERVE_UNIT, check=False).stdout.strip() == (
        "disabled"
    )
    assert show(installed, SERVE_UNIT)["ActiveState"] == "inactive"
    boot_log = installed.journal(unit=None)
    assert "(0 loaded, 0 tagged, 5 already there), 0 B sent to Docker" in boot_log
    assert "cached 5/5 images (0 new), 0 B written" in boot_log


def test_start_timeout_is_extended_while_a_slow_copy_progresses(
    installed: BootedContainer,
) -> None:
    # A 1.5 GB image of random bytes, gzip-compressed into the cache, takes several seconds,
    # more than the 2 s start timeout of the drop-in; progress extends it (EXTEND_TIMEOUT_USEC).
    # (The direct copy out of Docker's store with ISA-L's gzip took 160 MB in 0.8 s.)
    installed.run(
        "sh",
        "-c",
        "mkdir -p /tmp/big && head -c 1536M /dev/urandom > /tmp/big/blob"
        " && printf 'FROM scratch\\nCOPY blob /blob\\n' > /tmp/big/Dockerfile"
        " && docker build -q -t fbtest/big:1 /tmp/big",
        timeout=600,
    )
    dropin = installed.root / f"etc/systemd/system/{CACHE_UNIT}.d/slow.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(
        "[Service]\nTimeoutStartSec=2s\nExecStart=\n"
        "ExecStart=/usr/bin/forklift-boot cache-img --cache-dir /var/cache/fb-big fbtest/big:1\n"
    )
    try:
        installed.run("systemctl", "daemon-reload")
        props = start(installed, CACHE_UNIT)
        took = int(props["ExecMainExitTimestampMonotonic"]) - int(
            props["ExecMainStartTimestampMonotonic"]
        )
        assert props["Result"] == "success", last_run_journal(installed, CACHE_UNIT)
        assert took > 2_000_000, f"the copy took only {took / 1e6:.1f} s: not slow enough"
        assert props["StatusText"].startswith("cached 1/1 images (1 new)")
    finally:
        dropin.unlink()
        installed.run("systemctl", "daemon-reload")
        installed.run("rm", "-rf", "/var/cache/fb-big", "/tmp/big")
        installed.run("docker", "rmi", "fbtest/big:1")


def test_a_broken_stage_store_fails_with_one_line(installed: BootedContainer) -> None:
    broken = installed.root / "var/lib/forklift/broken"
    broken.mkdir(parents=True, exist_ok=True)
    (broken / "forklift-stage-store.yml").write_text("staged: [next\n")
    dropin = installed.root / f"etc/systemd/system/{LOAD_UNIT}.d/broken.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text("[Service]\nEnvironment=FORKLIFT_STAGE_STORE=/var/lib/forklift/broken\n")
    try:
        installed.run("systemctl", "daemon-reload")
        props = start(installed, LOAD_UNIT, check=False)
        assert (props["Result"], props["ExecMainStatus"]) == ("exit-code", "1")
        lines = last_run_journal(installed, LOAD_UNIT).splitlines()
        errors = [line for line in lines if "forklift-stage-store.yml" in line]
        assert len(errors) == 1, lines
        assert re.match(
            r"couldn't parse stage store manifest .*broken/forklift-stage-store.yml", errors[0]
        ), errors
        assert not [line for line in lines if "Traceback" in line]
    finally:
        dropin.unlink()
        installed.run("systemctl", "daemon-reload")


def test_systemd_analyze_verify_has_nothing_to_say(installed: BootedContainer) -> None:
    result = installed.run(
        "systemd-analyze",
        "verify",
        "--man=no",
        f"/lib/systemd/system/{CACHE_UNIT}",
        f"/lib/systemd/system/{LOAD_UNIT}",
        f"/lib/systemd/system/{SERVE_UNIT}",
        check=False,
    )
    own = [line for line in (result.stdout + result.stderr).splitlines() if "forklift-boot" in line]
    assert (result.returncode, own) == (0, []), result.stderr


def test_the_exposure_of_the_loaded_units(installed: BootedContainer) -> None:
    # As the booted systemd loaded them (unit file, package paths, no drop-ins).
    for unit, highest in EXPOSURE.items():
        text = installed.run("systemd-analyze", "security", "--no-pager", unit).stdout
        match = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d)", text)
        assert match, text
        assert float(match.group(1)) <= highest, text


def free_port() -> int:
    """A free TCP port on loopback: the container shares the host's network namespace."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_the_serve_unit_serves_a_pull_to_skopeo(
    request: pytest.FixtureRequest,
    installed: BootedContainer,
    published_images: dict[str, PublishedImage],
    tmp_path: Path,
) -> None:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        require_component(request.config, "needs skopeo on the host (apt-get install skopeo)")
    assert skopeo is not None
    assert start(installed, CACHE_UNIT)["Result"] == "success"  # the cache has the images
    # Port 5000 may be taken on the host, whose network the container shares: the same
    # command line as the unit's, on a free loopback port (the README's kind of drop-in).
    port = free_port()
    dropin = installed.root / f"etc/systemd/system/{SERVE_UNIT}.d/port.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(
        "[Service]\nExecStart=\n"
        f"ExecStart=/usr/bin/forklift-boot cache serve --listen 127.0.0.1:{port}\n"
    )
    try:
        installed.run("systemctl", "daemon-reload")
        # Type=notify: `systemctl start` returns once forklift-boot sent READY=1.
        installed.run("systemctl", "start", SERVE_UNIT, timeout=120)
        props = show(installed, SERVE_UNIT)
        assert props["ActiveState"] == "active", last_run_journal(installed, SERVE_UNIT)
        cache = "/var/cache/forklift/images"
        assert props["StatusText"] == f"serving {cache} at http://127.0.0.1:{port}"

        # The sandbox: a transient user without any capability.
        pid = installed.run("systemctl", "show", SERVE_UNIT, "-p", "MainPID", "--value")
        status = installed.run("cat", f"/proc/{pid.stdout.strip()}/status").stdout
        fields = dict(line.split(":", 1) for line in status.splitlines())
        assert fields["Uid"].split()[0] != "0", fields["Uid"]
        assert int(fields["CapEff"], 16) == 0, status
        assert int(fields["CapBnd"], 16) == 0, status

        alpha, delta = published_images["alpha"], published_images["delta"]
        for source, image in (
            (f"library/alpha:{alpha.tag}", alpha),  # Docker Hub names: library/NAME
            # A registry with a port: HOST_PORT/path.
            (f"{delta.name.replace(':', '_', 1)}:{delta.tag}", delta),
        ):
            dest = tmp_path / image.registry_repo.replace("/", "_")
            result = subprocess.run(
                [
                    skopeo,
                    "copy",
                    "--src-tls-verify=false",
                    f"docker://127.0.0.1:{port}/{source}",
                    f"oci:{dest}:pulled",
                ],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            # Copied out of the container's classic store: the image ID (the config's digest)
            # survives, and skopeo checked every blob's digest on the way.
            index = json.loads((dest / "index.json").read_text())
            manifest_digest = index["manifests"][0]["digest"].split(":")[1]
            manifest = json.loads((dest / "blobs/sha256" / manifest_digest).read_text())
            assert manifest["config"]["digest"] == image.image_id, source
            assert len(manifest["layers"]) == len(image.diff_ids)
        journal = last_run_journal(installed, SERVE_UNIT)
        assert "Traceback" not in journal, journal
    finally:
        installed.run("systemctl", "stop", SERVE_UNIT, check=False)
        dropin.unlink()
        installed.run("systemctl", "daemon-reload")
    # SIGTERM is the way to stop a server: exit code 0, no failed unit.
    props = show(installed, SERVE_UNIT)
    assert (props["ActiveState"], props["Result"]) == ("inactive", "success"), props


def test_the_cache_units_sandbox_keeps_containerd_and_the_cache_on_one_mount(
    installed: BootedContainer,
) -> None:
    # Hard links from containerd's content store into the cache (docs/architecture.md,
    # "Docker's stores") work only within one mount: a sandbox with ReadWritePaths= for both
    # would make them two (EXDEV). The unit's own sandbox, with ln instead of forklift-boot.
    probe = "/var/lib/containerd/fb-link-probe"
    linked = "/var/cache/forklift/fb-link-probe"
    installed.run("sh", "-c", f"mkdir -p /var/cache/forklift && echo probe > {probe}")
    dropin = installed.root / f"etc/systemd/system/{CACHE_UNIT}.d/link.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    try:
        dropin.write_text(f"[Service]\nExecStart=\nExecStart=/bin/ln {probe} {linked}\n")
        installed.run("systemctl", "daemon-reload")
        props = start(installed, CACHE_UNIT, check=False)
        assert props["Result"] == "success", last_run_journal(installed, CACHE_UNIT)
        assert installed.run("stat", "-c", "%h", probe).stdout.strip() == "2"
        installed.run("rm", linked)

        # The check catches the sandbox that splits them.
        dropin.write_text(
            f"[Service]\nExecStart=\nExecStart=/bin/ln {probe} {linked}\n"
            "ProtectSystem=strict\nReadWritePaths=/var/cache/forklift /var/lib/containerd\n"
        )
        installed.run("systemctl", "daemon-reload")
        props = start(installed, CACHE_UNIT, check=False)
        assert props["Result"] == "exit-code"
        journal = last_run_journal(installed, CACHE_UNIT, until="Invalid cross-device link")
        assert "Invalid cross-device link" in journal, journal
    finally:
        dropin.unlink()
        installed.run("systemctl", "daemon-reload")
        installed.run("rm", "-f", probe, linked)


def test_the_oneshot_units_move_images_through_containerd(
    installed: BootedContainer, refs: list[str]
) -> None:
    # Their sandboxes leave `ctr` (a Go program, under the same system call filter) and
    # containerd's socket working: from the cache into containerd, and from there into a cache.
    assert start(installed, CACHE_UNIT)["Result"] == "success"
    load_dropin = installed.root / f"etc/systemd/system/{LOAD_UNIT}.d/containerd.conf"
    cache_dropin = installed.root / f"etc/systemd/system/{CACHE_UNIT}.d/containerd.conf"
    for dropin in (load_dropin, cache_dropin):
        dropin.parent.mkdir(parents=True, exist_ok=True)
    load_dropin.write_text(
        "[Service]\nExecStart=\n"
        "ExecStart=/usr/bin/forklift-boot load-img --into containerd --namespace fbtest\n"
    )
    cache_dropin.write_text(
        "[Service]\nExecStart=\nExecStart=/usr/bin/forklift-boot cache-img --from containerd"
        " --namespace fbtest --cache-dir /var/cache/fb-ctr\n"
    )
    try:
        installed.run("systemctl", "daemon-reload")
        props = start(installed, LOAD_UNIT, check=False)
        journal = last_run_journal(installed, LOAD_UNIT)
        assert props["Result"] == "success", journal
        assert "Traceback" not in journal, journal
        names = installed.run("ctr", "-n", "fbtest", "images", "ls", "-q").stdout.split()
        assert names, journal

        props = start(installed, CACHE_UNIT, check=False)
        journal = last_run_journal(installed, CACHE_UNIT)
        assert props["Result"] == "success", journal
        assert "Traceback" not in journal, journal
        assert "cached 5/5 images (5 new)" in journal, journal
        listing = json.loads(
            installed.run(
                "forklift-boot", "cache", "ls-img", "--json", "--cache-dir", "/var/cache/fb-ctr"
            ).stdout
        )
        assert {ref for image in listing["images"] for ref in image["refs"]} == set(refs)
        # Under the unit's sandbox, the layers are containerd's own files, hard-linked.
        cache = installed.root / "var/cache/fb-ctr"
        content = installed.root / "var/lib/containerd/io.containerd.content.v1.content"
        layers = {
            str(layer["digest"]).removeprefix("sha256:")
            for manifest, _ in entries(cache).values()
            for layer in manifest_layers(cache, manifest)
        }
        assert layers
        for hex_digest in layers:
            blob, stored = (
                (cache / "blobs/sha256" / hex_digest).stat(),
                (content / "blobs/sha256" / hex_digest).stat(),
            )
            assert (blob.st_dev, blob.st_ino) == (stored.st_dev, stored.st_ino), hex_digest
            assert blob.st_nlink >= 2
    finally:
        load_dropin.unlink()
        cache_dropin.unlink()
        installed.run("systemctl", "daemon-reload")
        installed.run("rm", "-rf", "/var/cache/fb-ctr")
        installed.run(
            "sh", "-c", "ctr -n fbtest images ls -q | xargs -r ctr -n fbtest images rm", check=False
        )


def test_read_through_with_the_fetch_drop_in(
    installed: BootedContainer, registry: Registry
) -> None:
    """The README's drop-in turns read-through on: a stage store's image that neither Docker
    nor the cache has comes from its registry, a moved tag is followed, and with the registry
    gone the cache answers, within the bounded wait."""
    repo = "fbread/unit"
    first, second = (
        oci.craft_image([{"app/version": f"{n}\n".encode()}]) for n in ("unit-1", "unit-2")
    )
    oci.push_image(registry.url, repo, "1", first)
    ref = f"{registry.host}/{repo}:1"
    stages = installed.root / "var/lib/forklift/rt-stages"
    (stages / "1").mkdir(parents=True, exist_ok=True)
    (stages / "1/forklift-bundle.yml").write_text(
        "forklift-version: v0.8.0-alpha.6\n"
        f"exports:\n  apps/demo:\n    compose-app:\n      images:\n        - {ref}\n"
    )
    (stages / "forklift-stage-store.yml").write_text("staged:\n  next: 1\n")
    dropin = installed.root / f"etc/systemd/system/{LOAD_UNIT}.d/fetch.conf"
    dropin.parent.mkdir(parents=True, exist_ok=True)
    dropin.write_text(
        "[Service]\n"
        "Environment=FORKLIFT_STAGE_STORE=/var/lib/forklift/rt-stages\n"
        "Environment=FORKLIFT_BOOT_CACHE_DIR=/var/cache/fb-rt\n"
        "ExecStart=\n"
        "ExecStart=/usr/bin/forklift-boot load-img --fetch newer\n"
    )

    def image_id() -> str:
        return installed.run("docker", "image", "inspect", "-f", "{{.Id}}", ref).stdout.strip()

    try:
        installed.run("systemctl", "daemon-reload")
        props = start(installed, LOAD_UNIT)
        journal = last_run_journal(installed, LOAD_UNIT)
        assert (props["Result"], props["ExecMainStatus"]) == ("success", "0"), journal
        assert props["StatusText"].startswith("1/1 images ready in Docker (1 loaded"), props
        assert "1 from registries, 0 from the cache" in props["StatusText"]
        assert image_id() == first.image_id

        oci.push_image(registry.url, repo, "1", second)  # the tag moves
        props = start(installed, LOAD_UNIT)
        journal = last_run_journal(installed, LOAD_UNIT)
        assert props["Result"] == "success", journal
        assert "1 from registries" in props["StatusText"], props
        assert image_id() == second.image_id
        listing = json.loads(
            installed.run(
                "forklift-boot", "cache", "ls-img", "--cache-dir", "/var/cache/fb-rt", "--json"
            ).stdout
        )
        assert {image["name"] for image in listing["images"]} == {
            ref,
            f"{registry.host}/{repo}@{first.manifest.digest}",
        }

        installed.run("docker", "rmi", ref)
        with registry.offline():
            props = start(installed, LOAD_UNIT)
        journal = last_run_journal(installed, LOAD_UNIT)
        assert props["Result"] == "success", journal
        assert "0 from registries, 1 from the cache" in props["StatusText"], props
        assert journal.count("registries can't be reached") == 1, journal
        took = int(props["ExecMainExitTimestampMonotonic"]) - int(
            props["ExecMainStartTimestampMonotonic"]
        )
        print(f"\nload unit with --fetch newer, registry stopped: {took / 1e6:.2f} s")
        assert took < 60_000_000  # a hang guard; the lookup's own bound is 10 s
        assert image_id() == second.image_id
    finally:
        dropin.unlink()
        installed.run("systemctl", "daemon-reload")
        installed.run("rm", "-rf", "/var/cache/fb-rt", "/var/lib/forklift/rt-stages")
        installed.run("docker", "rmi", "-f", ref, check=False)
