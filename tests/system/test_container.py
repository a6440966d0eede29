"""The system-test harness itself: a booted bookworm with docker.service, driven from the host."""

from __future__ import annotations

import json
import uuid

import pytest
from pystemd.dbuslib import DBusAddress
from pystemd.systemd1 import Manager, Unit

from tests.testbed.nspawn import ART_MOUNT, BootedContainer, host_network_state

pytestmark = pytest.mark.systemd


def test_systemd_reaches_running(booted: BootedContainer) -> None:
    assert booted.system_state == "running", f"failed units: {booted.failed_units}"
    assert booted.run("systemctl", "is-system-running").stdout.strip() == "running"
    assert booted.run("hostname").stdout.strip() == "forklift-test"
    # Commands inside get a clean environment, whatever the test process has.
    env = booted.run("env").stdout.splitlines()
    assert not [line for line in env if line.startswith(("DOCKER_HOST=", "VIRTUAL_ENV="))]


def test_docker_runs_inside_and_leaves_the_host_network_alone(
    booted: BootedContainer, host_network_before: dict[str, set[str]]
) -> None:
    assert booted.run("systemctl", "is-active", "docker.service").stdout.strip() == "active"
    info = json.loads(booted.run("docker", "info", "--format", "{{json .}}").stdout)
    assert info["ServerVersion"].startswith("20.10.")
    assert info["Driver"] == "overlay2"
    networks = booted.run("docker", "network", "ls", "--format", "{{.Name}}").stdout.split()
    assert "bridge" not in networks  # daemon.json: "bridge": "none"

    # Image save and load work inside without extra nspawn flags (docker run would need them).
    booted.run(
        "sh", "-c", "tar -C /etc -c hostname | docker import - fb-harness/probe:1 >/dev/null"
    )
    booted.run("docker", "save", "-o", "/tmp/probe.tar", "fb-harness/probe:1")
    booted.run("docker", "rmi", "fb-harness/probe:1")
    assert "fb-harness/probe:1" in booted.run("docker", "load", "-i", "/tmp/probe.tar").stdout
    booted.run("docker", "rmi", "fb-harness/probe:1")
    booted.run("rm", "/tmp/probe.tar")

    # The container shares the host's network namespace: its dockerd must not have added
    # docker0 or any iptables/nftables rule there.
    after = host_network_state()
    assert "docker0" not in after["links"]
    changed = {
        key: {"added": sorted(after[key] - before), "removed": sorted(before - after[key])}
        for key, before in host_network_before.items()
        if after.get(key) != before
    }
    assert not changed


def test_oneshot_unit_runs_and_its_journal_is_readable(booted: BootedContainer) -> None:
    marker = uuid.uuid4().hex
    unit = booted.root / "etc/systemd/system/fb-harness-probe.service"
    unit.write_text(
        "[Unit]\nDescription=harness probe\nAfter=docker.service\nRequires=docker.service\n"
        "[Service]\nType=oneshot\nRemainAfterExit=yes\n"
        f"ExecStart=/bin/sh -c 'echo probe {marker}; ls {ART_MOUNT}; docker version -f ok'\n"
    )
    (booted.art_dir / "artefact.txt").write_text("x")
    try:
        booted.run("systemctl", "daemon-reload")
        booted.run("systemctl", "start", "fb-harness-probe.service")
        show = booted.run(
            "systemctl", "show", "fb-harness-probe.service", "-p", "Result,ActiveState,SubState"
        ).stdout.split()
        assert show == ["Result=success", "ActiveState=active", "SubState=exited"]
        journal = booted.journal("fb-harness-probe.service").splitlines()
        assert f"probe {marker}" in journal
        assert "artefact.txt" in journal  # the host's art_dir, read-only at /srv/art
        assert "ok" in journal
    finally:
        booted.run("systemctl", "stop", "fb-harness-probe.service", check=False)
        unit.unlink()
        booted.run("systemctl", "daemon-reload")
        (booted.art_dir / "artefact.txt").unlink()


def test_reboot_keeps_state_and_docker_comes_back(booted: BootedContainer) -> None:
    marker = uuid.uuid4().hex
    booted.run("sh", "-c", f"mkdir -p /var/lib/fb-harness && echo {marker} > /var/lib/fb-harness/m")
    old_pid = booted.systemd_pid

    assert booted.reboot() == "running", f"failed units: {booted.failed_units}"

    assert booted.systemd_pid != old_pid
    assert booted.run("cat", "/var/lib/fb-harness/m").stdout.strip() == marker
    assert booted.run("systemctl", "is-active", "docker.service").stdout.strip() == "active"
    booted.run("docker", "info", "--format", "{{.ServerVersion}}")
    # The persistent journal keeps the previous boot, up to its clean shutdown.
    previous = booted.journal("docker.service", boot=-1)
    assert "Started docker.service" in previous
    assert "Stopped docker.service" in previous
    booted.run("rm", "-r", "/var/lib/fb-harness")


def test_pystemd_on_the_host_reads_units_through_the_container_bus(
    booted: BootedContainer,
) -> None:
    assert booted.pystemd_bus_path.is_socket()
    with DBusAddress(booted.pystemd_bus_address) as bus:
        unit = Unit(b"docker.service", bus=bus)
        unit.load()
        assert unit.Unit.ActiveState == b"active"
        assert unit.Unit.SubState == b"running"
        manager = Manager(bus=bus)
        manager.load()
        assert manager.Manager.SystemState == b"running"
