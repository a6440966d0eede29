"""scripts/ci/fill-os-cache, the CI recipe for OS images, against a real docker-registry on loopback.

The pallet is written by each test as a git repository (``git init`` + commits) and cloned by
the script from a ``file://`` URL or used in place. Its images are crafted byte by byte for
linux/amd64 and linux/arm64 and pushed to the loopback registry (tests/testbed/oci.py); the
pallet names them through a counting proxy in front of the registry (tests/testbed/
fault_proxy.py), so "the second run downloads nothing" is counted outside the product. The
OS image's root filesystem is a plain directory with the load unit installed where the .deb puts
it. The script runs as a subprocess with the forklift-boot of the venv running the tests
(``FORKLIFT_BOOT``); two tests install it the other two ways instead (the .deb; pip from a copy
of the checkout, which downloads the dependencies from PyPI).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_DIR, require_component
from tests.testbed import oci
from tests.testbed.fault_proxy import FaultProxy
from tests.testbed.oci import CraftedImage
from tests.testbed.registry import Registry, free_port
from tests.treebuilder import PALLET_FILE, package, under, write_tree

pytestmark = [pytest.mark.registry]

SCRIPT = REPO_DIR / "scripts" / "ci" / "fill-os-cache"
LOAD_UNIT = "forklift-boot-load-img.service"
CACHE_IN_ROOTFS = "var/cache/forklift/images"
# The forklift-boot of the venv running the tests (.venv/pypi or .venv/debian).
FORKLIFT_BOOT = Path(sys.executable).parent / "forklift-boot"
DEBIAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Pushed:
    """One image in the registry, for amd64 and arm64, behind an index."""

    repo: str  # path in the registry
    tag: str
    amd64: CraftedImage
    arm64: CraftedImage
    index: oci.Blob

    def arm64_blobs(self, *, with_index: bool = False) -> set[str]:
        blobs = {self.arm64.manifest.digest} | {blob.digest for blob in self.arm64.blobs}
        return blobs | {self.index.digest} if with_index else blobs

    def arm64_downloads(self) -> set[str]:
        """The blobs fetched through /blobs/ (manifests and indexes come from /manifests/)."""
        return {blob.digest for blob in self.arm64.blobs}


@dataclass(frozen=True)
class Images:
    web: Pushed  # written HOST/fbci/web:1.0
    hub: Pushed  # written fbcihub:2.0: Docker Hub's library/fbcihub, through the mirror
    tool: Pushed  # written HOST/fbci/tool@sha256:<index>: the index is kept
    plain: CraftedImage  # written HOST/fbci/plain (name only: latest); arm64 only, no index
    old: Pushed  # written HOST/fbci/old:0.9 by the first commit only
    off: Pushed  # in a disabled deployment: never fetched


def _push(registry: Registry, repo: str, tag: str, name: str) -> Pushed:
    shared = {"etc/fbci-shared": b"every image and platform shares this layer\n"}
    amd64 = oci.craft_image([shared, {f"app/{name}": f"{name} for amd64\n".encode()}])
    arm64 = oci.craft_image(
        [shared, {f"app/{name}": f"{name} for arm64\n".encode()}],
        architecture="arm64",
        variant="v8",
    )
    for image in (amd64, arm64):
        oci.push_image(registry.url, repo, image.manifest.digest, image)
    index = oci.index_of([amd64.child(), arm64.child()])
    oci.put_manifest(registry.url, repo, tag, index)
    return Pushed(repo, tag, amd64, arm64, index)


@pytest.fixture(scope="module")
def pushed(registry: Registry) -> Images:
    plain = oci.craft_image(
        [{"app/plain": b"plain, arm64 only\n"}], architecture="arm64", variant="v8"
    )
    oci.push_image(registry.url, "fbci/plain", "latest", plain)
    return Images(
        web=_push(registry, "fbci/web", "1.0", "web"),
        hub=_push(registry, "library/fbcihub", "2.0", "hub"),
        tool=_push(registry, "fbci/tool", "3.0", "tool"),
        plain=plain,
        old=_push(registry, "fbci/old", "0.9", "old"),
        off=_push(registry, "fbci/off", "1.0", "off"),
    )


@pytest.fixture
def proxy(registry: Registry, pushed: Images) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as counting:
        yield counting


# The pallet


def pallet_files(host: str, images: Images, *, with_old: bool) -> dict[str, str]:
    """A pallet with local packages: a deployment with an enabled feature, a digest-pinned ref,
    a name-only ref, a Docker Hub short name and a disabled deployment."""
    files = {
        "forklift-pallet.yml": PALLET_FILE.format(name="fbci-pallet"),
        "deployments/apps/web.deploy.yml": "package: /packages/web\nfeatures: [hub]\n",
        "deployments/apps/tool.deploy.yml": "package: /packages/tool\n",
        "deployments/infra/plain.deploy.yml": "package: /packages/plain\n",
        "deployments/apps/off.deploy.yml": "package: /packages/off\ndisabled: true\n",
        **under("packages/web", package(f"{host}/fbci/web:1.0", {"hub": "fbcihub:2.0"})),
        **under("packages/tool", package(f"{host}/fbci/tool@{images.tool.index.digest}")),
        **under("packages/plain", package(f"{host}/fbci/plain")),
        **under("packages/off", package(f"{host}/fbci/off:1.0")),
    }
    if with_old:
        files["deployments/apps/old.deploy.yml"] = "package: /packages/old\n"
        files.update(under("packages/old", package(f"{host}/fbci/old:0.9")))
    return files


def expected_refs(host: str, images: Images, *, with_old: bool) -> list[str]:
    """What `forklift-boot ls-img --pallet` must print for that pallet, worked out by hand."""
    refs = [
        f"{host}/fbci/plain",
        f"{host}/fbci/tool@{images.tool.index.digest}",
        f"{host}/fbci/web:1.0",
        "fbcihub:2.0",
    ]
    if with_old:
        refs.append(f"{host}/fbci/old:0.9")
    return sorted(refs)


def expected_entries(host: str, images: Images, *, with_old: bool) -> set[str]:
    """The cache's entry names: canonical, a name-only ref tagged latest."""
    names = {
        f"{host}/fbci/plain:latest",
        f"{host}/fbci/tool@{images.tool.index.digest}",
        f"{host}/fbci/web:1.0",
        "docker.io/library/fbcihub:2.0",
    }
    return names | {f"{host}/fbci/old:0.9"} if with_old else names


def expected_blobs(images: Images, *, with_old: bool) -> set[str]:
    """Exactly the arm64 images, and the index the digest ref pins."""
    plain = {images.plain.manifest.digest} | {blob.digest for blob in images.plain.blobs}
    blobs = (
        images.web.arm64_blobs()
        | images.hub.arm64_blobs()
        | images.tool.arm64_blobs(with_index=True)
        | plain
    )
    return blobs | images.old.arm64_blobs() if with_old else blobs


def git(repo: Path, *args: str) -> str:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(repo),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
    }
    result = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def commit_pallet(repo: Path, files: Mapping[str, str], message: str) -> str:
    """Writes the pallet's files (removing the ones it no longer has) and commits them."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        git(repo, "init", "-q", "-b", "main")
    for path in sorted(repo.rglob("*"), reverse=True):
        if ".git" not in path.relative_to(repo).parts and path.is_file():
            path.unlink()
    write_tree(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def make_rootfs(path: Path) -> Path:
    """An OS image's root with the forklift-boot .deb's load unit where the .deb installs it."""
    units = path / "lib/systemd/system"
    units.mkdir(parents=True)
    shutil.copy2(REPO_DIR / "systemd" / LOAD_UNIT, units / LOAD_UNIT)
    return path


# Running the script


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str

    @property
    def outputs(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.out.splitlines())

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if "error" in line.lower()]


def run_script(tmp_path: Path, *args: str, env: Mapping[str, str] | None = None) -> Run:
    docker_config = tmp_path / "docker-config"  # no credentials of this machine
    docker_config.mkdir(exist_ok=True)
    base = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(tmp_path)),  # pip's cache
        "DOCKER_CONFIG": str(docker_config),
        "TMPDIR": str(tmp_path),
        "FORKLIFT_BOOT": str(FORKLIFT_BOOT),
        "LC_ALL": "C.UTF-8",
    }
    result = subprocess.run(
        [str(SCRIPT), *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return Run(result.returncode, result.stdout, result.stderr)


def fill(
    tmp_path: Path,
    pallet: str,
    *extra: str,
    rootfs: Path | None,
    mirror: str | None,
    env: Mapping[str, str] | None = None,
) -> Run:
    args = [
        "--pallet",
        pallet,
        "--platform",
        "linux/arm64",
        "--cache-dir",
        str(tmp_path / "ci-cache"),
        "--work-dir",
        str(tmp_path / "work"),
        *extra,
    ]
    if rootfs is not None:
        args += ["--rootfs", str(rootfs)]
    if mirror is not None:
        args += ["--registry-mirror", mirror]
    return run_script(tmp_path, *args, env=env)


def forklift_boot(*args: str) -> str:
    result = subprocess.run(
        [str(FORKLIFT_BOOT), *args],
        env={"PATH": os.environ["PATH"], "HOME": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def cache_entries(cache: Path) -> set[str]:
    listing = json.loads(forklift_boot("cache", "ls-img", "--json", "--cache-dir", str(cache)))
    return {image["name"] for image in listing["images"]}


def cache_blobs(cache: Path) -> set[str]:
    return {"sha256:" + p.name for p in (cache / "blobs" / "sha256").iterdir()}


def assert_rootfs_has(rootfs: Path, entries: set[str], blobs: set[str]) -> None:
    cache = rootfs / CACHE_IN_ROOTFS
    assert cache_entries(cache) == entries
    assert cache_blobs(cache) == blobs
    forklift_boot("cache", "verify", "--cache-dir", str(cache))
    link = rootfs / "etc/systemd/system/multi-user.target.wants" / LOAD_UNIT
    assert os.readlink(link) == f"/lib/systemd/system/{LOAD_UNIT}"
    # Leftovers of the copy: none.
    assert sorted(p.name for p in cache.parent.iterdir()) == ["images"]


# The recipe


def test_a_pallet_from_git_into_a_rootfs_then_a_rerun_downloads_nothing(
    tmp_path: Path, proxy: FaultProxy, pushed: Images
) -> None:
    repo = tmp_path / "fbci-pallet"
    sha = commit_pallet(repo, pallet_files(proxy.host, pushed, with_old=False), "pallet v1")
    url = f"file://{repo}"
    # What ls-img lists for the pallet is what was written into it, worked out by hand.
    listed = forklift_boot("ls-img", "--pallet", str(repo)).splitlines()
    assert listed == expected_refs(proxy.host, pushed, with_old=False)
    github_output = tmp_path / "github-output"
    github_output.touch()

    rootfs = make_rootfs(tmp_path / "rootfs")
    first = fill(
        tmp_path,
        url,
        "--commit",
        sha[:10],
        rootfs=rootfs,
        mirror=proxy.url,
        env={"GITHUB_OUTPUT": str(github_output)},
    )
    assert first.code == 0, first.err
    key = f"forklift-boot-images-v1-linux-arm64-fbci-pallet-{sha}"
    assert first.outputs == {
        "key": key,
        "restore-prefix": "forklift-boot-images-v1-linux-arm64-fbci-pallet-",
        "cache-dir": str(tmp_path / "ci-cache"),
        "pallet-commit": sha,
        "images": "4",
    }
    assert github_output.read_text() == first.out  # the step outputs of a GitHub Action
    entries = expected_entries(proxy.host, pushed, with_old=False)
    blobs = expected_blobs(pushed, with_old=False)
    assert_rootfs_has(rootfs, entries, blobs)
    assert cache_entries(tmp_path / "ci-cache") == entries
    # The disabled deployment's image and amd64's were never fetched; each blob once.
    downloads = [s.path.rsplit("/", 1)[1] for s in proxy.blob_gets()]
    wanted_downloads = {blob.digest for blob in pushed.plain.blobs} | set().union(
        *(p.arm64_downloads() for p in (pushed.web, pushed.hub, pushed.tool))
    )
    assert sorted(downloads) == sorted(wanted_downloads)
    assert not [s for s in proxy.served if "/fbci/off/" in s.path]

    # The next CI run restores the CI cache under the same key: not one request to the registry.
    proxy.reset()
    again = make_rootfs(tmp_path / "rootfs-again")
    second = fill(tmp_path, url, "--commit", sha, rootfs=again, mirror=proxy.url)
    assert second.code == 0, second.err
    assert second.outputs["key"] == key
    assert proxy.blob_gets() == []
    assert proxy.served == []
    assert_rootfs_has(again, entries, blobs)
    # A rootfs that already has a cache gets exactly the pallet's again.
    third = fill(tmp_path, url, "--commit", sha, rootfs=again, mirror=proxy.url)
    assert third.code == 0, third.err
    assert_rootfs_has(again, entries, blobs)
    assert proxy.served == []


def test_a_newer_commit_reuses_the_older_cache_and_drops_what_it_no_longer_needs(
    tmp_path: Path, proxy: FaultProxy, pushed: Images
) -> None:
    repo = tmp_path / "fbci-pallet"
    old_sha = commit_pallet(repo, pallet_files(proxy.host, pushed, with_old=True), "with old")
    rootfs = make_rootfs(tmp_path / "rootfs-old")
    first = fill(tmp_path, f"file://{repo}", "--commit", old_sha, rootfs=rootfs, mirror=proxy.url)
    assert first.code == 0, first.err
    assert_rootfs_has(
        rootfs,
        expected_entries(proxy.host, pushed, with_old=True),
        expected_blobs(pushed, with_old=True),
    )

    # The new commit's key misses; CI restores the old commit's cache by the prefix.
    new_sha = commit_pallet(repo, pallet_files(proxy.host, pushed, with_old=False), "no old")
    proxy.reset()
    rootfs = make_rootfs(tmp_path / "rootfs-new")
    second = fill(tmp_path, f"file://{repo}", "--commit", new_sha, rootfs=rootfs, mirror=proxy.url)
    assert second.code == 0, second.err
    assert second.outputs["key"] != first.outputs["key"]
    assert second.outputs["restore-prefix"] == first.outputs["restore-prefix"]
    assert proxy.blob_gets() == []
    entries = expected_entries(proxy.host, pushed, with_old=False)
    blobs = expected_blobs(pushed, with_old=False)
    assert_rootfs_has(rootfs, entries, blobs)
    # The CI cache itself holds exactly the new commit's images (it does not grow forever).
    assert cache_entries(tmp_path / "ci-cache") == entries
    assert cache_blobs(tmp_path / "ci-cache") == blobs
    assert "deleting 1 images the pallet no longer needs" in second.err


@contextlib.contextmanager
def small_filesystem(mount_point: Path) -> Iterator[None]:
    """A tmpfs mounted on ``mount_point`` (made if missing), unmounted afterwards."""
    mount_point.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mount_point)],
        check=True,
        capture_output=True,
    )
    try:
        yield
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def shrink_to_what_it_holds(mount_point: Path) -> None:
    """Leaves the tmpfs 64 KiB free: less than any copy asks for (room for index.json's
    temporary, 1 MiB, besides the blobs)."""
    used_kib = shutil.disk_usage(mount_point).used // 1024
    subprocess.run(
        ["mount", "-o", f"remount,size={used_kib + 64}k", str(mount_point)],
        check=True,
        capture_output=True,
    )
    assert shutil.disk_usage(mount_point).free <= 64 << 10


@pytest.mark.parametrize("failure", ["no room", "killed mid-copy"])
def test_a_copy_that_fails_leaves_the_rootfs_previous_cache_intact(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: FaultProxy, pushed: Images, failure: str
) -> None:
    if os.geteuid() != 0:
        require_component(request.config, "needs root (mounts a tmpfs)")
    repo = tmp_path / "fbci-pallet"
    old_sha = commit_pallet(repo, pallet_files(proxy.host, pushed, with_old=True), "with old")
    new_sha = commit_pallet(repo, pallet_files(proxy.host, pushed, with_old=False), "no old")
    rootfs = make_rootfs(tmp_path / "rootfs")
    before_entries = expected_entries(proxy.host, pushed, with_old=True)
    before_blobs = expected_blobs(pushed, with_old=True)
    url = f"file://{repo}"
    with contextlib.ExitStack() as stack:
        if failure == "no room":
            # /var/cache/forklift of the rootfs is its own small filesystem.
            stack.enter_context(small_filesystem(rootfs / "var/cache/forklift"))
        first = fill(tmp_path, url, "--commit", old_sha, rootfs=rootfs, mirror=proxy.url)
        assert first.code == 0, first.err
        assert_rootfs_has(rootfs, before_entries, before_blobs)
        # The new commit's images are all in the CI cache already: the failure is the copy's.
        primed = fill(tmp_path, url, "--commit", new_sha, rootfs=None, mirror=proxy.url)
        assert primed.code == 0, primed.err

        if failure == "no room":
            shrink_to_what_it_holds(rootfs / "var/cache/forklift")
            env: dict[str, str] = {}
            expected_code = 1  # cache copy's: not enough room, checked before writing
        else:
            # Killed (kill -9) right after the copy's first blob is in place.
            env = {"FORKLIFT_BOOT_CRASH_AT": "blob-renamed"}
            expected_code = 128 + signal.SIGKILL  # as bash reports a process killed by a signal
        failed = fill(tmp_path, url, "--commit", new_sha, rootfs=rootfs, mirror=proxy.url, env=env)
        assert failed.code == 1, failed.err
        last = failed.err.splitlines()[-1]
        assert last == (
            f"fill-os-cache: error: couldn't copy the pallet's images into {rootfs}: forklift-boot"
            f" cache copy exited with {expected_code} (its messages above); the cache that was in"
            f" {rootfs / CACHE_IN_ROOTFS} is unchanged (the new one needs room beside it)"
        )
        if failure == "no room":
            assert "couldn't copy images: copying" in failed.err
            assert "free some space" in failed.err
        assert "Traceback" not in failed.err
        # The previous cache: the same images and blobs, valid; the staging copy is gone.
        assert_rootfs_has(rootfs, before_entries, before_blobs)

        # Once the copy can succeed, the rootfs gets exactly the new commit's images.
        if failure == "no room":
            subprocess.run(
                ["mount", "-o", "remount,size=16m", str(rootfs / "var/cache/forklift")],
                check=True,
            )
        again = fill(tmp_path, url, "--commit", new_sha, rootfs=rootfs, mirror=proxy.url)
        assert again.code == 0, again.err
        assert_rootfs_has(
            rootfs,
            expected_entries(proxy.host, pushed, with_old=False),
            expected_blobs(pushed, with_old=False),
        )


def test_a_local_pallet_its_key_and_the_unit_enabled_without_systemctl(
    tmp_path: Path, proxy: FaultProxy, pushed: Images
) -> None:
    repo = tmp_path / "os-build"
    sha = commit_pallet(
        repo,
        under("pallet", pallet_files(proxy.host, pushed, with_old=True)),
        "pallet in a subdirectory of the OS build's repository",
    )
    pallet = repo / "pallet"
    # Not committed: the old deployment removed in the work tree only.
    (pallet / "deployments/apps/old.deploy.yml").unlink()
    rootfs = make_rootfs(tmp_path / "rootfs")
    dirty = fill(tmp_path, str(pallet), rootfs=rootfs, mirror=proxy.url, env={"SYSTEMCTL": ""})
    assert dirty.code == 0, dirty.err
    assert dirty.outputs["pallet-commit"].startswith("content-")
    assert dirty.outputs["key"].startswith("forklift-boot-images-v1-linux-arm64-pallet-content-")
    assert_rootfs_has(
        rootfs,
        expected_entries(proxy.host, pushed, with_old=False),
        expected_blobs(pushed, with_old=False),
    )

    # --commit takes that commit's files (with the old deployment), not the work tree's.
    rootfs = make_rootfs(tmp_path / "rootfs-commit")
    at_commit = fill(tmp_path, str(pallet), "--commit", "main", rootfs=rootfs, mirror=proxy.url)
    assert at_commit.code == 0, at_commit.err
    assert at_commit.outputs["pallet-commit"] == sha
    assert_rootfs_has(
        rootfs,
        expected_entries(proxy.host, pushed, with_old=True),
        expected_blobs(pushed, with_old=True),
    )
    # The caller's work tree is left as it was.
    assert git(repo, "status", "--porcelain") == "D pallet/deployments/apps/old.deploy.yml"

    # Committed and clean: the key is the commit.
    git(repo, "commit", "-qam", "drop old")
    clean_sha = git(repo, "rev-parse", "HEAD")
    clean = run_script(
        tmp_path, "--key-only", "--pallet", str(pallet), "--platform", "linux/arm/v7"
    )
    assert clean.code == 0, clean.err
    assert clean.outputs["key"] == f"forklift-boot-images-v1-linux-arm-v7-pallet-{clean_sha}"


def test_key_only_needs_no_forklift_boot(tmp_path: Path) -> None:
    repo = tmp_path / "fbci-pallet"
    sha = commit_pallet(repo, {"forklift-pallet.yml": PALLET_FILE.format(name="p")}, "empty")
    result = run_script(
        tmp_path,
        "--key-only",
        "--pallet",
        f"file://{repo}",
        "--commit",
        sha,
        "--platform",
        "linux/arm64",
        "--work-dir",
        str(tmp_path / "work"),
        env={"FORKLIFT_BOOT": "/nonexistent/forklift-boot"},
    )
    assert result.code == 0, result.err
    assert result.outputs["key"] == f"forklift-boot-images-v1-linux-arm64-fbci-pallet-{sha}"
    assert result.outputs["cache-dir"] == str(tmp_path / "work" / "images")
    assert (tmp_path / "work" / "pallet" / "forklift-pallet.yml").is_file()

    # A branch that moved since the clone: the clone is fetched again, the key follows.
    newer = commit_pallet(
        repo, {"forklift-pallet.yml": PALLET_FILE.format(name="p"), "README.md": "x\n"}, "newer"
    )
    key_args = ["--key-only", "--pallet", f"file://{repo}", "--platform", "linux/arm64"]
    work = ["--work-dir", str(tmp_path / "work")]
    moved = run_script(tmp_path, *key_args, "--commit", "main", *work)
    assert moved.code == 0, moved.err
    assert moved.outputs["pallet-commit"] == newer
    assert (tmp_path / "work" / "pallet" / "README.md").is_file()
    # An older commit by its short id, from the same clone.
    older = run_script(tmp_path, *key_args, "--commit", sha[:8], *work)
    assert older.code == 0, older.err
    assert older.outputs["pallet-commit"] == sha
    assert not (tmp_path / "work" / "pallet" / "README.md").exists()


# Bad input: one line, a meaningful exit code, nothing written


@pytest.fixture
def small_pallet(tmp_path: Path) -> tuple[Path, str]:
    repo = tmp_path / "fbci-pallet"
    return repo, commit_pallet(repo, {"forklift-pallet.yml": PALLET_FILE.format(name="p")}, "p")


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("missing pallet", "the pallet {tmp}/nope does not exist"),
        ("no pallet given", "--pallet is required"),
        ("no platform", "--platform is required"),
        ("bad platform", "--platform linux arm64: give os/arch[/variant]"),
        ("unknown commit", "has no commit 0123456789abcdef"),
        ("url without commit", "--commit is required with a git URL"),
        ("not a pallet", "is not a pallet: it has no forklift-pallet.yml"),
        ("rootfs missing", "the rootfs {tmp}/no-rootfs is not a directory"),
        ("unit not installed", f"{LOAD_UNIT} is not installed in {{tmp}}/bare-rootfs"),
        ("unknown option", "unknown argument --pallett"),
        ("no forklift-boot", "forklift-boot not found (/nonexistent/forklift-boot)"),
        ("unreachable url", "couldn't clone the pallet file://{tmp}/gone"),
    ],
)
def test_bad_input_is_one_line(
    tmp_path: Path, small_pallet: tuple[Path, str], case: str, needle: str
) -> None:
    repo, sha = small_pallet
    (tmp_path / "bare-rootfs").mkdir()
    (tmp_path / "plain-dir").mkdir()
    common = ["--platform", "linux/arm64", "--work-dir", str(tmp_path / "work")]
    env: dict[str, str] = {}
    args = {
        "missing pallet": ["--pallet", str(tmp_path / "nope"), *common],
        "no pallet given": common,
        "no platform": ["--pallet", str(repo)],
        "bad platform": ["--pallet", str(repo), "--platform", "linux arm64"],
        "unknown commit": ["--pallet", f"file://{repo}", "--commit", "0123456789abcdef", *common],
        "url without commit": ["--pallet", f"file://{repo}", *common],
        "not a pallet": ["--pallet", str(tmp_path / "plain-dir"), *common],
        "rootfs missing": [
            *("--pallet", str(repo), "--rootfs", str(tmp_path / "no-rootfs"), *common)
        ],
        "unit not installed": [
            *("--pallet", str(repo), "--rootfs", str(tmp_path / "bare-rootfs"), *common)
        ],
        "unknown option": ["--pallett", str(repo), *common],
        "no forklift-boot": ["--pallet", str(repo), *common],
        "unreachable url": ["--pallet", f"file://{tmp_path}/gone", "--commit", sha, *common],
    }[case]
    if case == "no forklift-boot":
        env["FORKLIFT_BOOT"] = "/nonexistent/forklift-boot"
    result = run_script(tmp_path, *args, env=env)
    expected_code = 1 if case == "unreachable url" else 2
    assert result.code == expected_code, result.err
    assert result.out == "" or case in ("no forklift-boot",)
    assert result.error_lines == [result.err.splitlines()[-1]], result.err
    last = result.err.splitlines()[-1]
    assert last.startswith("fill-os-cache: error: "), last
    assert needle.format(tmp=tmp_path) in last, last
    assert "Traceback" not in result.err
    assert not (tmp_path / "bare-rootfs" / "var").exists()
    assert not (tmp_path / "ci-cache").exists()


@pytest.mark.parametrize("case", ["registry down", "no such tag"])
def test_an_image_that_cant_be_fetched_fails_with_one_line_and_leaves_the_rootfs_alone(
    tmp_path: Path, registry: Registry, pushed: Images, case: str
) -> None:
    if case == "registry down":
        host = f"127.0.0.1:{free_port()}"  # nothing listens there
        reason = f"couldn't look up fbci/app:1.0 from {host}"
        ref = f"{host}/fbci/app:1.0"
    else:
        host = registry.host
        ref = f"{host}/fbci/web:9.9"
        reason = f"{ref}: neither its registry nor the cache has it"
    repo = tmp_path / "fbci-pallet"
    files = {
        "forklift-pallet.yml": PALLET_FILE.format(name="p"),
        "deployments/app.deploy.yml": "package: /packages/app\n",
        "deployments/web.deploy.yml": "package: /packages/web\n",
        **under("packages/app", package(ref)),
        **under("packages/web", package(f"{registry.host}/fbci/web:1.0")),
    }
    sha = commit_pallet(repo, files, "p")
    rootfs = make_rootfs(tmp_path / "rootfs")
    result = fill(tmp_path, f"file://{repo}", "--commit", sha, rootfs=rootfs, mirror=None)
    assert result.code == 3, result.err  # forklift-boot's: some images failed
    last = result.err.splitlines()[-1]
    assert last == (
        f"fill-os-cache: error: couldn't fill the cache {tmp_path}/ci-cache for linux/arm64: "
        "forklift-boot cache-img exited with 3 (its messages above)"
    )
    assert reason in result.err  # forklift-boot's reason, naming the image
    assert sorted(p.name for p in rootfs.iterdir()) == ["lib"]  # no cache, no unit enabled
    # The image that could be fetched is in the CI cache: the next run needs only the other.
    assert cache_entries(tmp_path / "ci-cache") == {f"{registry.host}/fbci/web:1.0"}


# The other two ways of installing forklift-boot


def test_installed_from_the_deb(
    request: pytest.FixtureRequest, tmp_path: Path, proxy: FaultProxy, pushed: Images
) -> None:
    for tool in ("dpkg-buildpackage", "lintian", "dh_python3"):
        if shutil.which(tool, path=DEBIAN_PATH) is None:
            require_component(request.config, f"needs {tool} to build the .deb (scripts/setup-env)")
    built = subprocess.run(
        [str(REPO_DIR / "scripts" / "build-deb"), str(tmp_path / "dist")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    deb = built.stdout.strip()
    repo = tmp_path / "fbci-pallet"
    sha = commit_pallet(repo, pallet_files(proxy.host, pushed, with_old=False), "p")
    rootfs = make_rootfs(tmp_path / "rootfs")
    result = fill(
        tmp_path,
        f"file://{repo}",
        "--commit",
        sha,
        "--install-from-deb",
        deb,
        "--install-deps",  # Debian's python3-* are installed here: nothing to do
        rootfs=rootfs,
        mirror=proxy.url,
        env={"FORKLIFT_BOOT": "/nonexistent/forklift-boot"},
    )
    assert result.code == 0, result.err
    assert f"using forklift-boot 0.1.0 ({tmp_path}/work/deb/forklift-boot)" in result.err
    assert "installing" not in result.err  # no apt-get
    assert_rootfs_has(
        rootfs,
        expected_entries(proxy.host, pushed, with_old=False),
        expected_blobs(pushed, with_old=False),
    )


def test_installed_from_a_checkout_with_pip(
    tmp_path: Path, proxy: FaultProxy, pushed: Images
) -> None:
    # A copy of the checkout: pip's in-tree build would write build/ into the real one.
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_DIR / name, checkout / name)
    shutil.copytree(
        REPO_DIR / "forklift_boot",
        checkout / "forklift_boot",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    repo = tmp_path / "fbci-pallet"
    sha = commit_pallet(repo, pallet_files(proxy.host, pushed, with_old=False), "p")
    rootfs = make_rootfs(tmp_path / "rootfs")
    result = fill(
        tmp_path,
        f"file://{repo}",
        "--commit",
        sha,
        "--install-from-checkout",
        str(checkout),
        "--install-deps",  # libsystemd-dev, pkg-config, gcc, ... are installed here
        rootfs=rootfs,
        mirror=proxy.url,
        env={"FORKLIFT_BOOT": "/nonexistent/forklift-boot"},
    )
    assert result.code == 0, result.err
    assert f"using forklift-boot 0.1.0 ({tmp_path}/work/venv/bin/forklift-boot)" in result.err
    assert_rootfs_has(
        rootfs,
        expected_entries(proxy.host, pushed, with_old=False),
        expected_blobs(pushed, with_old=False),
    )


# The composite action's steps, run as GitHub runs them


def run_action(
    tmp_path: Path, inputs: Mapping[str, str], env: Mapping[str, str]
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Runs action.yml's `run:` steps with `bash --noprofile --norc -eo pipefail` and the
    environment GitHub gives them; actions/cache/restore is a miss (the cache directory stays as
    it is). Returns the action's outputs and each step's."""
    action = yaml.safe_load((REPO_DIR / "action.yml").read_text(encoding="utf-8"))
    values: dict[str, str] = {
        name: str(spec.get("default", "")) for name, spec in action["inputs"].items()
    }
    values.update(inputs)
    step_outputs: dict[str, dict[str, str]] = {}

    def evaluate(text: str) -> str:
        def one(match: re.Match[str]) -> str:
            expression = match[1]
            if found := re.fullmatch(r"inputs\.([\w-]+)", expression):
                return values[found[1]]
            if found := re.fullmatch(r"steps\.([\w-]+)\.outputs\.([\w-]+)", expression):
                return step_outputs.get(found[1], {}).get(found[2], "")
            raise AssertionError(f"unexpected expression {expression}")

        return re.sub(r"\$\{\{\s*(.*?)\s*\}\}", one, text)

    for step in action["runs"]["steps"]:
        if "uses" in step:
            if step["uses"].startswith("actions/cache/restore@"):
                step_outputs[step["id"]] = {"cache-hit": ""}
            continue
        output_file = tmp_path / f"github-output-{step['id']}"
        output_file.touch()
        step_env = {
            **env,
            "GITHUB_ACTION_PATH": str(REPO_DIR),
            "GITHUB_OUTPUT": str(output_file),
            "RUNNER_TEMP": str(tmp_path / "runner-temp"),
            **{name: evaluate(value) for name, value in step.get("env", {}).items()},
        }
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
            env=step_env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert result.returncode == 0, (step["id"], result.stderr)
        lines = output_file.read_text().splitlines()
        step_outputs[step["id"]] = dict(line.split("=", 1) for line in lines)
    outputs = {name: evaluate(spec["value"]) for name, spec in action["outputs"].items()}
    return outputs, step_outputs


def test_the_actions_steps_fill_the_rootfs(
    tmp_path: Path, proxy: FaultProxy, pushed: Images
) -> None:
    (tmp_path / "runner-temp").mkdir()
    repo = tmp_path / "fbci-pallet"
    sha = commit_pallet(repo, pallet_files(proxy.host, pushed, with_old=False), "p")
    rootfs = make_rootfs(tmp_path / "rootfs")
    outputs, steps = run_action(
        tmp_path,
        {
            "pallet": f"file://{repo}",
            "commit": sha,
            "rootfs": str(rootfs),
            "registry-mirror": f"\n{proxy.url}\n",
            "source": "installed",
        },
        {
            "PATH": f"{FORKLIFT_BOOT.parent}:{os.environ['PATH']}",
            "HOME": str(tmp_path),
            "DOCKER_CONFIG": str(tmp_path),
            "LC_ALL": "C.UTF-8",
        },
    )
    cache_dir = tmp_path / "runner-temp/forklift-boot-ci/images"
    assert outputs == {
        "key": f"forklift-boot-images-v1-linux-arm64-fbci-pallet-{sha}",
        "cache-hit": "",
        "cache-dir": str(cache_dir),
        "pallet-commit": sha,
        "images": "4",
    }
    assert steps["key"]["restore-prefix"] == "forklift-boot-images-v1-linux-arm64-fbci-pallet-"
    assert_rootfs_has(
        rootfs,
        expected_entries(proxy.host, pushed, with_old=False),
        expected_blobs(pushed, with_old=False),
    )
    assert cache_entries(cache_dir) == expected_entries(proxy.host, pushed, with_old=False)
