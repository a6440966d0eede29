"""ClassicStore against fake Docker data roots: layers rebuilt from tar-split and diff dirs."""

from __future__ import annotations

import base64
import errno
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from forklift_boot.stores.docker.classic_store import (
    CHUNK_SIZE,
    MAX_LINE,
    ClassicStore,
    DirectReadError,
    LayerReader,
    ReadCounter,
    chain_ids,
    config_diff_ids,
)

MTIME = 1_700_000_000


@dataclass
class Member:
    """One tar member: a regular file (content), a directory, a symlink or a hard link."""

    name: str
    content: bytes = b""
    kind: bytes = tarfile.REGTYPE
    target: str = ""
    xattrs: dict[str, str] = field(default_factory=dict)


def make_tar(members: Iterable[Member], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type, info.mtime, info.mode = (
                m.kind,
                MTIME,
                0o755 if m.kind == tarfile.DIRTYPE else 0o644,
            )
            info.linkname = m.target
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in m.xattrs.items()}
            if m.kind == tarfile.REGTYPE:
                info.size = len(m.content)
                tar.addfile(info, io.BytesIO(m.content))
            else:
                tar.addfile(info)
    return buf.getvalue()


def tar_split_lines(tar_bytes: bytes) -> list[dict[str, Any]]:
    """tar-split's NDJSON for a tar (vbatts/tar-split tar/storage): raw bytes as type 2 segments,
    each member's content as a type 1 entry naming the file (name_raw when not UTF-8)."""
    entries: list[dict[str, Any]] = []

    def segment(data: bytes) -> None:
        if data:
            entries.append({"type": 2, "payload": base64.b64encode(data).decode()})

    done = 0
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
        for info in tar:
            segment(tar_bytes[done : info.offset_data])
            raw_name = info.name.encode("utf-8", "surrogateescape")
            try:
                name: dict[str, Any] = {"name": raw_name.decode("utf-8")}
            except UnicodeDecodeError:
                name = {"name_raw": base64.b64encode(raw_name).decode()}
            size = info.size if info.isreg() else 0
            # As tar-split's Go encoder writes them: no "size" when 0.
            entries.append({"type": 1, **name, **({"size": size} if size else {}), "payload": None})
            done = info.offset_data + size
    segment(tar_bytes[done:])
    for position, entry in enumerate(entries):
        entry["position"] = position
    return entries


def encode_lines(entries: Iterable[dict[str, Any]]) -> bytes:
    return gzip.compress(b"".join(json.dumps(e).encode() + b"\n" for e in entries))


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class FakeLayer:
    store: ClassicStore
    chain_id: str
    diff_id: str
    tar: bytes
    layer_dir: Path
    diff_dir: Path

    def open(self) -> LayerReader:
        return self.store.open_layer(self.chain_id, self.diff_id)


def fake_layer(root: Path, members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> FakeLayer:
    """A data root holding one layer as dockerd's overlay2 would: layerdb entry and diff dir."""
    tar = make_tar(members, fmt)
    diff_id = sha(tar)
    cache_id = hashlib.sha256(tar + b"cache").hexdigest()
    layer_dir = root / "image" / "overlay2" / "layerdb" / "sha256" / diff_id.removeprefix("sha256:")
    layer_dir.mkdir(parents=True)
    (layer_dir / "diff").write_text(diff_id)
    (layer_dir / "cache-id").write_text(cache_id)
    (layer_dir / "tar-split.json.gz").write_bytes(encode_lines(tar_split_lines(tar)))
    diff_dir = root / "overlay2" / cache_id / "diff"
    diff_dir.mkdir(parents=True)
    for m in members:
        path = diff_dir / os.fsdecode(m.name.encode("utf-8", "surrogateescape")).lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        if m.kind == tarfile.DIRTYPE:
            path.mkdir(exist_ok=True)
        elif m.kind == tarfile.SYMTYPE:
            path.symlink_to(m.target)
        elif m.kind == tarfile.LNKTYPE:
            os.link(diff_dir / m.target, path)
        else:
            path.write_bytes(m.content)
    store = ClassicStore(root, "overlay2")
    return FakeLayer(store, diff_id, diff_id, tar, layer_dir, diff_dir)


def read_all(reader: LayerReader) -> bytes:
    return b"".join(bytes(chunk) for chunk in reader.chunks())


def pattern(size: int, seed: int) -> bytes:
    block = hashlib.sha256(bytes([seed])).digest() * 2
    return (block * (size // len(block) + 1))[:size]


NON_UTF8 = b"app/caf\xe9".decode("utf-8", "surrogateescape")
LONG_NAME = "app/" + "d" * 60 + "/" + "f" * 120 + ".txt"

RICH = [
    Member("app", kind=tarfile.DIRTYPE),
    Member("app/empty"),
    Member("app/one", b"x"),
    Member("app/block", pattern(512, 1)),
    Member("app/odd", pattern(511, 2)),
    Member("app/big", pattern(CHUNK_SIZE * 2 + 3, 3)),
    Member("app/sub", kind=tarfile.DIRTYPE),
    Member("app/sub/deep", pattern(70_000, 4), xattrs={"user.note": "kept in the header"}),
    Member("app/link", kind=tarfile.SYMTYPE, target="sub/deep"),
    Member("app/hard", kind=tarfile.LNKTYPE, target="app/one"),
    Member(NON_UTF8, b"non-UTF-8 name\n"),
    Member(LONG_NAME, pattern(1000, 5)),
    Member("./etc/dot", b"dot-slash name\n"),
    Member("/abs", b"absolute name\n"),
    Member("app/.wh.gone", b""),
]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT], ids=["pax", "gnu"])
def test_rebuilds_the_tar_byte_for_byte(tmp_path: Path, fmt: int) -> None:
    layer = fake_layer(tmp_path, RICH, fmt)
    reader = layer.open()
    assert read_all(reader) == layer.tar
    assert reader.digest == sha(layer.tar)
    assert reader.size == len(layer.tar)
    assert any("name_raw" in e for e in tar_split_lines(layer.tar)), "the fixture lost its point"


def test_readinto_gives_the_same_bytes(tmp_path: Path) -> None:
    layer = fake_layer(tmp_path, RICH)
    with io.BufferedReader(layer.open(), buffer_size=7919) as stream:
        assert stream.read() == layer.tar


def test_counts_every_byte_and_file_it_reads(tmp_path: Path) -> None:
    layer = fake_layer(tmp_path, RICH)
    counter = ReadCounter()
    store = ClassicStore(tmp_path, "overlay2", counter)
    read_all(store.open_layer(layer.chain_id, layer.diff_id))
    files = [m for m in RICH if m.kind == tarfile.REGTYPE and m.content]
    metadata = len(layer.chain_id) + (layer.layer_dir / "cache-id").stat().st_size
    tar_split = (layer.layer_dir / "tar-split.json.gz").stat().st_size
    assert counter.bytes_read == sum(len(m.content) for m in files) + metadata + tar_split
    assert counter.files_opened == len(files) + 3  # diff, cache-id, tar-split
    assert counter.layers_opened == 1


def file_members() -> list[Member]:
    return [m for m in RICH if m.kind == tarfile.REGTYPE and m.content]


def age_atimes(layer: FakeLayer) -> dict[Path, int]:
    """Sets every file's atime far before its mtime (relatime then updates it on a read)."""
    atimes = {}
    for path in layer.diff_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.utime(path, ns=(10**18, path.stat().st_mtime_ns))
            atimes[path] = path.stat().st_atime_ns
    return atimes


def test_reading_a_layer_leaves_its_files_atimes_alone(tmp_path: Path) -> None:
    # Each atime update is an inode write to the card holding Docker's data root.
    layer = fake_layer(tmp_path, RICH)
    atimes = age_atimes(layer)
    assert len(atimes) >= len(file_members()) > 0
    assert read_all(layer.open()) == layer.tar
    assert {path: path.stat().st_atime_ns for path in atimes} == atimes


def test_files_of_another_owner_are_read_without_o_noatime_when_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without CAP_FOWNER (the hardened unit) the kernel refuses O_NOATIME on another's file.
    layer = fake_layer(tmp_path, RICH)
    real_open = os.open
    refused: list[object] = []

    def open_as_a_non_owner(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_NOATIME:
            refused.append(path)
            raise PermissionError(errno.EPERM, "Operation not permitted")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_as_a_non_owner)
    assert read_all(layer.open()) == layer.tar
    assert len(refused) == len(file_members())


def test_opening_a_layer_reads_nothing_until_iterated(tmp_path: Path) -> None:
    layer = fake_layer(tmp_path, RICH)
    counter = ReadCounter()
    ClassicStore(tmp_path, "overlay2", counter).open_layer(layer.chain_id, layer.diff_id)
    assert counter.layers_opened == 0
    assert counter.files_opened == 2  # diff and cache-id, a few bytes


def test_empty_layer(tmp_path: Path) -> None:
    layer = fake_layer(tmp_path, [])
    assert layer.tar == bytes(10240)  # Python pads to a 10 KiB record
    assert read_all(layer.open()) == layer.tar


def read_fails(layer: FakeLayer, match: str) -> None:
    reader = layer.open()
    with pytest.raises(DirectReadError, match=match):
        read_all(reader)
    assert reader.digest is None


def test_a_changed_byte_fails_the_digest(tmp_path: Path) -> None:
    layer = fake_layer(tmp_path, RICH)
    path = layer.diff_dir / "app" / "big"
    data = bytearray(path.read_bytes())
    data[CHUNK_SIZE + 17] ^= 1
    path.write_bytes(bytes(data))
    read_fails(layer, "rebuild a tar of sha256:")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ("missing", "No such file"),
        ("shorter", "has 511 bytes, tar-split says 512"),
        ("longer", "has 513 bytes, tar-split says 512"),
        ("directory", "not a file"),
        ("fifo", "not a file"),
    ],
)
def test_a_file_that_is_not_as_recorded(tmp_path: Path, change: str, match: str) -> None:
    layer = fake_layer(tmp_path, RICH)
    path = layer.diff_dir / "app" / "block"
    content = path.read_bytes()
    path.unlink()
    if change == "shorter":
        path.write_bytes(content[:-1])
    elif change == "longer":
        path.write_bytes(content + b"\0")
    elif change == "directory":
        path.mkdir()
    elif change == "fifo":
        os.mkfifo(path)
    read_fails(layer, match)


def test_a_symlinked_directory_is_not_followed(tmp_path: Path) -> None:
    """The same bytes reachable through a symlink: refused, though the digest would match."""
    layer = fake_layer(tmp_path / "root", RICH)
    outside = tmp_path / "outside"
    (layer.diff_dir / "app" / "sub").rename(outside)
    (layer.diff_dir / "app" / "sub").symlink_to(outside)
    read_fails(layer, "'app/sub/deep': a symlink or non-directory on its path")


def test_a_symlinked_file_is_not_followed(tmp_path: Path) -> None:
    layer = fake_layer(tmp_path / "root", RICH)
    outside = tmp_path / "outside"
    (layer.diff_dir / "app" / "odd").rename(outside)
    (layer.diff_dir / "app" / "odd").symlink_to(outside)
    read_fails(layer, "'app/odd': a symlink or non-directory on its path")


def rewrite_tar_split(layer: FakeLayer, edit: Any) -> None:
    entries = tar_split_lines(layer.tar)
    (layer.layer_dir / "tar-split.json.gz").write_bytes(encode_lines(edit(entries)))


@pytest.mark.parametrize(
    "name", ["../outside", "app/../../outside", "app/sub/../../..", "", "/", "./."]
)
def test_names_leaving_the_diff_dir_are_refused(tmp_path: Path, name: str) -> None:
    layer = fake_layer(tmp_path / "root", RICH)
    (tmp_path / "outside").write_bytes(pattern(512, 1))

    def rename(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for entry in entries:
            if entry.get("name") == "app/block":
                entry["name"] = name
        return entries

    rewrite_tar_split(layer, rename)
    read_fails(layer, "refused file name|without a name")


def test_name_raw_is_used_for_non_utf8_names(tmp_path: Path) -> None:
    layer = fake_layer(tmp_path, RICH)
    (layer.diff_dir / os.fsdecode(b"app/caf\xe9")).write_bytes(b"non-UTF-8 name\n"[::-1])
    read_fails(layer, "rebuild a tar of")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda es: es[:3] + es[4:], "position"),  # an entry lost
        (lambda es: [{**es[0], "type": 3}, *es[1:]], "unknown type 3"),
        (lambda es: [{**es[0], "payload": "not base64!"}, *es[1:]], "corrupt tar-split"),
        (lambda es: [es[0], {**es[1], "size": -1}, *es[2:]], "bad size"),
        (lambda es: [es[0], {**es[1], "size": "5"}, *es[2:]], "bad size"),
        (lambda es: [{**es[0], "payload": None}, *es[1:]], "rebuild a tar of"),
        (lambda es: [es[0], {k: v for k, v in es[1].items() if k != "type"}, *es[2:]], "'type'"),
        (lambda es: es[:-1], "rebuild a tar of"),  # the end-of-archive segment lost
    ],
)
def test_corrupt_tar_split_entries(tmp_path: Path, edit: Any, match: str) -> None:
    layer = fake_layer(tmp_path, RICH)
    rewrite_tar_split(layer, edit)
    read_fails(layer, match)


def test_a_line_that_is_not_json(tmp_path: Path) -> None:
    layer = fake_layer(tmp_path, RICH)
    lines = gzip.decompress((layer.layer_dir / "tar-split.json.gz").read_bytes()).splitlines(True)
    lines[2] = lines[2][:-5] + b"\n"
    (layer.layer_dir / "tar-split.json.gz").write_bytes(gzip.compress(b"".join(lines)))
    read_fails(layer, "corrupt tar-split")


def test_a_truncated_tar_split_file(tmp_path: Path) -> None:
    layer = fake_layer(tmp_path, RICH)
    path = layer.layer_dir / "tar-split.json.gz"
    path.write_bytes(path.read_bytes()[:-20])
    read_fails(layer, "tar-split: Compressed file ended")


def test_a_tar_split_file_that_is_not_gzip(tmp_path: Path) -> None:
    layer = fake_layer(tmp_path, RICH)
    (layer.layer_dir / "tar-split.json.gz").write_bytes(b"{}\n")
    read_fails(layer, "tar-split: Not a gzipped file")


def test_a_missing_tar_split_file(tmp_path: Path) -> None:
    layer = fake_layer(tmp_path, RICH)
    (layer.layer_dir / "tar-split.json.gz").unlink()
    read_fails(layer, "tar-split.json.gz: No such file")


def test_an_oversized_line_is_refused(tmp_path: Path) -> None:
    """A segment over MAX_LINE once in base64: refused before it is decoded."""
    layer = fake_layer(tmp_path, RICH)
    huge = {"type": 2, "payload": base64.b64encode(bytes(MAX_LINE // 4 * 3 + 3)).decode()}
    rewrite_tar_split(layer, lambda es: [*es[:-1], {**huge, "position": len(es) - 1}])
    read_fails(layer, f"tar-split line over {MAX_LINE} bytes")


def test_the_diff_file_must_agree_with_the_config(tmp_path: Path) -> None:
    layer = fake_layer(tmp_path, RICH)
    with pytest.raises(DirectReadError, match="the image config says sha256:0000"):
        layer.store.open_layer(layer.chain_id, "sha256:" + "0" * 64)


@pytest.mark.parametrize("cache_id", ["../../etc", "", "a/b", "..", "x" * 200])
def test_a_bad_cache_id_is_refused(tmp_path: Path, cache_id: str) -> None:
    layer = fake_layer(tmp_path, RICH)
    (layer.layer_dir / "cache-id").write_text(cache_id)
    with pytest.raises(DirectReadError, match="bad cache-id"):
        layer.open()


@pytest.mark.parametrize("digest", ["sha256:../../x", "sha512:" + "a" * 64, "A" * 64, ""])
def test_ids_must_be_sha256_digests(tmp_path: Path, digest: str) -> None:
    store = ClassicStore(tmp_path, "overlay2")
    with pytest.raises(DirectReadError, match="not a sha256 digest"):
        store.image_config(digest)
    with pytest.raises(DirectReadError, match="not a sha256 digest"):
        store.open_layer(digest, digest)


def write_config(root: Path, config: bytes) -> str:
    image_id = sha(config)
    path = root / "image" / "overlay2" / "imagedb" / "content" / "sha256"
    path.mkdir(parents=True, exist_ok=True)
    (path / image_id.removeprefix("sha256:")).write_bytes(config)
    return image_id


def test_image_config_and_its_layers(tmp_path: Path) -> None:
    diff_ids = [sha(b"one"), sha(b"two"), sha(b"three")]
    config = json.dumps({"rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode() + b"\n"
    image_id = write_config(tmp_path, config)
    store = ClassicStore(tmp_path, "overlay2")
    assert store.image_config(image_id) == config
    assert config_diff_ids(config) == diff_ids
    # Worked out by hand from the rule chain(n) = sha256("chain(n-1) diff(n)").
    second = sha(f"{diff_ids[0]} {diff_ids[1]}".encode())
    third = sha(f"{second} {diff_ids[2]}".encode())
    assert chain_ids(diff_ids) == [diff_ids[0], second, third]
    assert chain_ids([]) == []


def test_a_changed_config_is_refused(tmp_path: Path) -> None:
    image_id = write_config(tmp_path, b'{"rootfs": {"diff_ids": []}}')
    path = tmp_path / "image" / "overlay2" / "imagedb" / "content" / "sha256"
    (path / image_id.removeprefix("sha256:")).write_bytes(b'{"rootfs": {"diff_ids": []}} ')
    with pytest.raises(DirectReadError, match="changed"):
        ClassicStore(tmp_path, "overlay2").image_config(image_id)


def test_a_missing_config(tmp_path: Path) -> None:
    with pytest.raises(DirectReadError, match="No such file"):
        ClassicStore(tmp_path, "overlay2").image_config("sha256:" + "a" * 64)


@pytest.mark.parametrize("config", [b"[]", b"{}", b'{"rootfs": {"diff_ids": ["x"]}}', b"\xff"])
def test_config_without_usable_diff_ids(config: bytes) -> None:
    with pytest.raises(DirectReadError):
        config_diff_ids(config)


def test_only_overlay2_is_supported(tmp_path: Path) -> None:
    for driver in ("overlay2", "vfs"):
        (tmp_path / "image" / driver / "layerdb" / "sha256").mkdir(parents=True)
        (tmp_path / driver).mkdir()
    assert ClassicStore(tmp_path, "overlay2").is_supported()
    with pytest.raises(DirectReadError, match="storage driver 'vfs'"):
        ClassicStore(tmp_path, "vfs").check()
    assert not ClassicStore(tmp_path / "nowhere", "overlay2").is_supported()


def test_from_engine_info(tmp_path: Path) -> None:
    store = ClassicStore.from_engine_info({"DockerRootDir": str(tmp_path), "Driver": "overlay2"})
    assert (store.root, store.driver) == (tmp_path, "overlay2")
    with pytest.raises(DirectReadError, match="GET /info"):
        ClassicStore.from_engine_info({"Driver": "overlay2"})


def test_closing_a_half_read_layer_closes_its_files(tmp_path: Path) -> None:
    layer = fake_layer(tmp_path, RICH)
    before = len(os.listdir("/proc/self/fd"))
    reader = layer.open()
    assert len(reader.read(CHUNK_SIZE + 10)) == CHUNK_SIZE  # one chunk at most per read
    assert len(os.listdir("/proc/self/fd")) > before  # tar-split, diff dir, app/ and app/big
    reader.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_a_path_twice_in_one_tar_is_refused(tmp_path: Path) -> None:
    """tar-split's own caveat: the diff dir holds only the last copy, so the first can't be
    rebuilt; the digest check catches it."""
    layer = fake_layer(tmp_path, [Member("twice", b"first"), Member("twice", b"later")])
    assert (layer.diff_dir / "twice").read_bytes() == b"later"
    read_fails(layer, "the files rebuild a tar of")
