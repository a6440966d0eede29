"""cache-img straight out of dockerd 20.10's classic store (overlay2) against ``docker save``.

The same images are cached both ways: with ``--compress none`` the blobs are the same bytes.
``docker save`` is what a remote DOCKER_HOST, another storage driver or a process that can't
read the data root gets, and what an image whose layers don't check out falls back to. Which
path ran is seen from outside: the Engine API calls a counting socket proxy passed on
(``GET /images/get`` is ``docker save``), and the files the process opened (strace).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pwd
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from forklift_boot.cache import ImageCache
from forklift_boot.cache.selection import known_layer_blobs
from forklift_boot.errors import EngineError
from forklift_boot.images import Wanted
from forklift_boot.refs import parse_image_ref
from forklift_boot.stores.docker.classic_store import chain_ids
from forklift_boot.stores.docker.engine import DockerEngine
from forklift_boot.stores.docker.source import DockerSource
from tests.integration.test_round_trip import (
    assert_every_ref_resolves_offline,
    every_ref,
    remove_all,
)
from tests.testbed import images
from tests.testbed.dockerd import DaemonFactory, DockerDaemon
from tests.testbed.faults import command, product_env, run, strace_command
from tests.testbed.images import Layer, PublishedImage
from tests.testbed.registry import Registry
from tests.testbed.socket_proxy import SocketProxy

pytestmark = [pytest.mark.docker, pytest.mark.registry]

SAVE_CALL = "/images/get"
MiB = 1 << 20


@pytest.fixture
def daemon(
    fresh_dockerd: DaemonFactory, published_images: dict[str, PublishedImage]
) -> DockerDaemon:
    """A private dockerd (its store may be tampered with) that pulled the four images."""
    daemon = fresh_dockerd()
    client = daemon.client()
    for image in published_images.values():
        images.pull(client, image)
    client.close()
    return daemon


@pytest.fixture
def proxy(daemon: DockerDaemon) -> Iterator[SocketProxy]:
    proxy = SocketProxy(daemon.sock)
    yield proxy
    proxy.close()


@pytest.fixture
def tcp_proxy(daemon: DockerDaemon) -> Iterator[SocketProxy]:
    proxy = SocketProxy(daemon.sock, tcp=True)
    yield proxy
    proxy.close()


def cache_img(host: str, cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run("-v", "cache-img", "--cache-dir", str(cache), *args, docker_host=host)


def blobs(cache: Path) -> set[str]:
    """The cache's blob names, each checked: its bytes hash to its name."""
    names = set()
    for path in (cache / "blobs" / "sha256").iterdir():
        assert not path.name.startswith("."), f"temporary left: {path}"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert digest == path.name, f"{path} holds {digest}"
        names.add(path.name)
    return names


def entries(cache: Path) -> dict[str, tuple[str, str]]:
    """index.json: canonical name -> (manifest digest, image ID)."""
    index = json.loads((cache / "index.json").read_text())
    return {
        e["annotations"]["io.containerd.image.name"]: (
            e["digest"],
            e["annotations"]["run.forklift.boot.image-id"],
        )
        for e in index["manifests"]
    }


def manifest_layers(cache: Path, manifest_digest: str) -> list[dict[str, object]]:
    path = cache / "blobs" / "sha256" / manifest_digest.removeprefix("sha256:")
    layers: list[dict[str, object]] = json.loads(path.read_bytes())["layers"]
    return layers


def image_ids(published: dict[str, PublishedImage]) -> set[str]:
    return {image.image_id for image in published.values()}


def test_direct_and_docker_save_cache_the_same_bytes(
    tmp_path: Path,
    proxy: SocketProxy,
    tcp_proxy: SocketProxy,
    published_images: dict[str, PublishedImage],
) -> None:
    refs = every_ref(published_images)
    direct, saved = tmp_path / "direct", tmp_path / "saved"
    result = cache_img(proxy.host, direct, "--compress", "none", *refs)
    assert result.returncode == 0, result.stderr
    assert not [p for p in proxy.paths("GET") if SAVE_CALL in p]
    assert "docker save" not in result.stderr
    result = cache_img(tcp_proxy.host, saved, "--compress", "none", *refs)
    assert result.returncode == 0, result.stderr
    assert len([p for p in tcp_proxy.paths("GET") if SAVE_CALL in p]) == 1
    assert (
        f"copying images with docker save: Docker at {tcp_proxy.host} is not on this machine"
        in (result.stderr)
    )
    assert blobs(direct) == blobs(saved)
    assert entries(direct) == entries(saved)
    assert {image_id for _, image_id in entries(direct).values()} == image_ids(published_images)
    # Uncompressed: every layer blob is the layer tar, named by its diff ID.
    for image in published_images.values():
        manifest = entries(direct)[f"{image.canonical_name}:{image.tag}"][0]
        layers = manifest_layers(direct, manifest)
        assert [layer["digest"] for layer in layers] == list(image.diff_ids)
        assert {layer["mediaType"] for layer in layers} == {
            "application/vnd.oci.image.layer.v1.tar"
        }


def test_round_trip_from_a_direct_gzip_cache(
    tmp_path: Path,
    daemon: DockerDaemon,
    proxy: SocketProxy,
    published_images: dict[str, PublishedImage],
    registry: Registry,
) -> None:
    refs = every_ref(published_images)
    cache = tmp_path / "cache"
    result = cache_img(proxy.host, cache, *refs)
    assert result.returncode == 0, result.stderr
    assert not [p for p in proxy.paths("GET") if SAVE_CALL in p]
    for image in published_images.values():
        manifest = entries(cache)[f"{image.canonical_name}:{image.tag}"][0]
        for layer in manifest_layers(cache, manifest):
            assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+gzip"
            head = (cache / "blobs/sha256" / str(layer["digest"])[7:]).read_bytes()[:2]
            assert head == b"\x1f\x8b"
    blobs(cache)
    client = daemon.client()
    remove_all(client, published_images)
    with registry.offline():
        loaded = run("load-img", "--cache-dir", str(cache), *refs, docker_host=daemon.host)
        assert loaded.returncode == 0, loaded.stderr
        client = daemon.client()
        assert_every_ref_resolves_offline(client, published_images, refs)
    assert {i.id for i in client.images.list()} == image_ids(published_images)


# Known layers: not opened at all (strace), not read (the product's ReadCounter).


def opened_paths(strace_log: Path) -> list[str]:
    """Every path opened, relative ones joined to their directory (strace -y names it)."""
    pattern = re.compile(r'open(?:at)?\((?:AT_FDCWD(?:<[^>]*>)?|\d+<([^>]*)>), "([^"]+)"')
    return [
        os.path.join(directory, name) if directory else name
        for directory, name in pattern.findall(strace_log.read_text(errors="replace"))
    ]


def layer_places(daemon: DockerDaemon, diff_ids: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """diff ID -> (its layerdb directory, its diff directory) in the daemon's data root."""
    places = {}
    for chain_id, diff_id in zip(chain_ids(list(diff_ids)), diff_ids, strict=True):
        layer_dir = daemon.data_root / "image/overlay2/layerdb/sha256" / chain_id[7:]
        cache_id = (layer_dir / "cache-id").read_text().strip()
        places[diff_id] = (str(layer_dir), str(daemon.data_root / "overlay2" / cache_id / "diff"))
    return places


def test_layers_the_cache_has_are_not_opened(
    tmp_path: Path, daemon: DockerDaemon, published_images: dict[str, PublishedImage]
) -> None:
    if shutil.which("strace") is None:
        pytest.fail("needs strace (apt-get install strace)")
    alpha, beta, delta = (published_images[n] for n in ("alpha", "beta", "delta"))
    cache = tmp_path / "cache"
    assert cache_img(daemon.host, cache, beta.tag_ref).returncode == 0
    shared = set(beta.diff_ids)
    wanted = [d for d in (*alpha.diff_ids, *delta.diff_ids) if d not in shared]
    assert len(set(alpha.diff_ids + delta.diff_ids) & shared) == 2  # busybox and /etc
    trace = tmp_path / "strace.log"
    args = ("-v", "cache-img", "--cache-dir", str(cache), alpha.tag_ref, delta.tag_ref)
    result = subprocess.run(
        strace_command(trace, ["open", "openat"], command(*args)),
        env=product_env(daemon.host),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    opened = opened_paths(trace)
    places = {**layer_places(daemon, alpha.diff_ids), **layer_places(daemon, delta.diff_ids)}
    for diff_id, (layer_dir, diff_dir) in places.items():
        touched = [p for p in opened if p.startswith((layer_dir, diff_dir))]
        if diff_id in shared:
            assert touched == [], diff_id
        else:
            assert f"{layer_dir}/tar-split.json.gz" in touched, diff_id
            assert diff_dir in touched, diff_id
    assert set(wanted) == {d for d in places if d not in shared}
    assert re.search(
        rf"of {len(set(wanted))} layers from Docker's data root; 2 layers", result.stderr
    )


def test_read_counter_counts_nothing_for_known_layers(
    tmp_path: Path, daemon: DockerDaemon, published_images: dict[str, PublishedImage]
) -> None:
    """In process: the store's ReadCounter after caching gamma (busybox and its own layer) into
    a cache that has beta (busybox): one layer opened, and the bytes read are gamma's config,
    its own layer's metadata and file contents, and nothing of busybox."""
    beta, gamma = published_images["beta"], published_images["gamma"]
    cache = ImageCache(tmp_path / "cache")
    assert cache_img(daemon.host, tmp_path / "cache", beta.tag_ref).returncode == 0
    source = DockerSource(DockerEngine(daemon.host))
    found = source.find(_wanted(gamma))
    assert found is not None
    with cache.writing() as writer:
        known = known_layer_blobs(writer)
        assert gamma.diff_ids[0] in known
        assert gamma.diff_ids[1] not in known
        source.copy([found], writer, compress="gzip", known_layers=known, on_bytes=lambda n: None)
    store = source._direct
    assert store is not None
    counter = store.counter
    layer_dir, diff_dir = layer_places(daemon, gamma.diff_ids)[gamma.diff_ids[1]]
    contents = sum(p.stat().st_size for p in Path(diff_dir).rglob("*") if p.is_file())
    files = sum(1 for p in Path(diff_dir).rglob("*") if p.is_file() and p.stat().st_size)
    config = daemon.data_root / "image/overlay2/imagedb/content/sha256" / gamma.image_id[7:]
    metadata = sum((Path(layer_dir) / n).stat().st_size for n in ("cache-id", "diff"))
    metadata += (Path(layer_dir) / "tar-split.json.gz").stat().st_size
    assert counter.layers_opened == 1
    assert counter.files_opened == 1 + 3 + files  # config; cache-id, diff, tar-split; files
    assert counter.bytes_read == config.stat().st_size + metadata + contents


def _wanted(image: PublishedImage) -> Wanted:
    ref = parse_image_ref(image.tag_ref)
    return Wanted(ref.with_default_tag().canonical, (ref,), essential=True)


# Tampering: what doesn't check out never enters the cache.


def own_layer_dir(daemon: DockerDaemon, image: PublishedImage) -> tuple[Path, Path]:
    """The image's top layer (its own): (layerdb directory, diff directory)."""
    layer_dir, diff_dir = layer_places(daemon, image.diff_ids)[image.diff_ids[-1]]
    return Path(layer_dir), Path(diff_dir)


def test_a_changed_byte_fails_that_image_only(
    tmp_path: Path, daemon: DockerDaemon, published_images: dict[str, PublishedImage]
) -> None:
    alpha, beta = published_images["alpha"], published_images["beta"]
    _, diff_dir = own_layer_dir(daemon, alpha)
    target = diff_dir / "app" / "alpha.txt"
    content = bytearray(target.read_bytes())
    content[100] ^= 0x01
    target.write_bytes(content)
    cache = tmp_path / "cache"
    result = cache_img(daemon.host, cache, "--compress", "none", alpha.tag_ref, beta.tag_ref)
    assert result.returncode == 3, result.stderr
    assert re.search(
        rf"copying {alpha.image_id} with docker save: couldn't read layer {alpha.diff_ids[-1]}: "
        r"the files rebuild a tar of sha256:",
        result.stderr,
    )
    # dockerd's own export checks the same digest: the image fails, with one line saying so.
    failed = [line for line in result.stderr.splitlines() if "failed: alpha:1.0" in line]
    assert len(failed) == 1, result.stderr
    assert set(entries(cache)) == {f"{beta.canonical_name}:{beta.tag}"}
    names = blobs(cache)
    assert alpha.diff_ids[-1][7:] not in names
    assert {d[7:] for d in beta.diff_ids} <= names


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_a_damaged_tar_split_falls_back_to_docker_save(
    tmp_path: Path,
    daemon: DockerDaemon,
    proxy: SocketProxy,
    published_images: dict[str, PublishedImage],
    damage: str,
) -> None:
    alpha = published_images["alpha"]
    layer_dir, _ = own_layer_dir(daemon, alpha)
    tar_split = layer_dir / "tar-split.json.gz"
    if damage == "missing":
        tar_split.unlink()
    else:
        tar_split.write_bytes(tar_split.read_bytes()[:20])
    cache = tmp_path / "cache"
    result = cache_img(proxy.host, cache, "--compress", "none", alpha.tag_ref)
    assert f"copying {alpha.image_id} with docker save: couldn't read layer" in result.stderr
    assert len([p for p in proxy.paths("GET") if SAVE_CALL in p]) >= 1
    # dockerd's export needs tar-split too: the image fails, with one line saying so.
    assert result.returncode == 3, result.stderr
    failed = [line for line in result.stderr.splitlines() if "failed: alpha:1.0" in line]
    assert len(failed) == 1, result.stderr
    assert not (cache / "index.json").exists() or entries(cache) == {}
    if (cache / "blobs").exists():
        assert alpha.diff_ids[-1][7:] not in blobs(cache)


def test_an_image_removed_mid_read_never_enters_the_cache(
    tmp_path: Path, daemon: DockerDaemon
) -> None:
    """In process, to remove the image at a known moment: after the first MiB of its layer
    (four files of 3 MiB) was read. The direct read fails, docker save finds no image."""
    client = daemon.client()
    rng = random.Random(12)
    files = {f"f/{i}": (rng.randbytes(3 * MiB), 0o644) for i in range(4)}
    built = images.build_image(client, [Layer(files)], "removed")
    source = DockerSource(DockerEngine(daemon.host))
    found = source.find(_wanted_ref(built.ref))
    assert found is not None
    removed: list[int] = []

    def remove_once(n: int) -> None:
        if not removed:
            removed.append(n)
            client.api.remove_image(built.image_id, force=True)

    cache = ImageCache(tmp_path / "cache")
    with cache.writing() as writer, pytest.raises(EngineError, match="export"):
        source.copy([found], writer, compress="none", known_layers={}, on_bytes=remove_once)
    assert removed == [MiB]
    assert built.diff_ids[0][7:] not in blobs(tmp_path / "cache")
    client.close()


def _wanted_ref(written: str) -> Wanted:
    ref = parse_image_ref(written)
    return Wanted(ref.with_default_tag().canonical, (ref,), essential=True)


# Where the data root can't be read directly: docker save, the same result.


def test_not_root_copies_with_docker_save(
    tmp_path: Path,
    daemon: DockerDaemon,
    proxy: SocketProxy,
    published_images: dict[str, PublishedImage],
) -> None:
    if shutil.which("setpriv") is None:
        pytest.fail("needs setpriv (util-linux)")
    refs = [image.tag_ref for image in published_images.values()]
    direct = tmp_path / "direct"
    assert cache_img(daemon.host, direct, "--compress", "none", *refs).returncode == 0
    nobody = pwd.getpwnam("nobody")
    work = Path(tempfile.mkdtemp(prefix="fb-nobody-"))
    try:
        work.chmod(0o755)
        cache = work / "cache"
        cache.mkdir()
        os.chown(cache, nobody.pw_uid, nobody.pw_gid)
        proxy.dir.chmod(0o755)
        proxy.path.chmod(0o666)
        argv = [
            "setpriv",
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
            "--",
            *command("-v", "cache-img", "--cache-dir", str(cache), "--compress", "none", *refs),
        ]
        env = {**product_env(proxy.host), "HOME": "/nonexistent"}
        result = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert result.returncode == 0, result.stderr
        assert "copying images with docker save: couldn't read Docker's store directly" in (
            result.stderr
        )
        assert len([p for p in proxy.paths("GET") if SAVE_CALL in p]) == 1
        assert blobs(cache) == blobs(direct)
        assert entries(cache) == entries(direct)
    finally:
        shutil.rmtree(work)


def test_another_storage_driver_copies_with_docker_save(
    tmp_path: Path,
    fresh_dockerd: DaemonFactory,
    daemon: DockerDaemon,
    published_images: dict[str, PublishedImage],
) -> None:
    refs = [published_images[name].tag_ref for name in ("alpha", "gamma")]
    vfs = fresh_dockerd(extra_args=("--storage-driver", "vfs"))
    client = vfs.client()
    for name in ("alpha", "gamma"):
        images.pull(client, published_images[name])
    client.close()
    direct, saved = tmp_path / "direct", tmp_path / "saved"
    assert cache_img(daemon.host, direct, "--compress", "none", *refs).returncode == 0
    result = cache_img(vfs.host, saved, "--compress", "none", *refs)
    assert result.returncode == 0, result.stderr
    assert "copying images with docker save: couldn't read Docker's store directly: " in (
        result.stderr
    )
    assert "storage driver 'vfs'" in result.stderr
    assert blobs(saved) == blobs(direct)
    assert entries(saved) == entries(direct)


# Memory: bounded whatever the image size, the encoder's helpers counted.


def peak_tree_rss(argv: list[str], env: dict[str, str]) -> tuple[int, int]:
    """(exit code, peak of the summed RSS of the process and all its descendants)."""
    proc = psutil.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0
    while proc.poll() is None:
        total = 0
        try:
            tree = [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for member in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += member.memory_info().rss
        peak = max(peak, total)
        time.sleep(0.02)
    proc.wait()
    return proc.returncode, peak


@pytest.fixture
def large_image(daemon: DockerDaemon) -> str:
    """busybox and four layers of 48 MiB of random bytes (incompressible: the encoders' worst)."""
    client = daemon.client()
    rng = random.Random(48)
    layers = [images.busybox_layer()]
    layers += [Layer({f"data/{i}.bin": (rng.randbytes(48 * MiB), 0o644)}) for i in range(4)]
    built = images.build_image(client, layers, "large")
    client.close()
    return built.ref


@pytest.mark.parametrize("compress", ["gzip", "none"])
def test_peak_memory_stays_below_100_mb(
    tmp_path: Path, daemon: DockerDaemon, large_image: str, compress: str
) -> None:
    argv = command("cache-img", "--cache-dir", str(tmp_path / "c"), "--compress", compress)
    code, peak = peak_tree_rss([*argv, large_image], product_env(daemon.host))
    assert code == 0
    print(f"\npeak RSS of cache-img --compress {compress} (196 MiB image): {peak / 1e6:.1f} MB")
    assert peak < 100e6
