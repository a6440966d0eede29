"""Settings and default paths; the only user of platformdirs and of the environment's defaults."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import platformdirs

# The stage store of PlanktoScope OS and openUC2's OS (a convention of those OSes, not Forklift's).
SYSTEM_STAGE_STORE = Path("/var/lib/forklift/stages")
SYSTEM_CACHE_DIR = Path("/var/cache/forklift/images")
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"


@dataclass(frozen=True)
class Settings:
    workspace_dir: Path
    stage_store_dir: Path
    cache_dir: Path
    platform: str | None
    docker_host: str
    notify_socket: bool  # systemd listens for sd_notify messages (NOTIFY_SOCKET is set)
    is_systemd_unit: bool  # running as a systemd service (INVOCATION_ID is set)
    # Docker's client config (config.json: registry credentials, credential helpers).
    docker_config_dir: Path | None = None
    # --workspace or FORKLIFT_WORKSPACE named the workspace (rather than $HOME by default).
    workspace_given: bool = False


def workspace_dir(flag: str | None, env: Mapping[str, str]) -> Path:
    """``--workspace`` > ``FORKLIFT_WORKSPACE`` > ``$HOME``, as Forklift resolves it."""
    if flag:
        return Path(flag)
    if env.get("FORKLIFT_WORKSPACE"):
        return Path(env["FORKLIFT_WORKSPACE"])
    if env.get("HOME"):
        return Path(env["HOME"])
    try:
        return Path.home()
    except RuntimeError:
        # No $HOME and no passwd entry (systemd's DynamicUser=): Debian's name for "no home";
        # only a pallet run needs a workspace, and it then says this one doesn't exist.
        return Path("/nonexistent")


def stage_store_dir(
    flag: str | None,
    env: Mapping[str, str],
    workspace: Path,
    system_store: Path = SYSTEM_STAGE_STORE,
) -> Path:
    """``--stage-store`` > ``FORKLIFT_STAGE_STORE`` > the OS's store > the workspace's."""
    if flag:
        return Path(flag)
    if env.get("FORKLIFT_STAGE_STORE"):
        return Path(env["FORKLIFT_STAGE_STORE"])
    if system_store.is_dir():
        return system_store
    return workspace / ".local/share/forklift/stages"


def cache_dir(
    flag: str | None,
    env: Mapping[str, str],
    *,
    is_root: bool,
    system_cache: Path = SYSTEM_CACHE_DIR,
) -> Path:
    """``--cache-dir`` > ``FORKLIFT_BOOT_CACHE_DIR`` > systemd's ``$CACHE_DIRECTORY`` >
    ``<FORKLIFT_WORKSPACE>/.cache/forklift/images`` > the system cache as root > the user's."""
    if flag:
        return Path(flag)
    for variable in ("FORKLIFT_BOOT_CACHE_DIR", "CACHE_DIRECTORY"):
        if env.get(variable):
            # $CACHE_DIRECTORY may list several directories separated by colons.
            return Path(env[variable].split(":")[0])
    if env.get("FORKLIFT_WORKSPACE"):
        return Path(env["FORKLIFT_WORKSPACE"]) / ".cache/forklift/images"
    if is_root:
        return system_cache
    # platformdirs 2.6 (Debian bookworm) has user_cache_dir but no site_cache_dir.
    return Path(platformdirs.user_cache_dir("forklift")) / "images"


def docker_config_dir(env: Mapping[str, str]) -> Path | None:
    """``$DOCKER_CONFIG``, else ``~/.docker``, where the Docker CLI keeps config.json."""
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"])
    if env.get("HOME"):
        return Path(env["HOME"]) / ".docker"
    return None


def dpkg_architecture() -> str | None:
    """``dpkg --print-architecture`` (the OS's architecture, armhf on a 64-bit Pi kernel), or
    None where there is no dpkg."""
    try:
        result = subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = result.stdout.decode("ascii", "replace").strip()
    return text if result.returncode == 0 and text else None


def load_settings(
    *,
    workspace: str | None,
    stage_store: str | None,
    cache: str | None,
    platform: str | None,
    env: Mapping[str, str],
) -> Settings:
    ws = workspace_dir(workspace, env)
    return Settings(
        workspace_dir=ws,
        stage_store_dir=stage_store_dir(stage_store, env, ws),
        cache_dir=cache_dir(cache, env, is_root=os.geteuid() == 0),
        platform=platform or env.get("FORKLIFT_PLATFORM") or None,
        docker_host=env.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST,
        notify_socket=bool(env.get("NOTIFY_SOCKET")),
        is_systemd_unit=bool(env.get("INVOCATION_ID")),
        docker_config_dir=docker_config_dir(env),
        workspace_given=bool(workspace or env.get("FORKLIFT_WORKSPACE")),
    )
