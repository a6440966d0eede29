"""Where the tests' and benchmarks' copy of PlanktoScope's pallet-standard comes from.

Lookup order (:func:`locate`): the directory named by ``FORKLIFT_BOOT_PALLET_STANDARD_DIR`` when
set; else ``../shared/fixtures/pallet-standard`` beside the repository (this project's CI); else a
cache outside the repository, ``${XDG_CACHE_HOME:-~/.cache}/forklift-boot-tests/pallet-standard-
<commit>``. A directory that is empty or missing is filled with a shallow ``git fetch`` of exactly
:data:`COMMIT` and reused by later runs; when that fails, :class:`PalletStandardUnavailable`
says in one line how to provide the copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

REMOTE = "https://github.com/PlanktoScope/pallet-standard"
COMMIT = "0b2207e01eaacbfab1d7e28844ad0f2899b9c22d"
ENV_VAR = "FORKLIFT_BOOT_PALLET_STANDARD_DIR"
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "pallet-standard"
MARKER = "forklift-pallet.yml"
# git waits on the network with no limit of its own; a fetch of this pallet takes seconds.
FETCH_TIMEOUT = 300.0


class PalletStandardUnavailable(Exception):
    """No usable copy of pallet-standard; the message says how to provide one (one line)."""


def default_cache_dir(env: Mapping[str, str], commit: str = COMMIT) -> Path:
    """The cache outside the repository; named by commit so that a new pin fetches anew."""
    base = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(base) / "forklift-boot-tests" / f"pallet-standard-{commit}"


def locate(
    env: Mapping[str, str] | None = None,
    shared_dir: Path = SHARED_DIR,
    remote: str = REMOTE,
    commit: str = COMMIT,
) -> Path:
    """The pallet-standard directory to use, fetched into the cache when needed."""
    env = os.environ if env is None else env
    if env.get(ENV_VAR):
        return ensure_checkout(Path(env[ENV_VAR]), remote, commit)
    if (shared_dir / MARKER).is_file():
        problem = _wrong_content(shared_dir, commit)
        if problem is not None:  # the pin here and the fixture there must move together
            raise PalletStandardUnavailable(
                f"{shared_dir} is not pallet-standard at {commit} ({problem}): update COMMIT "
                f"in tests/pallet_standard.py and the expected values, or the fixture"
            )
        return shared_dir
    return ensure_checkout(default_cache_dir(env, commit), remote, commit)


def ensure_checkout(dest: Path, remote: str = REMOTE, commit: str = COMMIT) -> Path:
    """``dest`` holding ``remote`` at ``commit``: checked if present, else fetched into it."""
    if dest.exists() and not (dest.is_dir() and not any(dest.iterdir())):
        problem = _wrong_content(dest, commit)
        if problem is None:
            return dest
        raise PalletStandardUnavailable(
            f"{dest} is not pallet-standard at {commit} ({problem}): remove it to fetch it again, "
            f"or {_how_to_provide(dest, remote)}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Fetched beside dest and renamed into place, so an interrupted fetch never looks complete.
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        error = _fetch(work, remote, commit)
        if error is not None:
            raise PalletStandardUnavailable(
                f"pallet-standard is not in {dest} and fetching {commit} from {remote} failed "
                f"({error}); {_how_to_provide(dest, remote)}"
            )
        if dest.is_dir():
            dest.rmdir()  # the empty directory we were pointed at
        try:
            work.rename(dest)
        except OSError:
            # Another run filled dest first: use its copy if it is the right one.
            if _wrong_content(dest, commit) is not None:
                raise
    finally:
        if work.exists():
            shutil.rmtree(work)
    return dest


def _how_to_provide(dest: Path, remote: str) -> str:
    return (
        f"provide it offline: copy ../shared/fixtures/pallet-standard, or a `git clone {remote}` "
        f"checked out at that commit on a machine with network, to {dest} "
        f"(or set {ENV_VAR} to such a directory)"
    )


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    # No prompt for credentials: an unreachable or private remote fails instead of waiting.
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    return subprocess.run(
        ["git", "-c", "advice.detachedHead=false", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=FETCH_TIMEOUT,
        check=False,
    )


def _fetch(work: Path, remote: str, commit: str) -> str | None:
    """Fetches ``commit`` alone into ``work`` and checks it out; the failure in a few words."""
    steps = (
        ["init", "-q"],
        ["fetch", "-q", "--depth", "1", remote, commit],
        ["checkout", "-q", "--detach", "FETCH_HEAD"],
    )
    try:
        for step in steps:
            result = _git(step, work)
            if result.returncode != 0:
                lines = result.stderr.strip().splitlines()
                return f"git {step[0]}: {lines[-1] if lines else f'exit {result.returncode}'}"
    except FileNotFoundError:
        return "git is not installed"
    except subprocess.TimeoutExpired:
        return f"git took more than {FETCH_TIMEOUT:.0f} s"
    return _wrong_content(work, commit)


def _wrong_content(path: Path, commit: str) -> str | None:
    """Why ``path`` is not pallet-standard at ``commit``, or None when it is.

    A git checkout must have ``commit`` checked out; a copy of this project's data-only fixture
    (no ``.git``) must name ``commit`` in its SOURCE.md.
    """
    if not (path / MARKER).is_file():
        return f"no {MARKER}"
    if (path / ".git").exists():
        try:
            head = _git(["rev-parse", "HEAD"], path).stdout.strip()
        except FileNotFoundError:
            return "git is not installed to check its commit"
        return None if head == commit else f"its checkout is at {head or 'no commit'}"
    source = path / "SOURCE.md"
    if source.is_file() and commit in source.read_text(encoding="utf-8"):
        return None
    return "neither a git checkout nor a copy whose SOURCE.md names that commit"
