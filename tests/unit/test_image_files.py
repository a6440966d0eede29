"""cache export-file: files and trees out of a cached image's layers (forklift_boot/image_files.py).

Every image here is crafted entry by entry (tests/imagelayers.py); the expected trees are written
out by hand from the OCI layer rules (whiteouts, opaque directories, hardlinks within a layer)
and Docker's overlay2 behaviour, which tests/integration/test_export_file.py checks against a
real dockerd.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import platform as pyplatform
import pwd
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import pytest

import forklift_boot
from forklift_boot import cli
from forklift_boot.cache import (
    MEDIA_OCI_LAYER,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_ZSTD,
    CacheReader,
    Descriptor,
    ImageCache,
)
from forklift_boot.errors import ForkliftBootError
from forklift_boot.exchange.export_files import ExportResult, export_image_path
from forklift_boot.images import Wanted, plan_load
from forklift_boot.refs import parse_image_ref
from tests.conftest import require_component
from tests.imagelayers import (
    COMPRESSIONS,
    MTIME,
    Entry,
    char_device,
    directory,
    fifo,
    file,
    gzip_with_zeros,
    hardlink,
    layer_tar,
    opaque,
    put_blobs,
    put_image,
    put_index,
    raw_entries,
    sha256,
    symlink,
    whiteout,
)

REF = "registry.example/files:1"
Capture = pytest.CaptureFixture[str]


def run(capsys: Capture, cache_dir: Path, *argv: str) -> tuple[int, str, str]:
    code = cli.main(
        ["--cache-dir", str(cache_dir), "cache", "export-file", *argv],
        env={"HOME": "/nonexistent"},
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def tree(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every path under ``root`` (itself as ".") with its type and what matters about it."""
    found: dict[str, tuple[Any, ...]] = {}
    paths = [root]
    if stat.S_ISDIR(root.lstat().st_mode):
        for directory_path, names, files in os.walk(root):  # symlinks not followed
            paths += [Path(directory_path, name) for name in names + files]
    for path in sorted(paths):
        rel = "." if path == root else path.relative_to(root).as_posix()
        st = path.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            found[rel] = ("symlink", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            found[rel] = ("dir", mode)
        elif stat.S_ISREG(st.st_mode):
            found[rel] = ("file", mode, path.read_bytes())
        elif stat.S_ISFIFO(st.st_mode):
            found[rel] = ("fifo", mode)
        elif stat.S_ISCHR(st.st_mode):
            found[rel] = ("char", mode, os.major(st.st_rdev), os.minor(st.st_rdev))
        elif stat.S_ISBLK(st.st_mode):
            found[rel] = ("block", mode, os.major(st.st_rdev), os.minor(st.st_rdev))
        else:
            found[rel] = ("other",)
    return found


def export(
    cache_dir: Path, source: str, destination: Path, ref: str = REF, **options: Any
) -> ExportResult:
    """The library call the CLI makes, with options the CLI leaves to the effective user."""
    parsed = parse_image_ref(ref)
    wanted = Wanted(parsed.with_default_tag().canonical, (parsed,), essential=True)
    with ImageCache(cache_dir).reading() as reader:
        entry = reader.find(wanted.canonical)
        assert entry is not None
        plan = plan_load(reader, entry, wanted, "linux/amd64")
        return export_image_path(reader, ref, plan.layers, source, destination, **options)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    path = tmp_path / "out"
    path.mkdir()
    return path


# --- whiteouts, opaque directories, replacements ----------------------------------------------

WHITEOUT_LAYERS = [
    layer_tar(
        directory("a"),
        file("a/keep", b"k"),
        file("a/gone", b"g"),
        directory("d"),
        file("d/x", b"x"),
        directory("d/sub"),
        file("d/sub/y", b"y"),
        file("top", b"t"),
        directory("w"),
        file("w/inner", b"i"),
    ),
    layer_tar(
        directory("a"),
        whiteout("a/gone"),
        directory("d", mode=0o750),
        # This layer's own entry before the opaque marker stays, as overlayfs shows it.
        file("d/before", b"b"),
        opaque("d"),
        file("d/new", b"n"),
        whiteout("top"),
        whiteout("w"),
    ),
]


@pytest.mark.parametrize(
    ("compression", "style"),
    [*((c, "oci") for c in COMPRESSIONS), ("gzip", "docker"), ("none", "docker")],
)
def test_whiteouts_and_opaque_directories(
    capsys: Capture, cache_dir: Path, out_dir: Path, compression: str, style: str
) -> None:
    put_image(cache_dir, REF, WHITEOUT_LAYERS, compression=compression, style=style)
    code, out, err = run(capsys, cache_dir, REF, "/", "-o", str(out_dir / "root"))
    assert (code, out) == (0, "")
    assert "exported / (directory)" in err
    assert tree(out_dir / "root") == {
        ".": ("dir", 0o755),
        "a": ("dir", 0o755),
        "a/keep": ("file", 0o644, b"k"),
        "d": ("dir", 0o750),
        "d/before": ("file", 0o644, b"b"),
        "d/new": ("file", 0o644, b"n"),
    }


def test_opaque_directory_hides_lower_subdirectories_too(cache_dir: Path, out_dir: Path) -> None:
    layers = [
        layer_tar(directory("d"), directory("d/sub"), file("d/sub/old", b"o"), file("d/f", b"f")),
        # d/sub exists in this layer too, but the opaque d hides everything lower under it.
        layer_tar(directory("d"), opaque("d"), directory("d/sub"), file("d/sub/new", b"n")),
    ]
    put_image(cache_dir, REF, layers)
    export(cache_dir, "d", out_dir / "d")
    assert tree(out_dir / "d") == {
        ".": ("dir", 0o755),
        "sub": ("dir", 0o755),
        "sub/new": ("file", 0o644, b"n"),
    }


def test_a_whiteout_hides_only_lower_layers(cache_dir: Path, out_dir: Path) -> None:
    layers = [
        layer_tar(file("x", b"lower")),
        layer_tar(file("y", b"same layer"), whiteout("y"), whiteout("x")),
    ]
    put_image(cache_dir, REF, layers)
    export(cache_dir, "/", out_dir / "r")
    assert tree(out_dir / "r") == {".": ("dir", 0o755), "y": ("file", 0o644, b"same layer")}


def test_file_replaced_by_a_directory_and_back(cache_dir: Path, out_dir: Path) -> None:
    layers = [
        layer_tar(file("p", b"file p"), directory("r"), file("r/s", b"s"), symlink("l", "p")),
        layer_tar(
            directory("p", mode=0o700),
            file("p/q", b"q"),
            file("r", b"file r", mode=0o600),
            directory("l"),
            file("l/m", b"m"),
        ),
    ]
    put_image(cache_dir, REF, layers)
    export(cache_dir, "/", out_dir / "r")
    assert tree(out_dir / "r") == {
        ".": ("dir", 0o755),
        "l": ("dir", 0o755),
        "l/m": ("file", 0o644, b"m"),
        "p": ("dir", 0o700),
        "p/q": ("file", 0o644, b"q"),
        "r": ("file", 0o600, b"file r"),
    }


def test_a_parent_the_layer_does_not_list_replaces_a_lower_symlink(
    cache_dir: Path, out_dir: Path, tmp_path: Path
) -> None:
    host = tmp_path / "host"
    host.mkdir()
    layers = [
        # Absolute symlinks pointing at a real host directory: never followed.
        layer_tar(
            symlink("abs", str(host)), directory("keep", mode=0o700), symlink("rel", "../..")
        ),
        # Docker's unpacker makes the unlisted parents 0755 (also over the 0700 "keep").
        layer_tar(file("abs/x", b"x"), file("keep/y", b"y"), file("rel/z", b"z")),
    ]
    put_image(cache_dir, REF, layers)
    export(cache_dir, "/", out_dir / "r")
    assert tree(out_dir / "r") == {
        ".": ("dir", 0o755),
        "abs": ("dir", 0o755),
        "abs/x": ("file", 0o644, b"x"),
        "keep": ("dir", 0o755),
        "keep/y": ("file", 0o644, b"y"),
        "rel": ("dir", 0o755),
        "rel/z": ("file", 0o644, b"z"),
    }
    assert list(host.iterdir()) == []


# --- symlinks, hardlinks, modes ---------------------------------------------------------------


def test_symlinks_are_kept_as_the_image_has_them(
    cache_dir: Path, out_dir: Path, tmp_path: Path
) -> None:
    host_file = tmp_path / "host-file"
    host_file.write_bytes(b"host")
    layers = [
        layer_tar(
            directory("etc-like"),
            file("etc-like/target", b"t"),
            symlink("etc-like/rel", "target"),
            symlink("etc-like/up", "../../../../outside"),
            symlink("etc-like/abs", "/etc/passwd"),
            symlink("etc-like/host", str(host_file)),
        ),
        # A later layer's file over a symlink replaces the symlink, never writes through it.
        layer_tar(directory("etc-like"), file("etc-like/host", b"image")),
    ]
    put_image(cache_dir, REF, layers)
    export(cache_dir, "etc-like", out_dir / "e")
    assert tree(out_dir / "e") == {
        ".": ("dir", 0o755),
        "abs": ("symlink", "/etc/passwd"),
        "host": ("file", 0o644, b"image"),
        "rel": ("symlink", "target"),
        "target": ("file", 0o644, b"t"),
        "up": ("symlink", "../../../../outside"),
    }
    assert host_file.read_bytes() == b"host"
    # SOURCE itself a symlink: exported as the symlink, as Forklift's export does.
    export(cache_dir, "etc-like/abs", out_dir / "passwd")
    assert os.readlink(out_dir / "passwd") == "/etc/passwd"


def test_hardlinks_inside_the_tree_stay_hardlinks(cache_dir: Path, out_dir: Path) -> None:
    layers = [
        layer_tar(
            directory("bin"),
            file("bin/a", b"data", mode=0o755),
            hardlink("bin/b", "bin/a", mode=0o755),
            hardlink("bin/c", "bin/b", mode=0o755),  # a link to a link names the same file
            file("bin/x", b"x1"),
            hardlink("bin/y", "bin/x"),
        ),
        # Changing one name of a lower layer's hardlinked pair breaks the pair (copy-up).
        layer_tar(directory("bin"), file("bin/y", b"y2")),
    ]
    put_image(cache_dir, REF, layers)
    export(cache_dir, "bin", out_dir / "bin")
    bin_dir = out_dir / "bin"
    a, b, c = (bin_dir / name for name in "abc")
    assert a.stat().st_ino == b.stat().st_ino == c.stat().st_ino
    assert a.stat().st_nlink == 3
    assert a.read_bytes() == b"data"
    assert stat.S_IMODE(c.stat().st_mode) == 0o755
    assert (bin_dir / "x").read_bytes() == b"x1"
    assert (bin_dir / "y").read_bytes() == b"y2"
    assert (bin_dir / "x").stat().st_nlink == 1
    assert (bin_dir / "x").stat().st_ino != (bin_dir / "y").stat().st_ino


def test_hardlinks_to_a_file_outside_the_tree_become_one_copy(
    cache_dir: Path, out_dir: Path
) -> None:
    layers = [
        layer_tar(
            directory("lib"),
            file("lib/real", b"payload", mode=0o640, uid=7, gid=8, mtime=MTIME + 5),
            directory("bin"),
            # As in real layers, each name of the file carries its attributes.
            hardlink("bin/tool", "lib/real", mode=0o640, uid=7, gid=8, mtime=MTIME + 5),
            hardlink("lib/alias", "lib/real", mode=0o640, uid=7, gid=8, mtime=MTIME + 5),
            # Through another outside name.
            hardlink("bin/tool2", "lib/alias", mode=0o640, uid=7, gid=8, mtime=MTIME + 5),
        ),
        layer_tar(directory("lib"), file("lib/real", b"changed later")),
    ]
    put_image(cache_dir, REF, layers)
    result = export(cache_dir, "bin", out_dir / "bin")
    tool, tool2 = out_dir / "bin" / "tool", out_dir / "bin" / "tool2"
    assert tool.read_bytes() == tool2.read_bytes() == b"payload"
    assert tool.stat().st_ino == tool2.stat().st_ino
    assert tool.stat().st_nlink == 2
    st = tool.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 7, 8)
    assert st.st_mtime_ns == (MTIME + 5) * 1_000_000_000
    assert result.layer_passes == 1
    # The whole image: the upper layer's lib/real, the links keep the lower one.
    export(cache_dir, "/", out_dir / "all")
    assert (out_dir / "all/lib/real").read_bytes() == b"changed later"
    assert (out_dir / "all/bin/tool").read_bytes() == b"payload"
    assert (out_dir / "all/lib/alias").stat().st_ino == (out_dir / "all/bin/tool").stat().st_ino


@pytest.mark.parametrize("source", ["/", "bin"])
def test_the_last_entry_naming_a_file_sets_its_attributes(
    cache_dir: Path, out_dir: Path, source: str
) -> None:
    """Docker's unpacker chowns, chmods and times each hardlink entry's path, which is the
    shared file (tests/integration/test_export_file.py shows it on a real dockerd)."""
    layers = [
        layer_tar(
            directory("lib"),
            file("lib/a", b"a", mode=0o600, uid=1, gid=1, mtime=MTIME + 1),
            directory("bin"),
            hardlink("bin/b", "lib/a", mode=0o750, uid=2, gid=3, mtime=MTIME + 2),
            hardlink("lib/c", "lib/a", mode=0o755, uid=4, gid=5, mtime=MTIME + 3),
            file("bin/d", b"d", mode=0o600, mtime=MTIME + 1),
            hardlink("bin/e", "bin/d", mode=0o711, uid=6, gid=7, mtime=MTIME + 4),
        )
    ]
    put_image(cache_dir, REF, layers)
    export(cache_dir, source, out_dir / "x")
    bin_dir = out_dir / "x" / ("bin" if source == "/" else "")
    for name, attributes in {"b": (0o755, 4, 5, MTIME + 3), "e": (0o711, 6, 7, MTIME + 4)}.items():
        st = (bin_dir / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) == attributes


def test_modes_times_and_owners(cache_dir: Path, out_dir: Path) -> None:
    layers = [
        layer_tar(
            directory("t", mode=0o750, uid=1000, gid=1001, mtime=MTIME + 1),
            file("t/suid", b"s", mode=0o4755, mtime=MTIME + 2),
            file("t/secret", b"p", mode=0o600, uid=1000, gid=1001, mtime=MTIME + 3),
            directory("t/ro", mode=0o555, mtime=MTIME + 4),
            file("t/ro/inside", b"i", mode=0o444, mtime=MTIME + 5),
            symlink("t/link", "secret", uid=1000, gid=1001, mtime=MTIME + 6),
            directory("t/sticky", mode=0o1777, mtime=MTIME + 7),
            directory("t/shared", mode=0o2775, mtime=MTIME + 8),
        )
    ]
    put_image(cache_dir, REF, layers)
    result = export(cache_dir, "t", out_dir / "t", keep_setid=True)
    assert result.setid_dropped == ()
    expected = {
        ".": (0o750, 1000, 1001, MTIME + 1),
        "suid": (0o4755, 0, 0, MTIME + 2),
        "secret": (0o600, 1000, 1001, MTIME + 3),
        "ro": (0o555, 0, 0, MTIME + 4),
        "ro/inside": (0o444, 0, 0, MTIME + 5),
        "sticky": (0o1777, 0, 0, MTIME + 7),
        "shared": (0o2775, 0, 0, MTIME + 8),
    }
    for rel, (mode, uid, gid, mtime) in expected.items():
        st = (out_dir / "t" / rel).lstat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, int(st.st_mtime)) == (
            mode,
            uid,
            gid,
            mtime,
        ), rel
    link = (out_dir / "t/link").lstat()
    assert (link.st_uid, link.st_gid, int(link.st_mtime)) == (1000, 1001, MTIME + 6)
    # Not as root (tar's --no-same-owner): the files are the user's.
    export(cache_dir, "t", out_dir / "mine", preserve_owner=False)
    assert (out_dir / "mine/secret").stat().st_uid == os.geteuid()
    assert stat.S_IMODE((out_dir / "mine/secret").stat().st_mode) == 0o600
    # By default a file's set-user-ID bit is dropped (and named); a directory's set-group-ID
    # bit, which only picks its entries' group, stays.
    result = export(cache_dir, "t", out_dir / "default")
    assert stat.S_IMODE((out_dir / "default/suid").stat().st_mode) == 0o755
    assert stat.S_IMODE((out_dir / "default/shared").stat().st_mode) == 0o2775
    assert result.setid_dropped == (str(out_dir / "default/suid"),)


def test_device_nodes_and_fifos(
    request: pytest.FixtureRequest, cache_dir: Path, out_dir: Path
) -> None:
    if os.geteuid() != 0:
        require_component(request.config, "device nodes need root")
    layers = [layer_tar(directory("n"), char_device("n/null", 1, 3), fifo("n/pipe"))]
    put_image(cache_dir, REF, layers)
    result = export(cache_dir, "n", out_dir / "root", keep_devices=True)
    assert tree(out_dir / "root") == {
        ".": ("dir", 0o755),
        "null": ("char", 0o666, 1, 3),
        "pipe": ("fifo", 0o640),
    }
    assert result.skipped == ()
    # Unless asked for, devices are left out and named, even as root; fifos are still made.
    result = export(cache_dir, "n", out_dir / "default")
    assert tree(out_dir / "default") == {".": ("dir", 0o755), "pipe": ("fifo", 0o640)}
    assert result.skipped == (str(out_dir / "default" / "null"),)


# --- SOURCE and DEST --------------------------------------------------------------------------

SYMLINKED_LAYERS = [
    layer_tar(
        directory("opt"),
        directory("opt/real-1"),
        directory("opt/real-1/bin"),
        file("opt/real-1/bin/tool", b"v1", mode=0o755),
        symlink("opt/app", "real-1"),
        directory("usr"),
        symlink("usr/local", "/opt/app"),  # absolute: the image's root, not the host's
        symlink("up", "../../../../opt"),  # climbing above the root stops at the root
    ),
    layer_tar(
        directory("opt"),
        directory("opt/real-2"),
        directory("opt/real-2/bin"),
        file("opt/real-2/bin/tool", b"v2", mode=0o755),
        symlink("opt/app", "real-2"),  # the image's final state counts
    ),
]


@pytest.mark.parametrize(
    "source", ["usr/local/bin/tool", "/usr/local/bin/tool", "up/app/bin/tool", "opt/app/bin/tool"]
)
def test_source_through_in_image_symlinks(cache_dir: Path, out_dir: Path, source: str) -> None:
    put_image(cache_dir, REF, SYMLINKED_LAYERS)
    result = export(cache_dir, source, out_dir / "tool")
    assert tree(out_dir / "tool") == {".": ("file", 0o755, b"v2")}
    assert (result.source, result.kind, result.layer_passes) == ("/opt/real-2/bin/tool", "file", 2)


def test_a_directory_source_through_symlinks_and_a_trailing_slash(
    cache_dir: Path, out_dir: Path
) -> None:
    put_image(cache_dir, REF, SYMLINKED_LAYERS)
    export(cache_dir, "usr/local/bin", out_dir / "bin")
    assert tree(out_dir / "bin") == {".": ("dir", 0o755), "tool": ("file", 0o755, b"v2")}
    # A trailing slash follows the last symlink too (as a shell path does).
    export(cache_dir, "usr/local/", out_dir / "app")
    assert sorted(tree(out_dir / "app")) == [".", "bin", "bin/tool"]
    export(cache_dir, "usr/local", out_dir / "link")
    assert tree(out_dir / "link") == {".": ("symlink", "/opt/app")}
    # ".." after a symlink leaves the symlink's target (/opt/real-2), not /usr, as in a shell.
    export(cache_dir, "usr/local/../real-1/bin/tool", out_dir / "v1")
    assert tree(out_dir / "v1") == {".": ("file", 0o755, b"v1")}


def test_file_and_directory_destinations(capsys: Capture, cache_dir: Path, out_dir: Path) -> None:
    put_image(cache_dir, REF, SYMLINKED_LAYERS)
    # The parents of DEST are created, as Forklift creates the export's directory.
    code, _, _ = run(capsys, cache_dir, REF, "opt/real-2/bin/tool", "-o", str(out_dir / "a/b/t"))
    assert code == 0
    assert (out_dir / "a/b/t").read_bytes() == b"v2"
    # An existing file is replaced by a file, an empty directory by a directory.
    code, _, _ = run(capsys, cache_dir, REF, "opt/real-1/bin/tool", "-o", str(out_dir / "a/b/t"))
    assert code == 0
    assert (out_dir / "a/b/t").read_bytes() == b"v1"
    (out_dir / "empty").mkdir()
    code, _, _ = run(capsys, cache_dir, REF, "opt/real-1", "-o", str(out_dir / "empty"))
    assert code == 0
    assert sorted(tree(out_dir / "empty")) == [".", "bin", "bin/tool"]
    # A directory with something in it is never replaced or merged into.
    code, _, err = run(capsys, cache_dir, REF, "opt/real-2", "-o", str(out_dir / "a"))
    assert code == 1
    assert f"{out_dir / 'a'} already exists and isn't empty" in err
    assert (out_dir / "a/b/t").read_bytes() == b"v1"
    # A file over an (empty) directory: the message says what to give instead.
    (out_dir / "dir").mkdir()
    code, _, err = run(capsys, cache_dir, REF, "opt/real-2/bin/tool", "-o", str(out_dir / "dir"))
    assert code == 1
    assert f"{out_dir / 'dir'} is a directory and /opt/real-2/bin/tool is a file" in err
    assert list((out_dir / "dir").iterdir()) == []
    assert not list(out_dir.rglob(".*partial"))


def test_missing_sources_and_images(capsys: Capture, cache_dir: Path, out_dir: Path) -> None:
    put_image(cache_dir, REF, SYMLINKED_LAYERS)
    cases = {
        "opt/real-2/bin/nothing": "/opt/real-2/bin/nothing doesn't exist in the image",
        "nothing/at/all": "/nothing doesn't exist in the image",
        "opt/real-2/bin/tool/under": "/opt/real-2/bin/tool is a file in the image",
    }
    for source, message in cases.items():
        code, _, err = run(capsys, cache_dir, REF, source, "-o", str(out_dir / "x"))
        assert code == 1, source
        assert err.strip().splitlines() == [
            f"Error: couldn't export {source} from {REF}: {message}"
        ]
        assert not (out_dir / "x").exists()
    code, _, err = run(capsys, cache_dir, "registry.example/other:1", "a", "-o", str(out_dir / "x"))
    assert code == 1
    assert "the image is not in the cache" in err
    assert list(out_dir.iterdir()) == []


def test_symlink_loops_fail_with_one_line(capsys: Capture, cache_dir: Path, out_dir: Path) -> None:
    put_image(cache_dir, REF, [layer_tar(symlink("a", "b"), symlink("b", "/a"))])
    code, _, err = run(capsys, cache_dir, REF, "a/x", "-o", str(out_dir / "x"))
    assert code == 1
    assert err.strip() == (
        f"Error: couldn't export a/x from {REF}: too many levels of symbolic links in the image"
    )


def test_platform_of_an_image_index(capsys: Capture, cache_dir: Path, out_dir: Path) -> None:
    put_index(
        cache_dir,
        REF,
        {
            "linux/amd64": [layer_tar(file("arch", b"amd64"))],
            "linux/arm64": [layer_tar(file("arch", b"arm64"))],
        },
    )
    for platform in ("linux/amd64", "linux/arm64"):
        dest = out_dir / platform.replace("/", "-")
        code, _, _ = run(capsys, cache_dir, "--platform", platform, REF, "arch", "-o", str(dest))
        assert code == 0
        assert dest.read_bytes() == platform.split("/")[1].encode()


def test_a_tar_on_stdout(capsysbinary: pytest.CaptureFixture[bytes], cache_dir: Path) -> None:
    layers = [
        layer_tar(
            directory("srv", mode=0o750, uid=5, gid=6),
            file("srv/a", b"aaa", mode=0o640, uid=5, gid=6),
            hardlink("srv/b", "srv/a", mode=0o640, uid=5, gid=6),
            symlink("srv/c", "/srv/a"),
            char_device("srv/null", 1, 3),
            file("srv/s", b"s", mode=0o6755),
        )
    ]
    put_image(cache_dir, REF, layers)
    argv = ["--cache-dir", str(cache_dir), "cache", "export-file", REF, "srv", "-o", "-"]
    # By default, no device node and no set-ID bit, as for a directory.
    assert cli.main(argv, env={"HOME": "/nonexistent"}) == 0
    with tarfile.open(fileobj=io.BytesIO(capsysbinary.readouterr().out)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == ["srv", "srv/a", "srv/b", "srv/c", "srv/s"]
        assert members["srv/s"].mode == 0o755
    code = cli.main([*argv, "--keep-devices", "--keep-setid"], env={"HOME": "/nonexistent"})
    assert code == 0
    data = capsysbinary.readouterr().out
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == ["srv", "srv/a", "srv/b", "srv/c", "srv/null", "srv/s"]
        assert members["srv/s"].mode == 0o6755
        assert (members["srv"].mode, members["srv"].uid, members["srv"].gid) == (0o750, 5, 6)
        a = members["srv/a"]
        assert (a.mode, a.uid, a.gid, a.mtime) == (0o640, 5, 6, MTIME)
        extracted = tar.extractfile(a)
        assert extracted is not None
        assert extracted.read() == b"aaa"
        assert members["srv/b"].islnk()
        assert members["srv/b"].linkname == "srv/a"
        assert (members["srv/c"].issym(), members["srv/c"].linkname) == (True, "/srv/a")
        null = members["srv/null"]
        # Device nodes are in the tar whoever runs it: nothing has to be created for them.
        assert (null.ischr(), null.devmajor, null.devminor) == (True, 1, 3)


def test_without_platform_both_exports_take_the_hosts(
    capsys: Capture, cache_dir: Path, out_dir: Path
) -> None:
    """``cache export-file`` and ``cache export-img`` choose the same manifest of an index:
    ``--platform``, else the one the entry was cached for, else this machine's."""
    host = {"x86_64": "amd64", "aarch64": "arm64"}[pyplatform.machine()]
    per_platform: dict[str, Sequence[bytes]] = {
        f"linux/{arch}": [layer_tar(file("arch", arch.encode()))]
        for arch in ("riscv64", "amd64", "arm64")
    }
    put_index(cache_dir, REF, per_platform)
    put_index(cache_dir, "registry.example/files:arm", per_platform, cached_for="linux/arm64")
    cases = [
        (REF, [], host),
        ("registry.example/files:arm", [], "arm64"),
        ("registry.example/files:arm", ["--platform", "linux/riscv64"], "riscv64"),
        (REF, ["--platform", "linux/arm64"], "arm64"),
    ]
    for number, (ref, options, arch) in enumerate(cases):
        dest = out_dir / f"file-{number}"
        code, _, err = run(capsys, cache_dir, *options, ref, "arch", "-o", str(dest))
        assert code == 0, err
        assert dest.read_bytes() == arch.encode(), (ref, options)
        archive = out_dir / f"img-{number}.tar"
        argv = ["--cache-dir", str(cache_dir), "cache", "export-img", *options, ref]
        assert cli.main([*argv, "-o", str(archive)], env={"HOME": "/nonexistent"}) == 0
        assert _archive_architecture(archive) == arch, (ref, options)


# What each layer blob holds, and what its media type says (None: the right type).
EXPORT_IMG_LAYERS = [
    *((compression, None) for compression in COMPRESSIONS),
    ("none", MEDIA_OCI_LAYER_GZIP),
    ("gzip", MEDIA_OCI_LAYER),
    ("zstd", MEDIA_OCI_LAYER_GZIP),
    ("gzip", MEDIA_OCI_LAYER_ZSTD),
]


@pytest.mark.parametrize(("compression", "media_type"), EXPORT_IMG_LAYERS)
def test_export_img_writes_every_layer_uncompressed(
    cache_dir: Path, out_dir: Path, compression: str, media_type: str | None
) -> None:
    """A docker-archive's ``layer.tar`` files are the layers' tars, whatever the blobs'
    compression (gzip, zstd, none) and whatever their media types say: ``docker load`` and
    dive read them as plain tars."""
    layers = [
        layer_tar(directory("d"), file("d/random", os.urandom(300_000))),
        layer_tar(file("zeros", bytes(2_000_000)), whiteout("d/random")),
    ]
    put_image(cache_dir, REF, layers, compression=compression, media_type=media_type)
    archive = out_dir / "img.tar"
    argv = ["--cache-dir", str(cache_dir), "cache", "export-img", REF, "-o", str(archive)]
    assert cli.main(argv, env={"HOME": "/nonexistent"}) == 0
    with tarfile.open(archive) as tar:
        manifest_file = tar.extractfile("manifest.json")
        assert manifest_file is not None
        [image] = json.load(manifest_file)
        assert image["Layers"] == [sha256(layer)[7:] + "/layer.tar" for layer in layers]
        written = []
        for name in image["Layers"]:
            member = tar.extractfile(name)
            assert member is not None
            written.append(member.read())
    assert written == layers


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_export_img_of_a_damaged_layer_fails_with_one_line(
    capsys: Capture, cache_dir: Path, out_dir: Path, compression: str
) -> None:
    payload = os.urandom(64 << 10)  # incompressible, so a flipped byte stays in file data
    stored = put_image(cache_dir, REF, [layer_tar(file("f", payload))], compression=compression)
    blob = cache_dir / "blobs/sha256" / stored.layer_digests[0].removeprefix("sha256:")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    argv = ["--cache-dir", str(cache_dir), "cache", "export-img", REF]
    code = cli.main([*argv, "-o", str(out_dir / "img.tar")], env={"HOME": "/nonexistent"})
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1, err
    assert stored.layer_digests[0] in err
    assert list(out_dir.iterdir()) == []


def _archive_architecture(path: Path) -> str:
    """The architecture in the config of a docker-archive's one image."""
    with tarfile.open(path) as tar:
        manifest_file = tar.extractfile("manifest.json")
        assert manifest_file is not None
        [image] = json.load(manifest_file)
        config_file = tar.extractfile(image["Config"])
        assert config_file is not None
        return str(json.load(config_file)["architecture"])


@pytest.mark.parametrize("command", ["export-file", "export-img"])
def test_a_bad_platform_is_a_usage_error(
    capsys: Capture, cache_dir: Path, out_dir: Path, command: str
) -> None:
    put_index(cache_dir, REF, {"linux/amd64": [layer_tar(file("arch", b"amd64"))]})
    put_image(cache_dir, "registry.example/plain:1", [layer_tar(file("arch", b"amd64"))])
    source = ["arch"] if command == "export-file" else []
    for ref in (REF, "registry.example/plain:1", "registry.example/not-cached:1"):
        argv = ["--cache-dir", str(cache_dir), "cache", command, "--platform", "linux/"]
        code = cli.main([*argv, ref, *source, "-o", str(out_dir / "x")], env={"HOME": "/n"})
        err = capsys.readouterr().err
        assert code == 2, ref
        assert err.strip().splitlines() == [
            "Error: --platform: invalid platform 'linux/': expected os/arch[/variant], "
            "e.g. linux/arm64"
        ]
        assert list(out_dir.iterdir()) == []


# --- as a user other than root ----------------------------------------------------------------

# Fedora's /etc/shadow is 0000; read-only and closed directories are common too.
READ_ONLY_LAYERS = [
    layer_tar(
        directory("etc"),
        file("etc/shadow", b"root:*::0:99999:7:::\n", mode=0o000),
        directory("etc/ro", mode=0o555, mtime=MTIME + 1),
        file("etc/ro/f", b"ro", mode=0o444, mtime=MTIME + 2),
        directory("etc/closed", mode=0o000, mtime=MTIME + 3),
        file("etc/closed/g", b"g", mode=0o644),
    )
]


@pytest.fixture
def nobody_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A directory the user nobody owns, with a cache of READ_ONLY_LAYERS in it (pytest's
    tmp_path is under a directory only root may enter)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        require_component(request.config, "needs root and setpriv (util-linux) to run as nobody")
    path = Path(tempfile.mkdtemp(prefix="forklift-boot-nobody-"))
    try:
        path.chmod(0o755)
        put_image(path / "cache", REF, READ_ONLY_LAYERS)
        (path / "out").mkdir()
        (path / "tmp").mkdir()
        nobody = pwd.getpwnam("nobody")
        for directory_path, names, files in os.walk(path):
            for name in [".", *names, *files]:
                os.chown(Path(directory_path, name), nobody.pw_uid, nobody.pw_gid)
        yield path
    finally:
        shutil.rmtree(path)


def run_as_nobody(root: Path, *argv: str) -> subprocess.CompletedProcess[bytes]:
    nobody = pwd.getpwnam("nobody")
    command = [
        "setpriv",
        f"--reuid={nobody.pw_uid}",
        f"--regid={nobody.pw_gid}",
        "--clear-groups",
        sys.executable,
        "-m",
        "forklift_boot",
        "--cache-dir",
        str(root / "cache"),
        "cache",
        "export-file",
        REF,
        *argv,
    ]
    env = {
        "HOME": "/nonexistent",
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(Path(forklift_boot.__file__).parents[1]),
        "TMPDIR": str(root / "tmp"),
    }
    return subprocess.run(command, check=False, env=env, capture_output=True, cwd=root, timeout=120)


def test_a_tar_of_unreadable_files_as_nobody(nobody_dir: Path) -> None:
    """The tar's modes come from the image; what is on the disk meanwhile stays readable."""
    done = run_as_nobody(nobody_dir, "etc", "-o", "-")
    assert done.returncode == 0, done.stderr.decode()
    found: dict[str, tuple[Any, ...]] = {}
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        for member in tar:
            data = tar.extractfile(member) if member.isreg() else None
            content = data.read() if data is not None else None
            found[member.name] = (member.type, member.mode, member.uid, member.gid, member.mtime)
            found[member.name] += (content,)
    dir_, reg = tarfile.DIRTYPE, tarfile.REGTYPE
    assert found == {
        "etc": (dir_, 0o755, 0, 0, MTIME, None),
        "etc/closed": (dir_, 0o000, 0, 0, MTIME + 3, None),
        "etc/closed/g": (reg, 0o644, 0, 0, MTIME, b"g"),
        "etc/ro": (dir_, 0o555, 0, 0, MTIME + 1, None),
        "etc/ro/f": (reg, 0o444, 0, 0, MTIME + 2, b"ro"),
        "etc/shadow": (reg, 0o000, 0, 0, MTIME, b"root:*::0:99999:7:::\n"),
    }
    assert list((nobody_dir / "tmp").iterdir()) == []


def test_read_only_trees_as_nobody(nobody_dir: Path) -> None:
    """A 0555 directory as DEST (rename(2) needs write permission on a directory that moves
    to another parent), and 0000 files and directories inside one."""
    out = nobody_dir / "out"
    done = run_as_nobody(nobody_dir, "etc/ro", "-o", str(out / "ro"))
    assert done.returncode == 0, done.stderr.decode()
    assert tree(out / "ro") == {".": ("dir", 0o555), "f": ("file", 0o444, b"ro")}
    assert [int(p.lstat().st_mtime) for p in (out / "ro", out / "ro/f")] == [MTIME + 1, MTIME + 2]
    done = run_as_nobody(nobody_dir, "etc", "-o", str(out / "etc"))
    assert done.returncode == 0, done.stderr.decode()
    assert tree(out / "etc") == {
        ".": ("dir", 0o755),
        "closed": ("dir", 0o000),
        "closed/g": ("file", 0o644, b"g"),
        "ro": ("dir", 0o555),
        "ro/f": ("file", 0o444, b"ro"),
        "shadow": ("file", 0o000, b"root:*::0:99999:7:::\n"),
    }
    nobody = pwd.getpwnam("nobody").pw_uid
    assert {p.lstat().st_uid for p in [out / "etc", *(out / "etc").rglob("*")]} == {nobody}
    assert sorted(p.name for p in out.iterdir()) == ["etc", "ro"]  # no .partial left


def test_an_unreadable_destination_directory_as_nobody(nobody_dir: Path) -> None:
    locked = nobody_dir / "out/locked"
    locked.mkdir(mode=0o000)  # root's: nobody can't list it
    done = run_as_nobody(nobody_dir, "etc/ro", "-o", str(locked))
    assert done.returncode == 1
    assert done.stderr.decode().strip().splitlines() == [
        f"Error: couldn't export etc/ro from {REF}: couldn't read the directory {locked}: "
        "Permission denied"
    ]
    assert sorted(p.name for p in (nobody_dir / "out").iterdir()) == ["locked"]


# --- refused layers ---------------------------------------------------------------------------


def _bad_cases(host: Path) -> dict[str, tuple[list[list[Entry]], str, str, bool]]:
    """name -> (layers, the entry the message names, what it says, refused wherever it is).

    Entries that could write outside DEST are refused anywhere in the image; entries that are
    only invalid (a hardlink to another layer's file) are refused where they would be extracted.
    """
    escape_up = "../" * 12 + host.as_posix().lstrip("/")
    return {
        "dotdot": (
            [[file("ok", b"1"), file("../evil", b"x")]],
            "../evil",
            "has a '..' component",
            True,
        ),
        "dotdot-inside": (
            [[directory("a"), file("a/../../evil", b"x")]],
            "a/../../evil",
            "has a '..' component",
            True,
        ),
        "absolute": (
            [[file(f"{host}/evil", b"x")]],
            f"{host}/evil",
            "names an absolute path",
            True,
        ),
        "symlink-then-write-absolute": (
            [[symlink("esc", str(host)), file("esc/evil", b"x")]],
            "esc/evil",
            f"is under /esc, a symlink to {str(host)!r} in the same layer",
            True,
        ),
        "symlink-then-write-relative": (
            [[directory("d"), symlink("d/esc", escape_up), file("d/esc/evil", b"x")]],
            "d/esc/evil",
            "is under /d/esc, a symlink to",
            True,
        ),
        "hardlink-absolute": (
            [[hardlink("h", f"{host}/secret")]],
            "h",
            f"is a hardlink to an absolute path '{host}/secret'",
            True,
        ),
        "hardlink-dotdot": (
            [[hardlink("h", escape_up + "/secret")]],
            "h",
            "has a '..' component",
            True,
        ),
        "symlink-then-hardlink-through-it": (
            [[symlink("esc", str(host)), hardlink("h", "esc/secret")]],
            "h",
            "is a hardlink to 'esc/secret', which isn't a file earlier in the same layer",
            False,
        ),
        "hardlink-to-a-lower-layer": (
            [[file("lower", b"l")], [hardlink("h", "lower")]],
            "h",
            "is a hardlink to 'lower', which isn't a file earlier in the same layer",
            False,
        ),
        "file-then-entry-under-it": (
            [[file("f", b"f"), file("f/under", b"x")]],
            "f/under",
            "is under /f, a file in the same layer",
            False,
        ),
        "hardlink-from-the-tree-to-nothing-outside": (
            [[directory("sub"), file("sub/f", b"f"), hardlink("sub/h", "missing")]],
            "sub/h",
            "is a hardlink to 'missing', which isn't a file earlier in the same layer",
            True,
        ),
    }


BAD_CASES = list(_bad_cases(Path("/host")))


@pytest.mark.parametrize("case", BAD_CASES)
@pytest.mark.parametrize("source", ["/", "sub"])
def test_unsafe_layers_are_refused(
    capsys: Capture, cache_dir: Path, tmp_path: Path, case: str, source: str
) -> None:
    host = tmp_path / "host"  # a real directory outside DEST that the entries aim at
    host.mkdir()
    (host / "secret").write_bytes(b"host secret")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    layers, entry, problem, anywhere = _bad_cases(host)[case]
    if not any(e.info.name.startswith("sub/") for layer in layers for e in layer):
        layers = [[directory("sub"), file("sub/f", b"f"), *layers[0]], *layers[1:]]
    stored = put_image(cache_dir, REF, [layer_tar(*layer) for layer in layers])
    code, out, err = run(capsys, cache_dir, REF, source, "-o", str(out_dir / "dest"))
    if source == "sub" and not anywhere:
        # The invalid entry is outside the exported tree, so nothing of it is extracted.
        assert code == 0, err
        assert tree(out_dir / "dest") == {".": ("dir", 0o755), "f": ("file", 0o644, b"f")}
    else:
        assert (code, out) == (1, "")
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        digest = stored.layer_digests[-1]
        assert lines[0].startswith(
            f"Error: couldn't export {source} from {REF}: layer {digest} entry {entry!r} {problem}"
        ), lines[0]
        assert lines[0].endswith("; refusing to extract it")
        # Nothing at DEST and no temporary left.
        assert list(out_dir.iterdir()) == []
    # Nothing written on the host, ever.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "host", "out"]
    assert sorted(p.name for p in host.iterdir()) == ["secret"]
    assert (host / "secret").read_bytes() == b"host secret"
    assert (host / "secret").stat().st_nlink == 1


def test_a_damaged_layer_leaves_nothing(capsys: Capture, cache_dir: Path, out_dir: Path) -> None:
    payload = os.urandom(64 << 10)  # incompressible, so a flipped byte stays in file data
    stored = put_image(cache_dir, REF, [layer_tar(directory("d"), file("d/f", payload))])
    blob = cache_dir / "blobs/sha256" / stored.layer_digests[0].removeprefix("sha256:")
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    code, _, err = run(capsys, cache_dir, REF, "d", "-o", str(out_dir / "d"))
    assert code == 1
    assert stored.layer_digests[0] in err
    assert len(err.strip().splitlines()) == 1
    assert list(out_dir.iterdir()) == []


def test_a_truncated_zstd_layer_is_a_read_error(
    capsys: Capture, cache_dir: Path, out_dir: Path
) -> None:
    stored = put_image(
        cache_dir, REF, [layer_tar(file("f", os.urandom(200_000)))], compression="zstd"
    )
    blob = cache_dir / "blobs/sha256" / stored.layer_digests[0].removeprefix("sha256:")
    data = blob.read_bytes()
    os.chmod(blob, 0o644)
    blob.write_bytes(data[: len(data) // 2])
    code, _, err = run(capsys, cache_dir, REF, "f", "-o", str(out_dir / "f"))
    assert code == 1
    assert f"blob {stored.layer_digests[0]}" in err or f"layer {stored.layer_digests[0]}" in err
    assert list(out_dir.iterdir()) == []


class CountingReader(CacheReader):
    """A cache reader that remembers which blobs were opened."""

    def __init__(self, cache_dir: Path) -> None:
        super().__init__(cache_dir)
        self.opened: list[str] = []

    def open_blob(
        self, digest: str, *, verify: bool = True, expected_size: int | None = None
    ) -> BinaryIO:
        self.opened.append(digest)
        return super().open_blob(digest, verify=verify, expected_size=expected_size)


@pytest.mark.parametrize(
    ("source", "reads"), [("opt/real-2/bin", 1), ("usr/local/bin", 2), ("no/such", 1)]
)
def test_each_layer_is_read_once_unless_a_symlink_leads_elsewhere(
    cache_dir: Path, out_dir: Path, source: str, reads: int
) -> None:
    stored = put_image(cache_dir, REF, SYMLINKED_LAYERS)
    reader = CountingReader(cache_dir)
    layers = [
        Descriptor(MEDIA_OCI_LAYER_GZIP, d, reader.blob_size(d)) for d in stored.layer_digests
    ]
    try:
        export_image_path(reader, REF, layers, source, out_dir / "x")
    except ForkliftBootError:
        assert source == "no/such"
    assert reader.opened == stored.layer_digests * reads


# --- hostile layers: bounded memory, time and disk (issue 14, item 4) -------------------------

GIB = 1 << 30
TIB = 1 << 40
SECRET_MARKER = b"unrelated file beside the destination\n"


def run_bounded(
    tmp_path: Path, cache_dir: Path, *argv: str, memory: int = GIB, timeout: float = 120
) -> subprocess.CompletedProcess[bytes]:
    """``cache export-file`` in a child whose address space is capped and which must finish in
    time; $TMPDIR is ``tmp_path/tmpdir``. Hang and memory guards, generous against a normal
    export (well under 200 MB and a second here), not benchmarks."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    code = (
        "import resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))\n"
        "from forklift_boot import cli\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    command = [sys.executable, "-c", code, "--cache-dir", str(cache_dir), "cache", "export-file"]
    env = {
        "HOME": "/nonexistent",
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(Path(forklift_boot.__file__).parents[1]),
        "TMPDIR": str(tmpdir),
    }
    return subprocess.run(
        [*command, REF, *argv], env=env, capture_output=True, timeout=timeout, check=False
    )


def assert_one_line_error(done: subprocess.CompletedProcess[bytes], *words: str) -> str:
    err = done.stderr.decode(errors="replace")
    assert done.returncode == 1, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: couldn't export "), err
    for word in words:
        assert word in lines[0]
    return lines[0]


def marked_dir(path: Path) -> Path:
    """A directory holding one unrelated file, which an export into it must leave alone."""
    path.mkdir(exist_ok=True)
    (path / "marker").write_bytes(SECRET_MARKER)
    return path


def assert_only_marker(path: Path) -> None:
    assert [p.name for p in path.iterdir()] == ["marker"]
    assert (path / "marker").read_bytes() == SECRET_MARKER


def extended_header(kind: bytes, size: int) -> bytes:
    """A tar header of ``kind`` (PAX ``x``, GNU long name ``L`` or long link ``K``) whose data,
    ``size`` bytes, follows it."""
    info = tarfile.TarInfo("././@LongLink" if kind in (b"L", b"K") else "././@PaxHeader")
    info.type = kind
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


@pytest.mark.parametrize("kind", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, b"K"])
def test_a_huge_extended_header_is_refused_in_bounded_memory(
    tmp_path: Path, cache_dir: Path, kind: bytes
) -> None:
    """A 1.5 GiB PAX record, long name or long link (zeros, a few MB of gzip) used to be read
    whole: 3.2 GB, then a MemoryError traceback under a memory limit. Headers are capped at
    1 MiB: the export stops with one line, under a 1 GiB address-space limit."""
    claimed = 3 * GIB // 2
    layer = gzip_with_zeros(extended_header(kind, claimed), claimed, layer_tar(file("f", b"f")))
    put_blobs(cache_dir, REF, [layer], MEDIA_OCI_LAYER_GZIP)
    out = marked_dir(tmp_path / "out")
    done = run_bounded(tmp_path, cache_dir, "/", "-o", str(out / "dest"))
    assert_one_line_error(done, "headers take more than 1 MiB", "refusing to extract it")
    assert_only_marker(out)
    assert list((tmp_path / "tmpdir").iterdir()) == []


def test_a_long_chain_of_extended_headers_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    """tarfile reads each extended header by recursing into the next: 2,000 long names in a
    row (2 MB, a few KB of gzip) ended in a RecursionError traceback."""
    record = extended_header(tarfile.GNUTYPE_LONGNAME, 512) + b"n".ljust(512, b"\0")
    layer = gzip.compress(record * 2000 + layer_tar(file("f", b"f")), mtime=0)
    put_blobs(cache_dir, REF, [layer], MEDIA_OCI_LAYER_GZIP)
    out = marked_dir(tmp_path / "out")
    done = run_bounded(tmp_path, cache_dir, "/", "-o", str(out / "dest"))
    assert_one_line_error(done, "more than 32 extended headers in a row")
    assert_only_marker(out)


def test_ordinary_extended_headers_pass(cache_dir: Path, out_dir: Path) -> None:
    """What real layers hold: PAX records for long names, links and times, a GNU long name."""
    name = "/".join(["d" * 100] * 10)  # 1 KB: a PAX path, then a GNU long name
    layer = raw_entries(*(directory("/".join(["d" * 100] * n)) for n in range(1, 11)))
    gnu = tarfile.TarInfo(f"{name}/gnu")
    gnu.size = 3
    layer += gnu.tobuf(format=tarfile.GNU_FORMAT) + b"gnu".ljust(512, b"\0")
    layer += layer_tar(file(f"{name}/pax", b"pax", mtime=MTIME))
    put_image(cache_dir, REF, [layer])
    export(cache_dir, "/", out_dir / "root")
    assert (out_dir / "root" / name / "gnu").read_bytes() == b"gnu"
    assert (out_dir / "root" / name / "pax").read_bytes() == b"pax"


def sparse_member(style: str, name: str, fragments: list[tuple[int, bytes]], size: int) -> bytes:
    """A sparse file's tar entry as GNU tar writes it: ``pax`` (format 0.1, the map in PAX
    records) or ``gnu`` (the old ``S`` type, the map in the header; at most 4 fragments)."""
    data = b"".join(chunk for _, chunk in fragments)
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = MTIME
    if style == "pax":
        info.pax_headers = {
            "GNU.sparse.size": str(size),
            "GNU.sparse.numblocks": str(len(fragments)),
            "GNU.sparse.map": ",".join(f"{offset},{len(chunk)}" for offset, chunk in fragments),
        }
        header = info.tobuf(format=tarfile.PAX_FORMAT)
    else:
        assert len(fragments) <= 4
        info.type = tarfile.GNUTYPE_SPARSE
        raw = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
        for number, (offset, chunk) in enumerate(fragments):
            at = 386 + 24 * number
            raw[at : at + 12] = _tar_number(offset)
            raw[at + 12 : at + 24] = _tar_number(len(chunk))
        raw[483:495] = _tar_number(size)
        raw[148:156] = b" " * 8
        raw[148:155] = b"%06o\0" % sum(raw)
        header = bytes(raw)
    return header + data + bytes(-len(data) % tarfile.BLOCKSIZE)


def _tar_number(value: int) -> bytes:
    """A 12-byte tar number field: octal, or GNU's base-256 (a leading 0x80) when too big."""
    if value < 8**11:
        return b"%011o\0" % value
    return b"\x80" + value.to_bytes(11, "big")


def sparse_layer(style: str) -> tuple[bytes, list[tuple[int, bytes]]]:
    """A layer of a few KB holding a sparse file of 1 TiB: data at its start and its end."""
    fragments = [(0, os.urandom(5000)), (TIB - 4096, os.urandom(4096))]
    entry = sparse_member(style, "big/file", fragments, TIB)
    return raw_entries(directory("big")) + entry + bytes(1024), fragments


@pytest.mark.parametrize("style", ["pax", "gnu"])
def test_a_sparse_file_stays_sparse(tmp_path: Path, cache_dir: Path, style: str) -> None:
    """A sparse member claiming 1 TiB used to be written out, zeros and all (1.8 GB in 6 s):
    its holes are now seeked over, so the file takes what its data takes."""
    layer, fragments = sparse_layer(style)
    put_image(cache_dir, REF, [layer])
    out = marked_dir(tmp_path / "out")
    done = run_bounded(tmp_path, cache_dir, "big", "-o", str(out / "big"), timeout=60)
    assert done.returncode == 0, done.stderr.decode()
    written = out / "big" / "file"
    status = written.stat()
    assert status.st_size == TIB
    assert status.st_blocks * 512 < 1 << 20  # the data's blocks, not a TiB of zeros
    with written.open("rb") as opened:
        for offset, chunk in fragments:
            opened.seek(offset)
            assert opened.read(len(chunk)) == chunk
        opened.seek(5000)
        assert opened.read(1 << 16) == bytes(1 << 16)  # a hole reads as zeros
    assert sorted(p.name for p in out.iterdir()) == ["big", "marker"]
    assert list((tmp_path / "tmpdir").iterdir()) == []


@pytest.mark.parametrize("style", ["pax", "gnu"])
def test_a_sparse_file_is_refused_for_a_tar_on_stdout(
    tmp_path: Path, cache_dir: Path, style: str
) -> None:
    """A tar stream can't keep it sparse: it would carry 1 TiB of zeros."""
    put_image(cache_dir, REF, [sparse_layer(style)[0]])
    done = run_bounded(tmp_path, cache_dir, "big", "-o", "-", timeout=60)
    assert_one_line_error(done, "'big/file' is a sparse file of 1.0 TiB", "-o DEST")
    assert done.stdout == b""
    assert list((tmp_path / "tmpdir").iterdir()) == []


def test_a_sparse_map_out_of_order_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    fragments = [(8192, b"b" * 512), (0, b"a" * 512)]
    layer = sparse_member("pax", "f", fragments, 16384) + bytes(1024)
    put_image(cache_dir, REF, [layer])
    out = marked_dir(tmp_path / "out")
    done = run_bounded(tmp_path, cache_dir, "/", "-o", str(out / "dest"))
    assert_one_line_error(done, "'f' has a sparse map that doesn't fit its size")
    assert_only_marker(out)


@pytest.fixture
def small_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A 8 MiB tmpfs (root only), holding a marker file."""
    path = tmp_path / "small"
    path.mkdir()
    mounted = os.geteuid() == 0 and (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(path)],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    if not mounted:
        require_component(request.config, "needs root and mount to make a small tmpfs")
    try:
        yield marked_dir(path)
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_file_bigger_than_the_free_space_is_refused_before_writing(
    tmp_path: Path, cache_dir: Path, small_fs: Path
) -> None:
    """64 MiB of zeros (64 KB of gzip) for an 8 MiB filesystem: refused before a byte is
    written, not once the disk is full."""
    entry = tarfile.TarInfo("zeros")
    entry.size = 64 << 20
    layer = gzip_with_zeros(entry.tobuf(format=tarfile.PAX_FORMAT), 64 << 20, bytes(1024))
    put_blobs(cache_dir, REF, [layer], MEDIA_OCI_LAYER_GZIP)
    done = run_bounded(tmp_path, cache_dir, "/", "-o", str(small_fs / "dest"))
    line = assert_one_line_error(done, "'zeros' needs 64 MiB, more than the ")
    assert f"free in {small_fs}; free some space" in line
    assert_only_marker(small_fs)
    # A tar on stdout stages the tree under $TMPDIR first: the same check there.
    tmpdir = tmp_path / "tmpdir"
    subprocess.run(["mount", "--bind", str(small_fs), str(tmpdir)], check=True)
    try:
        done = run_bounded(tmp_path, cache_dir, "/", "-o", "-")
        assert_one_line_error(done, "'zeros' needs 64 MiB", "set TMPDIR to a larger one")
        assert done.stdout == b""
        assert_only_marker(tmpdir)
    finally:
        subprocess.run(["umount", str(tmpdir)], check=True)


def test_running_out_of_space_midway_stops_with_one_line(
    tmp_path: Path, cache_dir: Path, small_fs: Path
) -> None:
    """Twelve files of 1 MiB, each fitting alone, for 8 MiB: the export stops at the one
    that doesn't fit, and leaves nothing behind."""
    layer = layer_tar(*(file(f"f{n:02}", os.urandom(1 << 20)) for n in range(12)))
    put_image(cache_dir, REF, [layer])
    done = run_bounded(tmp_path, cache_dir, "/", "-o", str(small_fs / "dest"))
    assert_one_line_error(done, "needs 1.0 MiB, more than the ", f"free in {small_fs}")
    assert_only_marker(small_fs)


# --- device nodes and set-ID bits (issue 14, item 14) ------------------------------------------


def block_device(name: str, major: int, minor: int, *, mode: int = 0o666) -> Entry:
    entry = char_device(name, major, minor, mode=mode)
    entry.info.type = tarfile.BLKTYPE
    return entry


HOST_ASSETS_LAYERS = [
    layer_tar(
        directory("etc"),
        file("etc/app.conf", b"conf\n"),
        block_device("etc/disk", 8, 0),  # the host's first disk, writable by anyone
        char_device("etc/mem", 1, 1),
        file("etc/root-shell", b"#!/bin/sh\n", mode=0o4755),
        file("etc/group-tool", b"#!/bin/sh\n", mode=0o2755),
        hardlink("etc/root-shell-2", "etc/root-shell", mode=0o4755),
        directory("etc/shared", mode=0o2775),
    )
]


def test_device_nodes_and_set_id_bits_only_when_asked_for(
    request: pytest.FixtureRequest, capsys: Capture, cache_dir: Path, tmp_path: Path
) -> None:
    """As root, an image's block device node (mode 0666) and set-user-ID root file used to
    land on the host as they were. A file export is configuration and assets for the host:
    without --keep-devices and --keep-setid there are no device nodes and no set-ID bits on
    files, each said once in a warning."""
    if os.geteuid() != 0:
        require_component(request.config, "creating device nodes needs root")
    put_image(cache_dir, REF, HOST_ASSETS_LAYERS)
    out = marked_dir(tmp_path / "out")
    code, _, err = run(capsys, cache_dir, REF, "etc", "-o", str(out / "etc"))
    assert code == 0, err
    assert tree(out / "etc") == {
        ".": ("dir", 0o755),
        "app.conf": ("file", 0o644, b"conf\n"),
        "group-tool": ("file", 0o755, b"#!/bin/sh\n"),
        "root-shell": ("file", 0o755, b"#!/bin/sh\n"),
        "root-shell-2": ("file", 0o755, b"#!/bin/sh\n"),
        "shared": ("dir", 0o2775),
    }
    assert (out / "etc/root-shell").stat().st_ino == (out / "etc/root-shell-2").stat().st_ino
    warnings = [line for line in err.splitlines() if not line.startswith("exported ")]
    assert warnings == [
        f"Warning: left out 2 device nodes (--keep-devices keeps them): {out}/etc/disk, "
        f"{out}/etc/mem",
        "Warning: dropped the set-user-ID/set-group-ID bits of 3 files (--keep-setid keeps "
        f"them): {out}/etc/group-tool, {out}/etc/root-shell, {out}/etc/root-shell-2",
    ]
    code, _, err = run(
        capsys, cache_dir, REF, "etc", "-o", str(out / "kept"), "--keep-devices", "--keep-setid"
    )
    assert code == 0, err
    assert err.strip().splitlines() == [
        f"exported etc (directory) from {REF} to {out}/kept: 8 entries, 25 B of file data"
    ]
    kept = tree(out / "kept")
    assert kept["disk"] == ("block", 0o666, 8, 0)
    assert kept["mem"] == ("char", 0o666, 1, 1)
    assert kept["root-shell"] == ("file", 0o4755, b"#!/bin/sh\n")
    assert kept["group-tool"] == ("file", 0o2755, b"#!/bin/sh\n")
    assert sorted(p.name for p in out.iterdir()) == ["etc", "kept", "marker"]
    assert (out / "marker").read_bytes() == SECRET_MARKER


def test_a_device_node_as_source_is_refused_unless_asked_for(
    capsys: Capture, cache_dir: Path, out_dir: Path
) -> None:
    put_image(cache_dir, REF, HOST_ASSETS_LAYERS)
    for output in (str(out_dir / "disk"), "-"):
        code, _, err = run(capsys, cache_dir, REF, "etc/disk", "-o", output)
        assert code == 1
        assert err.strip().splitlines() == [
            f"Error: couldn't export etc/disk from {REF}: /etc/disk is a block device, and "
            "device nodes are left out unless asked for (--keep-devices)"
        ]
    assert list(out_dir.iterdir()) == []
