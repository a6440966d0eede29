"""The systemd units (systemd/) and the Debian package (packaging/debian, scripts/build-deb).

Static checks of the unit files, `systemd-analyze verify` of them alone and in the boot
transaction, and a real package build checked with dpkg-deb. The units' behaviour in a booted
systemd belongs to the system tests (tests/system).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO_DIR, require_component

UNITS_DIR = REPO_DIR / "systemd"
DEBIAN_DIR = REPO_DIR / "packaging" / "debian"
CACHE_UNIT = "forklift-boot-cache-img.service"
LOAD_UNIT = "forklift-boot-load-img.service"
UNITS = {CACHE_UNIT: "cache-img", LOAD_UNIT: "load-img"}
# Debian's tools and Debian's python3 (a pyenv python3 first on PATH lacks the python3-* packages).
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

Unit = dict[str, list[tuple[str, str]]]


def parse_unit(text: str) -> Unit:
    """A unit file as systemd reads it: sections of (key, value) lines, repeats kept in order."""
    sections: Unit = {}
    section: list[tuple[str, str]] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        assert not line.endswith("\\"), f"line {number}: continuation lines are not used here"
        if line.startswith("["):
            assert line.endswith("]"), f"line {number}: {line!r}"
            section = sections.setdefault(line[1:-1], [])
            continue
        assert section is not None, f"line {number}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep, f"line {number}: not a key=value line: {line!r}"
        section.append((key.strip(), value.strip()))
    return sections


def values(unit: Unit, section: str, key: str) -> list[str]:
    """Every value of a key; space-separated list settings (After=, Wants=, ...) split."""
    return [word for k, v in unit.get(section, []) if k == key for word in v.split()]


def setting(unit: Unit, section: str, key: str) -> str | None:
    """The value that counts (the last one), or None when the key is not set."""
    found = [v for k, v in unit.get(section, []) if k == key]
    return found[-1] if found else None


def timespan_seconds(text: str) -> float:
    """A systemd time span ("15min", "1h 30min", "900") in seconds; infinity for "infinity"."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
    if text.strip() == "infinity":
        return float("inf")
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    assert parts, text
    assert "".join(n + u for n, u in parts) == text.replace(" ", ""), text
    return sum(float(number) * units[unit or "s"] for number, unit in parts)


@pytest.fixture(scope="module", params=sorted(UNITS))
def unit_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture(scope="module")
def unit(unit_name: str) -> Unit:
    return parse_unit((UNITS_DIR / unit_name).read_text())


# Static checks of the unit files


def test_the_units_are_the_two_of_the_package() -> None:
    assert sorted(p.name for p in UNITS_DIR.iterdir()) == sorted(UNITS)


def test_oneshot_that_every_start_runs_again(unit: Unit) -> None:
    assert setting(unit, "Service", "Type") == "oneshot"
    # With RemainAfterExit=yes a second `systemctl start` would do nothing.
    assert setting(unit, "Service", "RemainAfterExit") in {None, "no"}


def test_runs_the_command(unit: Unit, unit_name: str) -> None:
    assert values(unit, "Service", "ExecStart") == ["/usr/bin/forklift-boot", UNITS[unit_name]]
    assert setting(unit, "Service", "SyslogIdentifier") == "forklift-boot"
    assert "man:forklift-boot(1)" in values(unit, "Unit", "Documentation")


def test_notifications_and_a_finite_start_timeout(unit: Unit) -> None:
    # forklift-boot sends STATUS= and EXTEND_TIMEOUT_USEC= from its main process.
    assert setting(unit, "Service", "NotifyAccess") == "main"
    timeouts = [setting(unit, "Service", k) for k in ("TimeoutStartSec", "TimeoutSec")]
    timeout = next((t for t in timeouts if t is not None), None)
    # A oneshot has no start timeout unless it sets one.
    assert timeout is not None, "set TimeoutStartSec="
    assert 60 <= timespan_seconds(timeout) < float("inf")


def test_wants_docker_but_survives_its_restart(unit: Unit) -> None:
    assert "docker.service" in values(unit, "Unit", "Wants")
    assert "docker.service" in values(unit, "Unit", "After")
    # forklift-boot stops docker.service itself: any of these would stop the unit with it.
    for key in ("Requires", "Requisite", "BindsTo", "PartOf"):
        assert not {"docker.service", "docker.socket"} & set(values(unit, "Unit", key)), key


def test_enabled_in_multi_user_target(unit: Unit) -> None:
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


def test_never_manages_the_cache_directory(unit: Unit) -> None:
    # The cache may be the only copy of an image; `systemctl clean` would wipe a CacheDirectory=.
    for key in ("CacheDirectory", "StateDirectory", "RuntimeDirectory", "LogsDirectory"):
        assert setting(unit, "Service", key) is None, key


def test_hardening_leaves_the_cache_and_docker_writable(unit: Unit) -> None:
    # The cache can be anywhere (/var/cache, a workspace under /home, a USB stick), and Docker's
    # data root must stay writable: no read-only or hidden file systems beyond /usr, /boot, /etc.
    assert setting(unit, "Service", "ProtectSystem") in {None, "no", "yes", "full"}
    assert setting(unit, "Service", "ProtectHome") in {None, "no"}
    for key in ("ReadOnlyPaths", "InaccessiblePaths", "TemporaryFileSystem", "RootDirectory"):
        assert setting(unit, "Service", key) is None, key
    # The Docker socket (AF_UNIX), systemd's D-Bus and /proc of dockerd must stay reachable.
    for key in ("PrivateNetwork", "PrivateUsers", "ProtectProc", "RestrictAddressFamilies"):
        assert setting(unit, "Service", key) in {None, "no", "default"}, key


def test_the_header_shows_configuration_by_drop_in() -> None:
    for name in UNITS:
        text = (UNITS_DIR / name).read_text()
        assert "Environment=FORKLIFT_STAGE_STORE=" in text
        assert "Environment=FORKLIFT_BOOT_CACHE_DIR=" in text


def test_load_img_runs_before_forklift_applies_and_restarts_docker_after_a_kill() -> None:
    unit = parse_unit((UNITS_DIR / LOAD_UNIT).read_text())
    assert "forklift-apply.service" in values(unit, "Unit", "Before")
    # A timeout kills forklift-boot and its watchdog, possibly while Docker is stopped.
    stop_post = setting(unit, "Service", "ExecStopPost")
    assert stop_post is not None
    command = stop_post.split()
    # "-": ignore a failure; --no-block: Docker's start job waits for this unit's stop job.
    assert command[0] == "-/bin/systemctl"
    assert command[1:3] == ["start", "--no-block"]
    assert set(command[3:]) == {"docker.socket", "docker.service"}
    assert "multi-user.target" not in values(unit, "Unit", "After")


def test_cache_img_runs_once_the_system_is_up() -> None:
    unit = parse_unit((UNITS_DIR / CACHE_UNIT).read_text())
    after = values(unit, "Unit", "After")
    assert "multi-user.target" in after
    assert LOAD_UNIT in after
    # Copying out never stops Docker.
    assert setting(unit, "Service", "ExecStopPost") is None


# systemd-analyze verify


def systemd_analyze(request: pytest.FixtureRequest) -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        require_component(request.config, "needs systemd-analyze (apt-get install systemd)")
    assert path is not None
    return path


def verify(
    analyze: str, units: list[str], cwd: Path, env: dict[str, str] | None = None
) -> tuple[int, list[str]]:
    """`systemd-analyze verify`: its exit code and every line it prints (it warns with rc 0)."""
    result = subprocess.run(
        [analyze, "verify", *units],
        check=False,
        cwd=cwd,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, (result.stdout + result.stderr).splitlines()


def copy_units(dest: Path, units_dir: Path, forklift_boot: str) -> None:
    """The units with ExecStart= pointing at an existing program (verify checks that it runs)."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in UNITS:
        text = (units_dir / name).read_text()
        (dest / name).write_text(text.replace("/usr/bin/forklift-boot", forklift_boot))


def test_systemd_analyze_verify_prints_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    analyze = systemd_analyze(request)
    copy_units(tmp_path, UNITS_DIR, "/bin/true")
    # --man=no: the man page is checked with the built package (test_the_package_...).
    rc, lines = verify(analyze, ["--man=no", *(f"./{name}" for name in UNITS)], tmp_path)
    assert (rc, lines) == (0, [])


def enable(unit_dir: Path, names: list[str]) -> None:
    """What `systemctl enable` does for WantedBy=multi-user.target, in a unit directory."""
    wants = unit_dir / "multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    for name in names:
        (wants / name).symlink_to(f"../{name}")


def test_the_boot_transaction_has_no_ordering_cycle(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # Both units enabled in multi-user.target, on top of this machine's units (docker.service):
    # cache-img is ordered After=multi-user.target, which wants it. systemd then leaves out the
    # target's default After= on it, so this is no cycle; verify reports cycles it finds in the
    # transaction that starts multi-user.target.
    analyze = systemd_analyze(request)
    copy_units(tmp_path, UNITS_DIR, "/bin/true")
    enable(tmp_path, sorted(UNITS))
    env = {"SYSTEMD_UNIT_PATH": f"{tmp_path}:"}  # the trailing ":" appends the default paths
    rc, lines = verify(analyze, ["--man=no", "multi-user.target", *UNITS], tmp_path, env)
    assert (rc, lines) == (0, [])

    # The check finds a cycle when there is one: a unit of multi-user.target after cache-img.
    (tmp_path / "after-cache.service").write_text(
        f"[Unit]\nAfter={CACHE_UNIT}\n[Service]\nType=oneshot\nExecStart=/bin/true\n"
    )
    enable(tmp_path, ["after-cache.service"])
    rc, lines = verify(analyze, ["--man=no", "multi-user.target"], tmp_path, env)
    assert any("ordering cycle" in line for line in lines), lines


# The Debian package


def pyproject_version() -> str:
    with (REPO_DIR / "pyproject.toml").open("rb") as file:
        version: str = tomllib.load(file)["project"]["version"]
    return version


def test_changelog_version_is_pyprojects() -> None:
    first = (DEBIAN_DIR / "changelog").read_text().splitlines()[0]
    match = re.fullmatch(r"forklift-boot \(([^)]+)\) \S+; urgency=\S+", first)
    assert match, first
    assert match.group(1) == pyproject_version()


def test_build_deb_refuses_a_changelog_that_disagrees(tmp_path: Path) -> None:
    # scripts/build-deb checks the versions first, before building anything.
    (tmp_path / "scripts").mkdir()
    shutil.copy2(REPO_DIR / "scripts" / "build-deb", tmp_path / "scripts")
    shutil.copy2(REPO_DIR / "pyproject.toml", tmp_path)
    shutil.copytree(DEBIAN_DIR, tmp_path / "packaging" / "debian")
    changelog = tmp_path / "packaging" / "debian" / "changelog"
    changelog.write_text(changelog.read_text().replace(f"({pyproject_version()})", "(9.9.9)", 1))
    result = subprocess.run(
        [str(tmp_path / "scripts" / "build-deb"), str(tmp_path / "out")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "9.9.9" in result.stderr
    assert pyproject_version() in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def deb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/build-deb's .deb (about 10 s with lintian)."""
    for tool in ("dpkg-buildpackage", "lintian", "dh_python3"):
        if shutil.which(tool, path=DEBIAN_PATH) is None:
            require_component(
                request.config,
                f"needs {tool} (scripts/setup-env installs debhelper, dh-python, "
                "pybuild-plugin-pyproject, python3-all and lintian)",
            )
    out = tmp_path_factory.mktemp("deb")
    result = subprocess.run(
        [str(REPO_DIR / "scripts" / "build-deb"), str(out)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path == out / f"forklift-boot_{pyproject_version()}_all.deb"
    assert path.is_file()
    return path


def dpkg_deb(*args: str) -> str:
    return subprocess.run(
        ["dpkg-deb", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def relations(field: str) -> set[str]:
    return {" ".join(item.split()) for item in field.split(",")}


def test_the_package_control_fields(deb: Path) -> None:
    fields = {
        key: value
        for key, _, value in (
            line.partition(": ")
            for line in dpkg_deb("-f", str(deb), "Package", "Version", "Architecture").splitlines()
        )
    }
    assert fields == {
        "Package": "forklift-boot",
        "Version": pyproject_version(),
        "Architecture": "all",
    }
    depends = relations(dpkg_deb("-f", str(deb), "Depends"))
    # Debian's packages (never pip) with pyproject.toml's floors, which are what bookworm ships
    # (dh_python3 alone would drop most of them), and a container engine.
    with (REPO_DIR / "pyproject.toml").open("rb") as file:
        requirements = tomllib.load(file)["project"]["dependencies"]
    debian_names = {"docker": "python3-docker", "pyyaml": "python3-yaml"}
    for requirement in requirements:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+)", requirement)
        assert match, f"{requirement}: give a floor that bookworm ships"
        name, floor = match.groups()
        package = debian_names.get(name.lower(), f"python3-{name.lower()}")
        assert f"{package} (>= {floor})" in depends, (requirement, depends)
    assert "docker.io | docker-ce | containerd" in depends
    assert all(d.startswith(("python3", "docker.io")) for d in depends), depends
    # The optional extras (PyPI's isal) never become Depends: of the .deb; Debian's isal
    # package (the igzip program) is recommended in their place.
    assert not [d for d in depends if "isal" in d], depends
    assert {"zstd", "isal"} <= relations(dpkg_deb("-f", str(deb), "Recommends"))


def members(deb: Path) -> Iterator[tarfile.TarInfo]:
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE) as p:
        assert p.stdout is not None
        with tarfile.open(fileobj=p.stdout, mode="r|") as tar:
            yield from tar


def test_the_package_files(deb: Path) -> None:
    names = {member.name.removeprefix("./") for member in members(deb)}
    site = "usr/lib/python3/dist-packages"
    assert {
        "usr/bin/forklift-boot",
        f"{site}/forklift_boot/__init__.py",
        f"{site}/forklift_boot/cli/__init__.py",
        f"{site}/forklift_boot/stores/docker/restart_guard.py",
        f"lib/systemd/system/{CACHE_UNIT}",
        f"lib/systemd/system/{LOAD_UNIT}",
        "usr/share/man/man1/forklift-boot.1.gz",
        "usr/share/doc/forklift-boot/copyright",
    } <= names
    assert not [n for n in names if "__pycache__" in n or n.startswith(f"{site}/tests")]
    assert not [n for n in names if n.endswith(".service") and not n.startswith("lib/systemd/")]


def test_the_package_ships_the_units_unchanged_enabled_and_not_started(
    deb: Path, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    dpkg_deb("-x", str(deb), str(root))
    for name in UNITS:
        assert (root / "lib/systemd/system" / name).read_bytes() == (UNITS_DIR / name).read_bytes()
    dpkg_deb("-e", str(deb), str(tmp_path / "control"))
    postinst = (tmp_path / "control" / "postinst").read_text()
    for name in UNITS:
        assert f"deb-systemd-helper enable '{name}'" in postinst
    # Never started by the installation (an OS image is built in a chroot); a run in progress
    # during an upgrade is re-run (try-restart acts on running units only).
    assert "deb-systemd-invoke start" not in postinst
    assert re.findall(r"deb-systemd-invoke (\S+)", postinst) == ["try-restart"]


def test_the_packaged_command_runs_on_debians_python(deb: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    dpkg_deb("-x", str(deb), str(root))
    env = {"PATH": DEBIAN_PATH, "PYTHONPATH": str(root / "usr/lib/python3/dist-packages")}
    result = subprocess.run(
        [str(root / "usr/bin/forklift-boot"), "--version"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout.strip()) == (0, f"forklift-boot {pyproject_version()}")
    assert (root / "usr/bin/forklift-boot").read_text().startswith("#!/usr/bin/python3\n")


def test_the_packaged_units_verify_with_their_man_page(
    request: pytest.FixtureRequest, deb: Path, tmp_path: Path
) -> None:
    analyze = systemd_analyze(request)
    root = tmp_path / "root"
    dpkg_deb("-x", str(deb), str(root))
    # ExecStart= at the unpacked script, a wrapper that finds the unpacked modules.
    wrapper = tmp_path / "forklift-boot"
    wrapper.write_text(
        f"#!/bin/sh\nPYTHONPATH={root}/usr/lib/python3/dist-packages exec "
        f'{root}/usr/bin/forklift-boot "$@"\n'
    )
    wrapper.chmod(0o755)
    units = tmp_path / "units"
    copy_units(units, root / "lib/systemd/system", str(wrapper))
    # Documentation=man:forklift-boot(1) resolves to the packaged page.
    env = {"MANPATH": str(root / "usr/share/man")}
    rc, lines = verify(analyze, [f"./{name}" for name in UNITS], units, env)
    assert (rc, lines) == (0, [])
    if shutil.which("man"):  # verify looked the page up with man(1), and found this one
        man = subprocess.run(
            ["man", "-w", "forklift-boot"],
            check=False,
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert man.stdout.strip() == str(root / "usr/share/man/man1/forklift-boot.1.gz")
