"""What the testbed's daemons and containers share for finding and removing what killed test
sessions left behind: instance dirs named ``<prefix>...`` under a work dir, each holding a
``.lock`` that its owner keeps locked while it lives; their cgroups; /proc look-ups."""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["children", "comm", "remove_cgroup_tree", "sweep_unowned"]


def sweep_unowned(
    workdir: Path, prefix: str, min_age: float, remove: Callable[[Path], bool]
) -> list[Path]:
    """Calls ``remove(dir)`` for each ``workdir/<prefix>*`` dir whose owner is gone (its
    ``.lock`` is free) and that is older than ``min_age`` seconds, holding that lock meanwhile
    (a new owner can't take the dir). ``remove`` returns False to leave a dir for a later sweep.
    Returns the dirs removed."""
    removed = []
    for path in sorted(workdir.glob(f"{prefix}*")):
        try:
            if time.time() - path.stat().st_mtime < min_age:
                continue
            fd = os.open(path / ".lock", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live session owns it
            if remove(path):
                removed.append(path)
        finally:
            os.close(fd)
    return removed


def remove_cgroup_tree(group: Path) -> None:
    """rmdir a cgroup and its children, deepest first (cgroupfs dirs go with rmdir only; each
    must be empty of processes)."""
    if not group.is_dir():
        return
    dirs = sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts))
    for path in [*reversed(dirs), group]:
        with contextlib.suppress(FileNotFoundError):
            path.rmdir()


def comm(pid: int) -> str | None:
    """The process's command name, or None when it is gone."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def children(pid: int) -> list[int]:
    """The PIDs of the process's children (of its main thread)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
