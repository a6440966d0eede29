"""tests/pallet_standard.py's lookup and fetch, against a local git repository as the remote.

A stand-in cannot hold the real pinned commit, so each test injects the commit of the stand-in's
own history that it wants checked out (not the tip: fetching by commit is what the real lookup
does).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.pallet_standard import ENV_VAR, PalletStandardUnavailable, ensure_checkout, locate

GIT_ID = ["-c", "user.name=forklift-boot tests", "-c", "user.email=tests@forklift-boot.invalid"]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *GIT_ID, *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def commit_files(repo: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (repo / name).write_text(text, encoding="utf-8")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"write {', '.join(files)}")
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, str]:
    """A repository whose first commit (returned) is the pin and a later one is its tip."""
    repo = tmp_path / "remote"
    repo.mkdir()
    git(repo, "init", "-q")
    pinned = commit_files(repo, {"forklift-pallet.yml": "pallet: pinned\n", "old.yml": "x\n"})
    git(repo, "rm", "-q", "old.yml")
    commit_files(repo, {"forklift-pallet.yml": "pallet: tip\n"})
    return repo, pinned


def test_fetches_the_pinned_commit_into_an_empty_dir_and_reuses_it(
    tmp_path: Path, remote: tuple[Path, str]
) -> None:
    repo, pinned = remote
    dest = tmp_path / "cache"
    dest.mkdir()

    assert ensure_checkout(dest, str(repo), pinned) == dest
    assert git(dest, "rev-parse", "HEAD") == pinned
    assert (dest / "forklift-pallet.yml").read_text(encoding="utf-8") == "pallet: pinned\n"
    assert (dest / "old.yml").is_file()  # gone at the tip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "remote"]  # no temp dir left

    repo.rename(tmp_path / "remote-gone")  # a second call that fetched would fail now
    assert ensure_checkout(dest, str(repo), pinned) == dest
    assert git(dest, "rev-parse", "HEAD") == pinned


def test_creates_a_missing_cache_dir_and_its_parents(
    tmp_path: Path, remote: tuple[Path, str]
) -> None:
    repo, pinned = remote
    dest = tmp_path / "xdg" / "forklift-boot-tests" / f"pallet-standard-{pinned}"
    assert ensure_checkout(dest, str(repo), pinned) == dest
    assert git(dest, "rev-parse", "HEAD") == pinned


def test_an_unreachable_remote_fails_with_one_line_saying_how_to_provide_it(
    tmp_path: Path,
) -> None:
    dest = tmp_path / "cache"
    dest.mkdir()
    missing = tmp_path / "no-such-remote"
    with pytest.raises(PalletStandardUnavailable) as raised:
        ensure_checkout(dest, str(missing), "0" * 40)
    message = str(raised.value)
    assert "\n" not in message
    assert f"fetching {'0' * 40} from {missing} failed (git fetch: " in message
    assert f"to {dest} (or set {ENV_VAR} to such a directory)" in message
    assert "copy ../shared/fixtures/pallet-standard" in message
    assert [*dest.iterdir()] == []  # nothing half-fetched left to be taken as a copy later
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_a_commit_the_remote_lacks_fails(tmp_path: Path, remote: tuple[Path, str]) -> None:
    repo, _ = remote
    with pytest.raises(PalletStandardUnavailable, match=r"failed \(git fetch: "):
        ensure_checkout(tmp_path / "cache", str(repo), "1" * 40)
    assert not (tmp_path / "cache").exists()


def test_a_checkout_at_another_commit_is_refused(tmp_path: Path, remote: tuple[Path, str]) -> None:
    repo, pinned = remote
    tip = git(repo, "rev-parse", "HEAD")
    dest = ensure_checkout(tmp_path / "cache", str(repo), tip)
    with pytest.raises(PalletStandardUnavailable) as raised:
        ensure_checkout(dest, str(repo), pinned)
    assert str(raised.value).startswith(
        f"{dest} is not pallet-standard at {pinned} (its checkout is at {tip}): remove it"
    )


def test_a_copy_of_the_fixture_is_taken_by_its_source_md(tmp_path: Path) -> None:
    """How the README pre-seeds the cache offline: a copy of the data-only fixture, no .git."""
    commit = "2" * 40
    dest = tmp_path / "cache"
    dest.mkdir()
    (dest / "forklift-pallet.yml").write_text("pallet: copy\n", encoding="utf-8")
    (dest / "SOURCE.md").write_text(f"at commit `{commit}`\n", encoding="utf-8")
    unreachable = str(tmp_path / "no-such-remote")
    assert ensure_checkout(dest, unreachable, commit) == dest
    with pytest.raises(PalletStandardUnavailable, match="whose SOURCE.md names that commit"):
        ensure_checkout(dest, unreachable, "3" * 40)


def test_lookup_order(tmp_path: Path, remote: tuple[Path, str]) -> None:
    repo, pinned = remote
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "forklift-pallet.yml").write_text("pallet: shared\n", encoding="utf-8")
    (shared / "SOURCE.md").write_text(f"at commit `{pinned}`\n", encoding="utf-8")
    chosen = tmp_path / "chosen"
    xdg = tmp_path / "xdg"
    home = tmp_path / "home"

    def lookup(env: dict[str, str], shared_dir: Path) -> Path:
        return locate(env, shared_dir=shared_dir, remote=str(repo), commit=pinned)

    # The environment variable wins, even over ../shared.
    assert lookup({ENV_VAR: str(chosen), "XDG_CACHE_HOME": str(xdg)}, shared) == chosen
    assert git(chosen, "rev-parse", "HEAD") == pinned
    # Then ../shared, used in place, if it is a copy of the pinned commit.
    assert lookup({"XDG_CACHE_HOME": str(xdg)}, shared) == shared
    with pytest.raises(PalletStandardUnavailable, match=f"{shared} is not pallet-standard at "):
        locate({"XDG_CACHE_HOME": str(xdg)}, shared_dir=shared, remote=str(repo), commit="4" * 40)
    # Then the cache: $XDG_CACHE_HOME, else ~/.cache.
    no_shared = tmp_path / "no-shared"
    cached = xdg / "forklift-boot-tests" / f"pallet-standard-{pinned}"
    assert lookup({"XDG_CACHE_HOME": str(xdg)}, no_shared) == cached
    home_cached = home / ".cache" / "forklift-boot-tests" / f"pallet-standard-{pinned}"
    assert lookup({"HOME": str(home)}, no_shared) == home_cached
    assert git(home_cached, "rev-parse", "HEAD") == pinned
