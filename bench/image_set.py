"""The round-trip benchmark's test images: ``FROM scratch`` + ``COPY`` of real files, no network.

Layers are copied from trees on this machine (shared libraries, the Python standard library and
a site-packages, docs and locales, a JDK, C headers, a compiler toolchain), plus ``os.urandom``
files standing in for models and assets (about a quarter of the bytes: they do not compress).
Images share base layers as real images do, through common prefixes: a, b and c start with the
same ``os`` + ``py`` layers, a and c also share ``docs``, and d stands alone.

Each layer is built once, ``FROM`` the image of its prefix, so no byte is sent to the daemon
twice; the intermediate images are untagged parents of the four tagged ones.
"""

from __future__ import annotations

import io
import os
import stat
import sysconfig
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

MB = 1_000_000
MTIME = 1_700_000_000  # a fixed mtime: a layer's bytes depend only on its files
RANDOM_FILE_SIZE = 16 * MB
REPOSITORY = "fbbench"


@dataclass(frozen=True)
class LayerSpec:
    """Files for one ``COPY``: from host trees (sorted walk, up to ``size``) or random bytes."""

    name: str
    size: int  # bytes of file content at scale 1
    sources: tuple[str, ...] = ()  # host directories; empty means os.urandom files


def _site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


LAYERS = (
    LayerSpec("os", 260 * MB, ("/usr/lib/x86_64-linux-gnu",)),
    LayerSpec("py", 180 * MB, ("/usr/lib/python3.11", "/usr/lib/python3", _site_packages())),
    LayerSpec("docs", 120 * MB, ("/usr/share/doc", "/usr/share/locale")),
    LayerSpec("jvm", 250 * MB, ("/usr/lib/jvm",)),
    LayerSpec("app-a", 200 * MB),
    LayerSpec("include", 100 * MB, ("/usr/include",)),
    LayerSpec("app-b", 80 * MB),
    LayerSpec("app-c", 50 * MB),
    LayerSpec("tools", 120 * MB, ("/usr/lib/llvm-14", "/usr/lib/gcc", "/usr/bin")),
    LayerSpec("app-d", 30 * MB),
)

# Image name -> its layers, base first. "a" is the one of at least 1 GB at scale 1.
IMAGES: Mapping[str, tuple[str, ...]] = {
    "a": ("os", "py", "docs", "jvm", "app-a"),
    "b": ("os", "py", "include", "app-b"),
    "c": ("os", "py", "docs", "app-c"),
    "d": ("tools", "app-d"),
}


@dataclass(frozen=True)
class BuiltLayer:
    name: str
    content_bytes: int  # file content put into the layer
    random_bytes: int
    files: int


@dataclass(frozen=True)
class BuiltImages:
    refs: Mapping[str, str]  # image name -> fbbench/<name>:1
    image_ids: Mapping[str, str]
    sizes: Mapping[str, int]  # docker inspect Size (uncompressed content)
    layers: Mapping[str, BuiltLayer]
    build_seconds: float


def ref_of(name: str) -> str:
    return f"{REPOSITORY}/{name}:1"


def build_images(client: docker.DockerClient, scale: float, work_dir: Path) -> BuiltImages:
    """Builds every image of IMAGES; layer sizes are ``LayerSpec.size * scale``."""
    specs = {spec.name: spec for spec in LAYERS}
    start = time.monotonic()
    built: dict[tuple[str, ...], str] = {}  # layer prefix -> image ID
    layers: dict[str, BuiltLayer] = {}
    for name, layer_names in IMAGES.items():
        for depth in range(1, len(layer_names) + 1):
            prefix = layer_names[:depth]
            if prefix in built:
                continue
            parent = built.get(prefix[:-1])
            spec = specs[prefix[-1]]
            context = work_dir / f"context-{spec.name}.tar"
            try:
                layers[spec.name] = _write_context(context, spec, parent, scale)
                built[prefix] = _build(client, context, f"{name}, layer {spec.name}")
            finally:
                context.unlink(missing_ok=True)
        client.api.tag(built[layer_names], f"{REPOSITORY}/{name}", "1")
    refs = {name: ref_of(name) for name in IMAGES}
    attrs = {name: client.images.get(ref).attrs for name, ref in refs.items()}
    return BuiltImages(
        refs=refs,
        image_ids={name: str(info["Id"]) for name, info in attrs.items()},
        sizes={name: int(info["Size"]) for name, info in attrs.items()},
        layers=layers,
        build_seconds=time.monotonic() - start,
    )


def _write_context(path: Path, spec: LayerSpec, parent: str | None, scale: float) -> BuiltLayer:
    budget = int(spec.size * scale)
    dockerfile = f"FROM {parent or 'scratch'}\nCOPY layer/ /\n".encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "Dockerfile", dockerfile)
        if spec.sources:
            content, files = _add_host_files(tar, spec.sources, budget)
            return BuiltLayer(spec.name, content, 0, files)
        files = 0
        for offset in range(0, budget, RANDOM_FILE_SIZE):
            size = min(RANDOM_FILE_SIZE, budget - offset)
            _add_bytes(tar, f"layer/opt/{spec.name}/blob-{files:03d}.bin", os.urandom(size))
            files += 1
        return BuiltLayer(spec.name, budget, budget, files)


def _add_host_files(tar: tarfile.TarFile, sources: tuple[str, ...], budget: int) -> tuple[int, int]:
    """Regular files and symlinks under ``sources`` in sorted order, up to ``budget`` bytes."""
    content = files = 0
    for path in _walk(sources):
        if content >= budget * 0.99:
            break
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and content + st.st_size > budget:
                continue  # too big for what is left (a 100 MB libLLVM at a small --scale)
            # After the size check: gettarinfo remembers hard-linked inodes it has seen.
            info = tar.gettarinfo(path, arcname="layer" + path)
        except OSError:
            continue  # gone or unreadable since the walk
        added = add_host_file(tar, info, path)
        if added is not None:
            content += added
            files += 1
    return content, files


def add_host_file(tar: tarfile.TarFile, info: tarfile.TarInfo, path: str) -> int | None:
    """Adds a regular file, symlink or hard link as root-owned with a fixed time; returns the
    content bytes added, or None if it is another kind or became unreadable."""
    if not (info.isreg() or info.issym() or info.islnk()):
        return None
    info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "root", "root"
    try:
        if info.isreg():
            with open(path, "rb") as file:
                tar.addfile(info, file)
        else:
            tar.addfile(info)
    except OSError:
        return None
    return info.size if info.isreg() else 0


def _walk(sources: tuple[str, ...]) -> Iterator[str]:
    for source in sources:
        for root, dirs, names in os.walk(source):
            dirs.sort()
            for name in sorted(names):
                yield os.path.join(root, name)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, MTIME
    tar.addfile(info, io.BytesIO(data))


def _build(client: docker.DockerClient, context: Path, what: str) -> str:
    """Legacy builder (dockerd 20.10 has no BuildKit here); returns the new image's ID."""
    with context.open("rb") as file:
        stream: Iterator[dict[str, Any]] = client.api.build(
            fileobj=file, custom_context=True, rm=True, forcerm=True, decode=True
        )
        image_id = None
        for chunk in stream:
            if "error" in chunk:
                raise RuntimeError(f"couldn't build {what}: {chunk['error']}")
            if "aux" in chunk and "ID" in chunk["aux"]:
                image_id = str(chunk["aux"]["ID"])
    if image_id is None:
        raise RuntimeError(f"couldn't build {what}: the daemon reported no image ID")
    return image_id


def scratch_dir(parent: Path | None = None) -> Path:
    return Path(tempfile.mkdtemp(prefix="fb-bench-", dir=parent))
