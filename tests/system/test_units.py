"""The Debian package and its two units in a booted systemd, driven with systemctl.

The .deb is built on the host (scripts/build-deb) and installed in the booted bookworm with apt,
after boot, from Debian's packages only. Images come from a loopback registry (real digests),
pulled by the container's own dockerd; a stage store names them in all three forms.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_DIR
from tests.testbed import oci
from tests.testbed.images import PublishedImage
from tests.testbed.nspawn import ART_MOUNT, BootedContainer
from tests.testbed.registry import Registry

pytestmark = [pytest.mark.systemd, pytest.mark.docker, pytest.mark.registry]

CACHE_UNIT = "forklift-boot-cache-img.service"
LOAD_UNIT = "forklift-boot-load-img.service"
STAGES = "/var/lib/forklift/stages"


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


def last_run_journal(container: BootedContainer, unit: str) -> str:
    invocation = show(container, unit)["InvocationID"]
    return container.run(
        "journalctl", f"_SYSTEMD_INVOCATION_ID={invocation}", "-o", "cat", "--no-pager"
    ).stdout


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
    journal = last_run_journal(installed, CACHE_UNIT)
    assert "cached 5/5 images (5 new)" in journal, journal
    listing = json.loads(installed.run("forklift-boot", "cache", "ls-img", "--json").stdout)
    assert {ref for image in listing["images"] for ref in image["refs"]} == set(refs)

    ids = {published_images[n].image_id for n in ("alpha", "beta", "delta")}
    installed.run("docker", "rmi", "-f", *ids)
    with registry.offline():
        props = start(installed, LOAD_UNIT)
        assert (props["Result"], props["ExecMainStatus"]) == ("success", "0")
        journal = last_run_journal(installed, LOAD_UNIT)
        # Digest refs on the classic store: Docker restarted through systemd to record them.
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
    assert "cached 5/5 images (0 new), 0 B written" in last_run_journal(installed, CACHE_UNIT)
    props = start(installed, LOAD_UNIT)
    assert props["Result"] == "success"
    journal = last_run_journal(installed, LOAD_UNIT)
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
    boot_log = installed.journal(unit=None)
    assert "(0 loaded, 0 tagged, 5 already there), 0 B sent to Docker" in boot_log
    assert "cached 5/5 images (0 new), 0 B written" in boot_log


def test_start_timeout_is_extended_while_a_slow_copy_progresses(
    installed: BootedContainer,
) -> None:
    # A 160 MB image of random bytes, gzip-compressed into the cache, takes several seconds,
    # more than the 2 s start timeout of the drop-in; progress extends it (EXTEND_TIMEOUT_USEC).
    installed.run(
        "sh",
        "-c",
        "mkdir -p /tmp/big && head -c 160M /dev/urandom > /tmp/big/blob"
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
        check=False,
    )
    own = [line for line in (result.stdout + result.stderr).splitlines() if "forklift-boot" in line]
    assert (result.returncode, own) == (0, []), result.stderr


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
