"""cache export-file against what a container sees: the same crafted layers loaded into a private
dockerd (overlay2), ``docker create`` + ``docker export`` (the whole filesystem) and ``docker cp``
(one path, symlinks in it resolved by Docker) give the expected trees; forklift-boot's export of
the same image from its cache must match them entry by entry: names, types, contents, modes,
owners, times, symlink targets, device numbers and which names are one file (hardlinks).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forklift_boot import cli
from tests.conftest import require_component
from tests.imagelayers import (
    MTIME,
    char_device,
    directory,
    docker_archive,
    fifo,
    file,
    hardlink,
    layer_tar,
    opaque,
    put_image,
    symlink,
    whiteout,
)
from tests.testbed.dockerd import DockerDaemon

pytestmark = pytest.mark.docker

REF = "fbexport/files:1"
# What `docker create` adds to every container (its init layer), left out of the comparison.
DOCKER_INIT_PATHS = frozenset({".dockerenv", "dev", "etc", "proc", "sys"})
CRAFTED_BEFORE = 1_700_000_000  # crafted times are MTIME (2020); Docker's own are now

LAYERS = [
    layer_tar(
        directory("data"),
        directory("data/a", mode=0o750, uid=1000, gid=1000, mtime=MTIME + 1),
        file("data/a/keep", b"keep", uid=1000, gid=1000),
        file("data/a/gone", b"gone"),
        directory("data/opq"),
        file("data/opq/old", b"old"),
        directory("data/opq/sub"),
        file("data/opq/sub/old2", b"old2"),
        directory("data/wdir"),
        file("data/wdir/f", b"f"),
        file("data/p", b"p-file"),
        directory("data/r"),
        file("data/r/s", b"s"),
        symlink("data/l", "/data/a"),
        directory("data/keep0700", mode=0o700),
        directory("data/bin"),
        file("data/bin/tool", b"tool", mode=0o755, mtime=MTIME + 2),
        hardlink("data/bin/tool-link", "data/bin/tool"),
        directory("data/lib"),
        file("data/lib/real", b"real", mode=0o640, uid=7, gid=8, mtime=MTIME + 3),
        hardlink("data/bin/real-link", "data/lib/real"),
        file("data/x", b"x1"),
        hardlink("data/y", "data/x"),
        file("data/suid", b"suid", mode=0o4755),
        directory("data/ro", mode=0o555, mtime=MTIME + 4),
        file("data/ro/f", b"ro", mode=0o444),
        symlink("data/rel", "a/keep", uid=1000, gid=1000, mtime=MTIME + 5),
        symlink("data/abs", "/data/a/keep"),
        symlink("data/up", "../../../../data/a"),
        fifo("data/pipe"),
        char_device("data/null", 1, 3),
        directory("srv"),
        directory("srv/real-1"),
        directory("srv/real-1/bin"),
        file("srv/real-1/bin/app", b"v1", mode=0o755),
        symlink("srv/current", "real-1"),
        symlink("app", "/srv/current"),
    ),
    layer_tar(
        directory("data", mtime=MTIME + 10),
        directory("data/a", mode=0o750, uid=1000, gid=1000, mtime=MTIME + 11),
        whiteout("data/a/gone"),
        directory("data/opq"),
        opaque("data/opq"),
        file("data/opq/new", b"new"),
        directory("data/opq/sub"),
        file("data/opq/sub/new2", b"new2"),
        whiteout("data/wdir"),
        directory("data/p", mode=0o700),
        file("data/p/q", b"q"),
        file("data/r", b"r-file", mode=0o600),
        # No entry for data/l: the unpacker makes it a directory over the lower symlink.
        file("data/l/x", b"lx"),
        # Nor for data/keep0700: its attributes become a parent's defaults.
        file("data/keep0700/f", b"k"),
        file("data/y", b"y2"),
        directory("srv"),
        directory("srv/real-2"),
        directory("srv/real-2/bin"),
        file("srv/real-2/bin/app", b"v2", mode=0o755),
        symlink("srv/current", "real-2"),
    ),
]


@pytest.fixture(scope="module")
def container(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A created (never started) container of the crafted image, in a private dockerd."""
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        require_component(request.config, "needs root and dockerd (apt-get install docker.io)")
    with DockerDaemon() as daemon:
        client = daemon.client()
        try:
            # The expected values are overlay2's (what Docker uses on ext4, as here).
            assert client.info()["Driver"] == "overlay2"
            client.images.load(docker_archive(REF, LAYERS))
            created = client.containers.create(REF)
            yield created
            created.remove()
        finally:
            client.close()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("export-file") / "cache"
    put_image(cache, REF, LAYERS)
    return cache


# Docker creates the image's device nodes and keeps set-ID bits; export-file does only when asked.
AS_DOCKER = ("--keep-devices", "--keep-setid")


def export(cache_dir: Path, source: str, destination: str) -> None:
    argv = ["--cache-dir", str(cache_dir), "cache", "export-file", REF, source, "-o", destination]
    assert cli.main([*argv, *AS_DOCKER], env={"HOME": "/nonexistent"}) == 0


Description = dict[str, tuple[Any, ...]]


def describe_tar(
    data: bytes, *, skip: frozenset[str] = frozenset()
) -> tuple[Description, set[Any]]:
    """Each entry's facts, and the sets of names that are one file (hardlinks)."""
    entries: Description = {}
    groups: dict[str, set[str]] = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar:
            name = member.name.strip("/").removeprefix("./")
            if not name or name == "." or name.split("/")[0] in skip:
                continue
            if member.islnk():
                target = member.linkname.strip("/").removeprefix("./")
                entries[name] = entries[target]
                groups.setdefault(target, {target}).add(name)
                continue
            if member.isreg():
                extracted = tar.extractfile(member)
                assert extracted is not None
                what: tuple[Any, ...] = ("file", hashlib.sha256(extracted.read()).hexdigest())
            elif member.isdir():
                what = ("dir",)
            elif member.issym():
                what = ("symlink", member.linkname)
            elif member.ischr():
                what = ("char", member.devmajor, member.devminor)
            elif member.isfifo():
                what = ("fifo",)
            else:
                what = ("other", member.type)
            mode = member.mode & 0o7777 if not member.issym() else None
            entries[name] = (*what, mode, member.uid, member.gid, _time(what[0], member.mtime))
    return entries, {frozenset(g) for g in groups.values()}


def describe_dir(root: Path, top: str | None = None) -> tuple[Description, set[Any]]:
    """As describe_tar, for a tree on disk; ``top`` names ``root`` itself (else it's left out)."""
    entries: Description = {}
    inodes: dict[int, set[str]] = {}
    paths = [root] if top is not None else []
    if stat.S_ISDIR(root.lstat().st_mode):
        for directory_path, names, files in os.walk(root):  # symlinks not followed
            paths += [Path(directory_path, name) for name in names + files]
    for path in sorted(paths):
        if path == root:
            rel = str(top)
        else:
            rel = path.relative_to(root).as_posix()
            rel = f"{top}/{rel}" if top is not None else rel
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            what: tuple[Any, ...] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            inodes.setdefault(st.st_ino, set()).add(rel)
        elif stat.S_ISDIR(st.st_mode):
            what = ("dir",)
        elif stat.S_ISLNK(st.st_mode):
            what = ("symlink", os.readlink(path))
        elif stat.S_ISCHR(st.st_mode):
            what = ("char", os.major(st.st_rdev), os.minor(st.st_rdev))
        elif stat.S_ISFIFO(st.st_mode):
            what = ("fifo",)
        else:
            what = ("other",)
        mode = stat.S_IMODE(st.st_mode) if not stat.S_ISLNK(st.st_mode) else None
        entries[rel] = (*what, mode, st.st_uid, st.st_gid, _time(what[0], st.st_mtime))
    return entries, {frozenset(g) for g in inodes.values() if len(g) > 1}


def _time(kind: str, mtime: float) -> int | str:
    """Crafted times must match to the second; a directory that the unpacker made itself
    (no entry in the layer) only has to be recent on both sides."""
    if kind == "dir" and mtime >= CRAFTED_BEFORE:
        assert mtime > time.time() - 3600
        return "made by the unpacker"
    return int(mtime)


def docker_export(container: Any) -> bytes:
    return b"".join(container.export())


def docker_cp(container: Any, path: str) -> bytes:
    stream, _ = container.get_archive(path)
    return b"".join(stream)


def test_the_whole_filesystem_matches_docker_export(
    container: Any, cache_dir: Path, tmp_path: Path
) -> None:
    expected, expected_links = describe_tar(docker_export(container), skip=DOCKER_INIT_PATHS)
    export(cache_dir, "/", str(tmp_path / "root"))
    actual, actual_links = describe_dir(tmp_path / "root")
    assert actual == expected
    assert actual_links == expected_links
    # The cases the layers were built for, stated once more in plain words (from Docker):
    assert "data/a/gone" not in expected
    assert "data/wdir" not in expected
    assert sorted(n for n in expected if n.startswith("data/opq/")) == [
        "data/opq/new",
        "data/opq/sub",
        "data/opq/sub/new2",
    ]
    assert expected["data/p"][0] == "dir"
    assert expected["data/r"][0] == "file"
    assert expected["data/l"][:2] == ("dir", 0o755)
    assert expected["data/keep0700"][1] == 0o755
    assert frozenset({"data/bin/tool", "data/bin/tool-link"}) in expected_links
    assert frozenset({"data/lib/real", "data/bin/real-link"}) in expected_links
    assert not any("data/y" in group for group in expected_links)
    assert expected["data/suid"][2] == 0o4755
    assert expected["data/null"][:3] == ("char", 1, 3)


@pytest.mark.parametrize(
    "source",
    ["/data/bin", "/data/a", "/data/opq", "/app/bin/app", "/app/bin", "/data/up/keep", "/data/abs"],
)
def test_one_path_matches_docker_cp(
    container: Any,
    cache_dir: Path,
    tmp_path: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
    source: str,
) -> None:
    """``docker cp CONTAINER:SOURCE -`` resolves symlinks in SOURCE's path inside the container
    and names entries from SOURCE's last component, as ``-o -`` does; ``-o DEST`` writes the
    same tree at DEST."""
    expected, expected_links = describe_tar(docker_cp(container, source))
    argv = ["--cache-dir", str(cache_dir), "cache", "export-file", REF, source, "-o", "-"]
    assert cli.main([*argv, *AS_DOCKER], env={"HOME": "/nonexistent"}) == 0
    actual, actual_links = describe_tar(capsysbinary.readouterr().out)
    assert actual == expected
    assert actual_links == expected_links
    top = min(expected, key=len)  # SOURCE's last component, as Docker names it
    export(cache_dir, source, str(tmp_path / "dest"))
    at_dest, dest_links = describe_dir(tmp_path / "dest", top=top)
    assert at_dest == expected
    assert dest_links == expected_links
