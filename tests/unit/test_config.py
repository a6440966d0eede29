"""Default paths: flags over Forklift's environment variables over defaults."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from forklift_boot import config


def test_workspace_precedence() -> None:
    env = {"FORKLIFT_WORKSPACE": "/ws", "HOME": "/home/pi"}
    assert config.workspace_dir("/flag", env) == Path("/flag")
    assert config.workspace_dir(None, env) == Path("/ws")
    assert config.workspace_dir(None, {"HOME": "/home/pi"}) == Path("/home/pi")


def test_stage_store_precedence(tmp_path: Path) -> None:
    system = tmp_path / "var/lib/forklift/stages"
    ws = tmp_path / "ws"
    env = {"FORKLIFT_STAGE_STORE": "/env"}
    assert config.stage_store_dir("/flag", env, ws, system) == Path("/flag")
    assert config.stage_store_dir(None, env, ws, system) == Path("/env")
    # The OS's store only when it exists; otherwise the workspace's, as Forklift's default.
    assert config.stage_store_dir(None, {}, ws, system) == ws / ".local/share/forklift/stages"
    system.mkdir(parents=True)
    assert config.stage_store_dir(None, {}, ws, system) == system


def test_cache_dir_precedence(tmp_path: Path) -> None:
    system = tmp_path / "var/cache/forklift/images"
    assert config.cache_dir("/flag", {"FORKLIFT_BOOT_CACHE_DIR": "/e"}, is_root=True) == Path(
        "/flag"
    )
    assert config.cache_dir(None, {"FORKLIFT_BOOT_CACHE_DIR": "/e"}, is_root=True) == Path("/e")
    assert config.cache_dir(None, {"CACHE_DIRECTORY": "/c1:/c2"}, is_root=True) == Path("/c1")
    ws_env = {"FORKLIFT_WORKSPACE": "/ws"}
    assert config.cache_dir(None, ws_env, is_root=True) == Path("/ws/.cache/forklift/images")
    assert config.cache_dir(None, {}, is_root=True, system_cache=system) == system
    user = config.cache_dir(None, {}, is_root=False, system_cache=system)
    assert user.parts[-2:] == ("forklift", "images")
    assert user != system


def test_no_home_and_no_passwd_entry_is_no_workspace_not_a_traceback() -> None:
    """systemd's DynamicUser= runs a service as a user with no passwd entry and no $HOME."""
    if os.geteuid() != 0:
        pytest.fail("needs root, to become a user with no passwd entry", pytrace=False)
    uid = 61234
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.setuid(uid)
            os.environ.pop("HOME", None)
            answer = str(config.workspace_dir(None, {}))
        except BaseException as err:
            answer = f"error: {err!r}"
        os.write(write_end, answer.encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(child, 0)
    assert answer == "/nonexistent"
