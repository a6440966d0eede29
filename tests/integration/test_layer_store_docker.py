"""ClassicStore against a real dockerd 20.10 (overlay2): every layer rebuilt equals docker save's."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import pytest

from forklift_boot.stores.docker.classic_store import (
    ClassicStore,
    DirectReadError,
    LayerReader,
    ReadCounter,
    chain_ids,
    config_diff_ids,
)
from tests.conftest import require_component
from tests.integration.test_direct_copy import entries, manifest_layers
from tests.testbed.dockerd import DockerDaemon
from tests.testbed.faults import run as run_product
from tests.testbed.images import MTIME

pytestmark = pytest.mark.docker

BUSYBOX = "/bin/busybox"
LONG_TARGET = "/" + "/".join(["long-link-target"] * 10)  # 170 characters: PAX linkpath
LONG_DIR = "d/" + "n" * 90 + "/" + "m" * 60  # 155 characters: a PAX path, no ustar prefix split


def run(*argv: str) -> str:
    return f'["{BUSYBOX}", "sh", "-c", {json.dumps(" && ".join(argv))}]'


@pytest.fixture(scope="module")
def daemon(request: pytest.FixtureRequest) -> Iterator[DockerDaemon]:
    """A private dockerd: the tampering tests change its store (and restore it)."""
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        require_component(request.config, "needs dockerd (apt-get install docker.io) and root")
    with DockerDaemon() as started:
        yield started


@pytest.fixture(scope="module")
def client(daemon: DockerDaemon) -> Iterator[docker.DockerClient]:
    c = daemon.client()
    yield c
    c.close()


def open_store(client: docker.DockerClient, counter: ReadCounter | None = None) -> ClassicStore:
    store = ClassicStore.from_engine_info(client.info(), counter)
    store.check()
    return store


def add(tar: tarfile.TarFile, name: str, content: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(content), mode, MTIME
    tar.addfile(info, io.BytesIO(content))


def build(client: docker.DockerClient, tag: str, files: dict[str, bytes], steps: list[str]) -> str:
    """``FROM scratch``, busybox, ``COPY ctx/ /`` of ``files``, then ``steps``; the image ID."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        add(tar, "bin/busybox", Path(BUSYBOX).read_bytes(), 0o755)
        for name, content in files.items():
            add(tar, f"ctx/{name}", content)
        lines = ["FROM scratch", "COPY bin/ /bin/", "COPY ctx/ /", *steps]
        add(tar, "Dockerfile", "\n".join(lines).encode() + b"\n")
    stream = client.api.build(
        fileobj=io.BytesIO(buf.getvalue()),
        custom_context=True,
        tag=tag,
        rm=True,
        decode=True,
        network_mode="none",
    )
    for chunk in stream:
        assert "error" not in chunk, chunk["error"]
    return str(client.images.get(tag).id)


def data(size: int, seed: str) -> bytes:
    block = hashlib.sha256(seed.encode()).digest()
    return (block * (size // 32 + 1))[:size]


def read_layer(reader: LayerReader) -> tuple[str, int]:
    hasher, size = hashlib.sha256(), 0
    for chunk in reader.chunks():
        hasher.update(chunk)
        size += len(chunk)
    return "sha256:" + hasher.hexdigest(), size


def direct_digests(store: ClassicStore, image_id: str) -> list[str]:
    diff_ids = config_diff_ids(store.image_config(image_id))
    digests = []
    for chain_id, diff_id in zip(chain_ids(diff_ids), diff_ids, strict=True):
        reader = store.open_layer(chain_id, diff_id)
        digest, size = read_layer(reader)
        assert (reader.digest, reader.size) == (digest, size)
        digests.append(digest)
    return digests


@dataclass
class SavedLayer:
    digest: str
    members: list[tarfile.TarInfo]  # empty when the layer was too big to list


def saved_layers(daemon: DockerDaemon, ref: str, list_up_to: int = 64 << 20) -> list[SavedLayer]:
    """Each layer.tar in ``docker save``'s output, in the manifest's order: its sha256 and, for
    layers up to ``list_up_to`` bytes, its members."""
    layers: dict[str, SavedLayer] = {}
    manifest: list[dict[str, Any]] = []
    proc = subprocess.Popen(["docker", "-H", daemon.host, "save", ref], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
        for member in tar:
            if not (member.name.endswith("/layer.tar") or member.name == "manifest.json"):
                continue
            extracted = tar.extractfile(member)
            assert extracted is not None
            if member.name == "manifest.json":
                manifest = json.loads(extracted.read())
                continue
            hasher, members = hashlib.sha256(), []
            if member.size <= list_up_to:
                content = extracted.read()
                hasher.update(content)
                with tarfile.open(fileobj=io.BytesIO(content), mode="r:") as layer:
                    members = layer.getmembers()
            else:
                while block := extracted.read(1 << 20):
                    hasher.update(block)
            layers[member.name] = SavedLayer("sha256:" + hasher.hexdigest(), members)
    assert proc.wait() == 0, f"docker save {ref} failed"
    return [layers[name] for name in manifest[0]["Layers"]]


def docker_save_error(daemon: DockerDaemon, ref: str) -> str:
    result = subprocess.run(
        ["docker", "-H", daemon.host, "save", ref],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    assert result.returncode != 0, f"docker save {ref} succeeded"
    return result.stderr.strip()


# Layers written by dockerd itself (its Go tar writer): docker build, RUN, commit.


@pytest.fixture(scope="module")
def built_image(client: docker.DockerClient) -> str:
    """Whiteouts, an opaque directory, hard links, symlinks, a long link target, a long path, a
    non-UTF-8 file name and a multi-MiB file; ``RUN true`` adds no layer."""
    bb = BUSYBOX
    files = {
        "d/a": b"deleted in the next layer\n",
        "d/b": data(3000, "b"),
        "o/old": b"in a directory deleted and made again\n",
        f"{LONG_DIR}/file": data(700, "long"),
        "big/file": data(5 * (1 << 20) + 7, "big"),
    }
    steps = [
        "RUN "
        + run(
            f"{bb} rm /d/a",
            f"{bb} rm -rf /o",
            f"{bb} mkdir /o",
            f"{bb} echo new > /o/n",
            f"{bb} ln /d/b /d/b-hard",
            f"{bb} ln -s /d/b /d/b-sym",
            f"{bb} ln -s {LONG_TARGET} /d/long-link",
            f"{bb} printf 'not UTF-8' > \"$({bb} printf '/d/caf\\351')\"",
        ),
        f'RUN ["{bb}", "true"]',
    ]
    return build(client, "fbtest/built:1", files, steps)


CAPABILITY = struct.pack("<5I", 0x02000001, 1 << 13, 0, 0, 0)  # v2, effective, cap_net_raw


@pytest.fixture(scope="module")
def committed_image(client: docker.DockerClient, built_image: str) -> str:
    """``docker commit`` of a container whose file carries xattrs (as ``RUN setcap`` would leave
    it: written here into the container's upper directory)."""
    container = client.containers.create(built_image, [BUSYBOX, "true"])
    try:
        upper = Path(container.attrs["GraphDriver"]["Data"]["UpperDir"])
        target = upper / "caps" / "ping"
        target.parent.mkdir()
        target.write_bytes(data(100, "ping"))
        os.setxattr(target, "security.capability", CAPABILITY)
        os.setxattr(target, "user.note", b"user xattrs are not exported by dockerd")
        image = container.commit("fbtest/committed", "1")
    finally:
        container.remove()
    return str(image.id)


def check_image(
    daemon: DockerDaemon, client: docker.DockerClient, image_id: str
) -> list[SavedLayer]:
    saved = saved_layers(daemon, image_id)
    store = open_store(client)
    diff_ids = config_diff_ids(store.image_config(image_id))
    assert [layer.digest for layer in saved] == diff_ids
    assert direct_digests(store, image_id) == diff_ids
    return saved


def names(layer: SavedLayer) -> dict[bytes, tarfile.TarInfo]:
    return {m.name.encode("utf-8", "surrogateescape"): m for m in layer.members}


def test_built_image(daemon: DockerDaemon, client: docker.DockerClient, built_image: str) -> None:
    saved = check_image(daemon, client, built_image)
    assert len(saved) == 3
    copied, changed = (names(layer) for layer in saved[1:])
    # What the test is about is in the tars: check each case is there.
    assert b"big/file" in copied
    assert f"{LONG_DIR}/file".encode() in copied
    assert b"d/.wh.a" in changed
    assert b"o/.wh..wh..opq" in changed
    assert {changed[b"d/b"].type, changed[b"d/b-hard"].type} == {tarfile.REGTYPE, tarfile.LNKTYPE}
    assert changed[b"d/b-sym"].issym()
    assert changed[b"d/long-link"].linkname == LONG_TARGET
    assert changed[b"d/caf\xe9"].size == len(b"not UTF-8")


EMPTY_TAR = "sha256:" + hashlib.sha256(bytes(1024)).hexdigest()


def test_committed_image_with_xattrs(
    daemon: DockerDaemon, client: docker.DockerClient, committed_image: str
) -> None:
    saved = check_image(daemon, client, committed_image)
    assert len(saved) == 4
    ping = names(saved[-1])[b"caps/ping"]
    assert ping.pax_headers["SCHILY.xattr.security.capability"] == CAPABILITY.decode(
        "utf-8", "surrogateescape"
    )
    assert "SCHILY.xattr.user.note" not in ping.pax_headers  # dockerd 20.10 exports only that one


# Layers written by other tools (GNU tar here), as a pull or docker load stores them.


def gnu_tar(source: Path, output: Path, *options: str) -> str:
    subprocess.run(
        [
            "tar",
            "-C",
            str(source),
            *options,
            "--numeric-owner",
            "--owner=0",
            "--group=0",
            f"--mtime=@{MTIME}",
            "--sort=name",
            "-cf",
            str(output),
            ".",
        ],
        check=True,
    )
    return "sha256:" + hashlib.sha256(output.read_bytes()).hexdigest()


def docker_load(daemon: DockerDaemon, work: Path, tag: str, layers: list[Path]) -> str:
    diff_ids = ["sha256:" + hashlib.sha256(layer.read_bytes()).hexdigest() for layer in layers]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    ).encode()
    archive = work / f"{tag.replace('/', '_').replace(':', '_')}.tar"
    with tarfile.open(archive, "w") as tar:
        add(tar, "config.json", config)
        for index, layer in enumerate(layers):
            tar.add(layer, f"{index}/layer.tar")
        manifest = [
            {
                "Config": "config.json",
                "RepoTags": [tag],
                "Layers": [f"{i}/layer.tar" for i in range(len(layers))],
            }
        ]
        add(tar, "manifest.json", json.dumps(manifest).encode())
    subprocess.run(
        ["docker", "-H", daemon.host, "load", "-i", str(archive)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return "sha256:" + hashlib.sha256(config).hexdigest()


@pytest.fixture(scope="module")
def loaded_image(daemon: DockerDaemon, tmp_path_factory: pytest.TempPathFactory) -> str:
    """GNU-format layer (long names, hard links, non-UTF-8 name), a POSIX one with xattrs,
    whiteouts and an opaque directory, and two empty ones: GNU tar's (a 10 KiB record of zeros)
    and the 1024 zero bytes older Docker versions wrote for steps that changed no file (dockerd
    20.10 adds no layer for them: neither ``RUN true`` nor committing an unchanged container)."""
    work = tmp_path_factory.mktemp("loaded")
    one = work / "one"
    (one / "hard").mkdir(parents=True)
    (one / "hard" / "a").write_bytes(data(5000, "a"))
    os.link(one / "hard" / "a", one / "hard" / "b")
    long_dir = one / ("x" * 120) / ("y" * 120)
    long_dir.mkdir(parents=True)
    (long_dir / ("z" * 150)).write_bytes(data(10, "z"))
    (one / "long-link").symlink_to("/" + "t" * 200)
    (one / os.fsdecode(b"caf\xe9")).write_bytes(b"non-UTF-8 name\n")
    (one / "gone").mkdir()
    (one / "gone" / "x").write_bytes(b"x")
    (one / "opq").mkdir()
    (one / "opq" / "old").write_bytes(b"old")
    (one / "empty").touch()
    (one / "large").write_bytes(data(3 * (1 << 20) + 1, "large"))
    two = work / "two"
    (two / "gone").mkdir(parents=True)
    (two / "gone" / ".wh.x").touch()
    (two / "opq").mkdir()
    (two / "opq" / ".wh..wh..opq").touch()
    (two / "opq" / "new").write_bytes(b"new")
    (two / "attrs").mkdir()
    (two / "attrs" / "f").write_bytes(b"with xattrs")
    os.setxattr(two / "attrs" / "f", "user.note", b"kept")
    os.setxattr(two / "attrs" / "f", "security.capability", CAPABILITY)
    (work / "three").mkdir()
    layers = [work / "one.tar", work / "two.tar", work / "three.tar", work / "four.tar"]
    layers[3].write_bytes(bytes(1024))
    gnu_tar(one, layers[0], "--format=gnu")
    gnu_tar(
        two,
        layers[1],
        "--format=posix",
        "--xattrs",
        "--xattrs-include=*",
        "--pax-option=delete=atime,delete=ctime",
    )
    gnu_tar(work / "three", layers[2], "--format=gnu")
    return docker_load(daemon, work, "fbtest/loaded:1", layers)


def test_loaded_image(daemon: DockerDaemon, client: docker.DockerClient, loaded_image: str) -> None:
    saved = check_image(daemon, client, loaded_image)
    one, two, three, four = (names(layer) for layer in saved)
    assert one[b"./hard/b"].islnk()
    assert one[b"./caf\xe9"].isreg()
    assert one[b"./long-link"].linkname == "/" + "t" * 200
    assert any(len(name) > 250 for name in one)
    assert b"./gone/.wh.x" in two
    assert b"./opq/.wh..wh..opq" in two
    assert two[b"./attrs/f"].pax_headers["SCHILY.xattr.user.note"] == "kept"
    assert list(three) == [b"."]
    assert (four, saved[3].digest) == ({}, EMPTY_TAR)


@pytest.fixture(scope="module")
def sparse_image(daemon: DockerDaemon, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 64 MiB file with two data extents in PAX sparse 1.0 (GNU tar --format=posix --sparse).

    The older GNU sparse type ('S') does not get this far: dockerd refuses it ("unhandled tar
    header type 83"), in docker load as in a pull.
    """
    work = tmp_path_factory.mktemp("sparse")
    layers = []
    for fmt in ("posix",):
        source = work / fmt
        source.mkdir()
        with (source / "sparse").open("wb") as file:
            file.write(data(4096, "head"))
            file.seek(40 << 20)
            file.write(data(4096, "middle"))
            file.truncate(64 << 20)
        layers.append(work / f"{fmt}.tar")
        gnu_tar(source, layers[-1], f"--format={fmt}", "--sparse")
    return docker_load(daemon, work, "fbtest/sparse:1", layers)


def test_sparse_files_do_not_rebuild_and_are_refused(
    daemon: DockerDaemon, client: docker.DockerClient, sparse_image: str
) -> None:
    """tar-split rebuilds a sparse file as a contiguous one: the digest check refuses the layer.
    dockerd's own export checks the same digest, so docker save fails on such an image too."""
    store = open_store(client)
    diff_ids = config_diff_ids(store.image_config(sparse_image))
    for chain_id, diff_id in zip(chain_ids(diff_ids), diff_ids, strict=True):
        reader = store.open_layer(chain_id, diff_id)
        with pytest.raises(DirectReadError, match="the files rebuild a tar of sha256:"):
            read_layer(reader)
        assert reader.size > 64 << 20  # the holes came back as zeros
        assert reader.digest is None
    assert "sha256" in docker_save_error(daemon, sparse_image)


# Tampering with the real store (restored afterwards) and layers that vanish mid-read.


def layer_of(store: ClassicStore, image_id: str, index: int) -> tuple[str, str]:
    diff_ids = config_diff_ids(store.image_config(image_id))
    return chain_ids(diff_ids)[index], diff_ids[index]


def test_a_changed_byte_in_a_diff_file_is_refused(
    client: docker.DockerClient, built_image: str
) -> None:
    store = open_store(client)
    chain_id, diff_id = layer_of(store, built_image, 1)
    path = store.layer_paths(chain_id).diff_dir / "big" / "file"
    original = path.read_bytes()
    changed = bytearray(original)
    changed[3 << 20] ^= 0x40
    path.write_bytes(changed)
    try:
        reader = store.open_layer(chain_id, diff_id)
        with pytest.raises(DirectReadError, match="the files rebuild a tar of sha256:"):
            read_layer(reader)
        assert reader.digest is None
    finally:
        path.write_bytes(original)
    assert read_layer(store.open_layer(chain_id, diff_id))[0] == diff_id


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_damaged_tar_split_file_is_refused(
    client: docker.DockerClient, built_image: str, damage: str
) -> None:
    store = open_store(client)
    chain_id, diff_id = layer_of(store, built_image, 2)
    path = store.layer_paths(chain_id).layer_dir / "tar-split.json.gz"
    original = path.read_bytes()
    if damage == "missing":
        path.unlink()
    else:
        path.write_bytes(original[: len(original) // 2])
    try:
        with pytest.raises(DirectReadError, match="tar-split"):
            read_layer(store.open_layer(chain_id, diff_id))
    finally:
        path.write_bytes(original)


def test_a_config_that_changed_is_refused(client: docker.DockerClient, built_image: str) -> None:
    store = open_store(client)
    path = store.image_dir / "imagedb" / "content" / "sha256" / built_image.split(":")[1]
    original = path.read_bytes()
    path.write_bytes(original.replace(b'"os":"linux"', b'"os":"Linux"'))
    try:
        with pytest.raises(DirectReadError, match="changed"):
            store.image_config(built_image)
    finally:
        path.write_bytes(original)


def test_an_image_removed_mid_read_is_refused(client: docker.DockerClient) -> None:
    files = {f"f/{i}": data(3 << 20, f"rmi{i}") for i in range(4)}
    image_id = build(client, "fbtest/removed:1", files, [])
    store = open_store(client)
    chain_id, diff_id = layer_of(store, image_id, 1)
    chunks = store.open_layer(chain_id, diff_id).chunks()
    next(chunks)  # the first MiB of f/0 is out, f/1 to f/3 are not open yet
    client.images.remove(image_id)
    with pytest.raises(DirectReadError, match=r"'f/1': No such file"):
        for _ in chunks:
            pass


def test_known_layers_are_not_read(
    client: docker.DockerClient, daemon: DockerDaemon, built_image: str, committed_image: str
) -> None:
    """Reading only the committed image's new layer reads its files and nothing of the four
    layers it shares with the built image (counted, from the sizes docker save reports)."""
    counter = ReadCounter()
    store = open_store(client, counter)
    top = saved_layers(daemon, committed_image)[-1]
    diff_ids = config_diff_ids(store.image_config(committed_image))
    before = counter.bytes_read
    assert (
        before
        == os.stat(
            store.image_dir / "imagedb" / "content" / "sha256" / committed_image.split(":")[1]
        ).st_size
    )
    chain_id = chain_ids(diff_ids)[-1]
    assert read_layer(store.open_layer(chain_id, diff_ids[-1]))[0] == diff_ids[-1]
    paths = store.layer_paths(chain_id)
    metadata = sum(
        (paths.layer_dir / name).stat().st_size
        for name in ("diff", "cache-id", "cache-id", "tar-split.json.gz")
    )
    contents = sum(m.size for m in top.members if m.isreg())
    assert counter.bytes_read - before == contents + metadata
    # the config; cache-id (twice: open_layer and layer_paths above), diff, tar-split; files
    files = sum(1 for m in top.members if m.isreg() and m.size)
    assert counter.files_opened == 1 + 4 + files
    assert counter.layers_opened == 1


# Minutes and about 27 GiB written (the commit, docker save's staging): `-m big` runs it, and
# bench/huge_file.py runs it by hand and prints its timings against docker save's.
@pytest.mark.big
def test_a_file_over_8_gib(
    daemon: DockerDaemon, client: docker.DockerClient, built_image: str, tmp_path: Path
) -> None:
    """9 GiB, sparse in the container: dockerd's tar needs a PAX size record (over the 11 octal
    digits of ustar), and the layer's diff dir holds it (not sparse: dockerd writes the zeros).
    cache-img copies it the direct way with gzip, so the cache holds a few MB for it."""
    size = 9 << 30
    container = client.containers.create(built_image, [BUSYBOX, "true"])
    try:
        upper = Path(container.attrs["GraphDriver"]["Data"]["UpperDir"])
        (upper / "huge").mkdir()
        with (upper / "huge" / "sparse").open("wb") as file:
            file.write(data(4096, "huge head"))
            file.seek(size - 4096)
            file.write(data(4096, "huge tail"))
        started = time.monotonic()
        image_id = str(container.commit("fbtest/huge", "1").id)
        timings = {"commit": time.monotonic() - started}
    finally:
        container.remove()
    try:
        store = open_store(client)
        chain_id, diff_id = layer_of(store, image_id, -1)
        started = time.monotonic()
        reader = store.open_layer(chain_id, diff_id)
        chunks = reader.chunks()
        first = bytes(next(chunks))
        for _ in chunks:
            pass
        timings["direct read"] = time.monotonic() - started
        assert reader.digest == diff_id
        with tarfile.open(fileobj=io.BytesIO(first), mode="r|") as tar:
            huge = [
                m for m in (tar.next(), tar.next()) if m is not None and m.name == "huge/sparse"
            ]
        assert huge[0].size == size
        assert huge[0].pax_headers["size"] == str(size)

        cache = tmp_path / "cache"
        started = time.monotonic()
        result = run_product(
            "-v",
            "cache-img",
            "--cache-dir",
            str(cache),
            "--compress",
            "gzip",
            "fbtest/huge:1",
            docker_host=daemon.host,
            timeout=1800,
        )
        timings["cache-img --compress gzip"] = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        assert "docker save" not in result.stderr, result.stderr  # the direct way
        manifest_digest, _ = entries(cache)["docker.io/fbtest/huge:1"]
        layer = str(manifest_layers(cache, manifest_digest)[-1]["digest"])
        blob = cache / "blobs" / "sha256" / layer.removeprefix("sha256:")
        assert blob.stat().st_size < 64 << 20  # gzip of 9 GiB of zeros and two 4 KiB blocks
        started = time.monotonic()
        assert gunzipped_digest(blob) == diff_id
        timings["gunzip and hash the blob"] = time.monotonic() - started

        started = time.monotonic()
        assert saved_layers(daemon, image_id)[-1].digest == diff_id
        timings["docker save"] = time.monotonic() - started
        print("\ntimings (s):", json.dumps({k: round(v, 1) for k, v in timings.items()}))
        print(f"cached blob: {blob.stat().st_size} bytes for a layer of {reader.size} bytes")
    finally:
        client.images.remove(image_id, force=True)


def gunzipped_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with gzip.open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            hasher.update(block)
    return "sha256:" + hasher.hexdigest()
