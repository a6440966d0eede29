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
SERVE_UNIT = "forklift-boot-serve.service"
# The oneshot units and their commands.
UNITS = {CACHE_UNIT: "cache-img", LOAD_UNIT: "load-img"}
ALL_UNITS = [CACHE_UNIT, LOAD_UNIT, SERVE_UNIT]
# The highest exposure `systemd-analyze security` may give each unit, in its tenths (issue 13:
# the oneshot units 5.0 or lower, the server 3.0 or lower; docs/systemd-units.md has the scores).
EXPOSURE_THRESHOLDS = {CACHE_UNIT: 50, LOAD_UNIT: 50, SERVE_UNIT: 30}
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


def test_the_units_are_the_three_of_the_package() -> None:
    assert sorted(p.name for p in UNITS_DIR.iterdir()) == sorted(ALL_UNITS)


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
    # ReadWritePaths= and BindPaths= too: each entry is a mount of its own, and link() from
    # containerd's content store into the cache fails across two mounts (EXDEV).
    for key in (
        "ReadOnlyPaths",
        "ReadWritePaths",
        "BindPaths",
        "InaccessiblePaths",
        "TemporaryFileSystem",
        "RootDirectory",
    ):
        assert setting(unit, "Service", key) is None, key
    # The Docker socket, systemd's D-Bus, registries; root (the Docker socket is root's).
    for key in ("PrivateNetwork", "PrivateUsers", "DynamicUser", "IPAddressDeny"):
        assert setting(unit, "Service", key) in {None, "no"}, key
    assert setting(unit, "Service", "User") in {None, "root"}
    families = set(values(unit, "Service", "RestrictAddressFamilies"))
    assert {"AF_UNIX", "AF_INET", "AF_INET6"} <= families or not families, families
    # The cache stays readable to the server's unprivileged user (forklift-boot-serve.service).
    assert setting(unit, "Service", "UMask") == "0022"


def test_load_img_may_read_dockerds_proc_entries() -> None:
    # dockerd's environment and /proc/PID/fd/1: with fewer capabilities than dockerd, the
    # kernel asks for CAP_SYS_PTRACE (ptrace access mode read), which also keeps dockerd visible
    # under ProtectProc=invisible; psutil reads /proc/stat, which ProcSubset=pid would hide.
    unit = parse_unit((UNITS_DIR / LOAD_UNIT).read_text())
    capabilities = values(unit, "Service", "CapabilityBoundingSet")
    assert "CAP_SYS_PTRACE" in capabilities, capabilities
    assert setting(unit, "Service", "ProcSubset") in {None, "all"}


def test_cache_img_may_read_dockers_layer_directories() -> None:
    # Docker's layer directories hold files of the images' own users and modes.
    unit = parse_unit((UNITS_DIR / CACHE_UNIT).read_text())
    capabilities = values(unit, "Service", "CapabilityBoundingSet")
    assert "CAP_DAC_READ_SEARCH" in capabilities, capabilities


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


def test_serve_is_a_notify_service_on_loopback() -> None:
    unit = parse_unit((UNITS_DIR / SERVE_UNIT).read_text())
    # `cache serve` sends READY=1 once it listens, from its main process.
    assert setting(unit, "Service", "Type") == "notify"
    assert setting(unit, "Service", "NotifyAccess") == "main"
    assert values(unit, "Service", "ExecStart") == [
        "/usr/bin/forklift-boot",
        "cache",
        "serve",
        "--listen",
        "127.0.0.1:5000",
    ]
    assert setting(unit, "Service", "SyslogIdentifier") == "forklift-boot"
    assert "man:forklift-boot(1)" in values(unit, "Unit", "Documentation")
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]
    # Not root: the cache is named (root's default), and the sandbox shows it read-only.
    cache = "/var/cache/forklift/images"
    # HOME: a transient user has no passwd entry (without nss-systemd), and no home.
    assert values(unit, "Service", "Environment") == [
        f"FORKLIFT_BOOT_CACHE_DIR={cache}",
        "HOME=/nonexistent",
    ]
    assert values(unit, "Service", "BindReadOnlyPaths") == [f"-{cache}"]
    for key in ("CacheDirectory", "StateDirectory", "RuntimeDirectory", "LogsDirectory"):
        assert setting(unit, "Service", key) is None, key


def test_serve_is_unprivileged_and_reads_only() -> None:
    unit = parse_unit((UNITS_DIR / SERVE_UNIT).read_text())
    assert setting(unit, "Service", "DynamicUser") == "yes"
    assert setting(unit, "Service", "ProtectSystem") == "strict"
    assert setting(unit, "Service", "CapabilityBoundingSet") == ""
    assert setting(unit, "Service", "NoNewPrivileges") == "yes"
    for key in ("ReadWritePaths", "BindPaths", "AmbientCapabilities", "SupplementaryGroups"):
        assert setting(unit, "Service", key) is None, key
    families = set(values(unit, "Service", "RestrictAddressFamilies"))
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}


def test_the_header_shows_the_drop_in_that_serves_the_network() -> None:
    text = (UNITS_DIR / SERVE_UNIT).read_text()
    assert (
        "#   ExecStart=\n#   ExecStart=/usr/bin/forklift-boot cache serve --listen 0.0.0.0:5000\n"
        in (text)
    )
    assert "#   IPAddressAllow=" in text


# systemd-analyze security


def security(
    analyze: str, unit: Path, threshold: int, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """`systemd-analyze security --offline=true` of one unit file, failing above ``threshold``."""
    return subprocess.run(
        [analyze, "security", "--offline=true", f"--threshold={threshold}", f"./{unit.name}"],
        check=False,
        cwd=cwd,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def exposure(output: str, unit_name: str) -> float:
    match = re.search(rf"Overall exposure level for {re.escape(unit_name)}: (\d+\.\d)", output)
    assert match, output
    return float(match.group(1))


@pytest.mark.parametrize("name", ALL_UNITS)
def test_exposure_stays_under_its_threshold(
    request: pytest.FixtureRequest, tmp_path: Path, name: str
) -> None:
    analyze = systemd_analyze(request)
    shutil.copy2(UNITS_DIR / name, tmp_path)
    result = security(analyze, tmp_path / name, EXPOSURE_THRESHOLDS[name], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert exposure(result.stdout, name) <= EXPOSURE_THRESHOLDS[name] / 10


def test_exposure_check_fails_without_the_sandbox(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # The same unit without its hardening directives scores above the threshold (8.1 for the
    # oneshot units before issue 13), and --threshold then fails: the check can catch a loss.
    analyze = systemd_analyze(request)
    text = (UNITS_DIR / LOAD_UNIT).read_text()
    bare = text[: text.index("# Hardening")] + text[text.index("[Install]") :]
    assert "CapabilityBoundingSet" not in bare
    (tmp_path / LOAD_UNIT).write_text(bare)
    result = security(analyze, tmp_path / LOAD_UNIT, EXPOSURE_THRESHOLDS[LOAD_UNIT], tmp_path)
    assert result.returncode != 0
    assert exposure(result.stdout, LOAD_UNIT) > 5.0


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
    for name in ALL_UNITS:
        text = (units_dir / name).read_text()
        (dest / name).write_text(text.replace("/usr/bin/forklift-boot", forklift_boot))


def test_systemd_analyze_verify_prints_nothing(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    analyze = systemd_analyze(request)
    copy_units(tmp_path, UNITS_DIR, "/bin/true")
    # --man=no: the man page is checked with the built package (test_the_package_...).
    rc, lines = verify(analyze, ["--man=no", *(f"./{name}" for name in ALL_UNITS)], tmp_path)
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
    # All three units enabled in multi-user.target, on top of this machine's units (docker.service):
    # cache-img is ordered After=multi-user.target, which wants it. systemd then leaves out the
    # target's default After= on it, so this is no cycle; verify reports cycles it finds in the
    # transaction that starts multi-user.target.
    analyze = systemd_analyze(request)
    copy_units(tmp_path, UNITS_DIR, "/bin/true")
    enable(tmp_path, ALL_UNITS)
    env = {"SYSTEMD_UNIT_PATH": f"{tmp_path}:"}  # the trailing ":" appends the default paths
    rc, lines = verify(analyze, ["--man=no", "multi-user.target", *ALL_UNITS], tmp_path, env)
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
        f"lib/systemd/system/{SERVE_UNIT}",
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
    for name in ALL_UNITS:
        assert (root / "lib/systemd/system" / name).read_bytes() == (UNITS_DIR / name).read_bytes()
    dpkg_deb("-e", str(deb), str(tmp_path / "control"))
    postinst = (tmp_path / "control" / "postinst").read_text()
    # dh_installsystemd writes one section per invocation (debian/rules has two).
    sections = re.findall(
        r"# Automatically added by dh_installsystemd.*?# End automatically", postinst, re.S
    )
    oneshot = [s for s in sections if SERVE_UNIT not in s]
    serve = [s for s in sections if SERVE_UNIT in s]
    # The oneshot units: enable, enable, reload; the server: enable where it was, start.
    assert (len(oneshot), len(serve)) == (3, 2), sections
    for name in UNITS:
        assert f"deb-systemd-helper enable '{name}'" in "".join(oneshot)
    # Never started by the installation (an OS image is built in a chroot); a run in progress
    # during an upgrade is re-run (try-restart acts on running units only).
    assert re.findall(r"deb-systemd-invoke (\S+)", "".join(oneshot)) == ["try-restart"]
    # The server ships disabled: enabled again only where it was (was-enabled) and it was
    # installed before (debian-installed); deb-systemd-invoke starts enabled units only.
    enabling = re.search(
        rf"if deb-systemd-helper debian-installed '{SERVE_UNIT}'; then.*?"
        rf"if deb-systemd-helper --quiet was-enabled '{SERVE_UNIT}'; then\s+"
        rf"# Create new symlinks, if any.\s+deb-systemd-helper enable '{SERVE_UNIT}'",
        serve[0],
        re.S,
    )
    assert enabling, serve[0]
    assert postinst.count(f"deb-systemd-helper enable '{SERVE_UNIT}'") == 1
    assert re.findall(r"deb-systemd-invoke \S+ '(\S+)'", "".join(serve)) == [SERVE_UNIT]
    # Stopped on removal: a server left running would serve on with its program gone.
    prerm = (tmp_path / "control" / "prerm").read_text()
    assert f"deb-systemd-invoke stop '{SERVE_UNIT}'" in prerm


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
    rc, lines = verify(analyze, [f"./{name}" for name in ALL_UNITS], units, env)
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
