"""Test images built with no network: ``FROM scratch`` + ``COPY`` from an in-memory context.

Every image starts with the same busybox layer (``/bin/busybox`` from Debian's busybox-static, so
``docker run img`` works with ``--bridge=none``, docs/testbed.md); most also share a second small
``/etc`` layer; each then has its own small layer(s) with deterministic, distinct content.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import secrets
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.errors import ImageNotFound

from tests.testbed.registry import Registry

LOCAL_PREFIX = "forklift-boot-test"
# A fixed mtime keeps a layer's tar (and so its diff ID) the same however often it is built.
MTIME = 1_700_000_000


@dataclass(frozen=True)
class Layer:
    """One ``COPY`` step: relative path -> (content, mode), copied to ``/``."""

    files: Mapping[str, tuple[bytes, int]]


@dataclass(frozen=True)
class BuiltImage:
    """An image as built locally (only the ``forklift-boot-test/<random>:<tag>`` name)."""

    ref: str
    image_id: str  # config digest, what `docker inspect` calls Id
    diff_ids: tuple[str, ...]


@dataclass(frozen=True)
class PublishedImage:
    """An image in the loopback registry, with every spelling a test may need.

    ``name`` is the repository as a user writes it: ``alpha`` or ``fbtest/gamma`` (Docker Hub
    short names, served through ``--registry-mirror``) or ``127.0.0.1:PORT/fbtest/delta``.
    Docker reports ``RepoDigests`` in this familiar form, so ``digest_ref`` is what to expect there.
    """

    name: str
    canonical_name: str  # docker.io/library/alpha, docker.io/fbtest/gamma, 127.0.0.1:PORT/...
    registry_repo: str  # path in the loopback registry: library/alpha, fbtest/gamma, fbtest/delta
    tag: str
    registry_digest: str  # manifest digest (Docker-Content-Digest), != image_id
    image_id: str
    diff_ids: tuple[str, ...]

    @property
    def tag_ref(self) -> str:
        return f"{self.name}:{self.tag}"

    @property
    def digest_ref(self) -> str:
        return f"{self.name}@{self.registry_digest}"

    @property
    def tag_digest_ref(self) -> str:
        return f"{self.name}:{self.tag}@{self.registry_digest}"

    @property
    def full_tag_ref(self) -> str:
        return f"{self.canonical_name}:{self.tag}"

    @property
    def full_digest_ref(self) -> str:
        return f"{self.canonical_name}@{self.registry_digest}"

    @property
    def full_tag_digest_ref(self) -> str:
        return f"{self.canonical_name}:{self.tag}@{self.registry_digest}"

    @property
    def refs(self) -> tuple[str, ...]:
        """All six spellings (three forms, short and fully qualified; equal for HOST/ names)."""
        short = (self.tag_ref, self.digest_ref, self.tag_digest_ref)
        full = (self.full_tag_ref, self.full_digest_ref, self.full_tag_digest_ref)
        return tuple(dict.fromkeys(short + full))


def busybox_layer() -> Layer:
    return Layer({"bin/busybox": (Path("/bin/busybox").read_bytes(), 0o755)})


ETC_LAYER = Layer(
    {
        "etc/passwd": (b"root:x:0:0:root:/:/bin/busybox\n", 0o644),
        "etc/forklift-test-base": (b"shared base layer of forklift-boot test images\n", 0o644),
    }
)


def app_layer(name: str, size: int = 4096) -> Layer:
    """``/app/<name>.txt``: the name then ``size`` bytes derived from it (distinct, repeatable)."""
    data = bytearray(f"{name}\n".encode())
    block = name.encode()
    while len(data) < size:
        block = hashlib.sha256(block).digest()
        data += block.hex().encode()
    return Layer({f"app/{name}.txt": (bytes(data[:size]), 0o644)})


def standard_layers() -> dict[str, tuple[Layer, ...]]:
    """Four images: all share busybox; alpha, beta and delta also share /etc; delta has two own."""
    busybox = busybox_layer()
    return {
        "alpha": (busybox, ETC_LAYER, app_layer("alpha")),
        "beta": (busybox, ETC_LAYER, app_layer("beta")),
        "gamma": (busybox, app_layer("gamma")),
        "delta": (busybox, ETC_LAYER, app_layer("delta"), app_layer("delta-extra")),
    }


def build_context(layers: Iterable[Layer], cmd: list[str]) -> bytes:
    lines = ["FROM scratch"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for index, layer in enumerate(layers):
            lines.append(f"COPY l{index}/ /")
            for rel, (content, mode) in sorted(layer.files.items()):
                _add(tar, f"l{index}/{rel}", content, mode)
        lines.append(f"CMD {json.dumps(cmd)}")
        _add(tar, "Dockerfile", ("\n".join(lines) + "\n").encode(), 0o644)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, content: bytes, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(content), mode, MTIME
    tar.addfile(info, io.BytesIO(content))


def _check_stream(stream: Iterable[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    """Build/push/pull report errors inside a 200 response: raise on them."""
    chunks = list(stream)
    for chunk in chunks:
        if "error" in chunk:
            raise RuntimeError(f"{what}: {chunk['error']}")
    return chunks


def inspect(client: docker.DockerClient, ref: str) -> dict[str, Any]:
    info: dict[str, Any] = client.images.get(ref).attrs
    return info


def build_image(
    client: docker.DockerClient, layers: Iterable[Layer], tag: str, cmd: list[str] | None = None
) -> BuiltImage:
    """Builds as ``forklift-boot-test/<random>:<tag>`` (legacy builder: dockerd 20.10, no BuildKit)."""
    ref = f"{LOCAL_PREFIX}/{secrets.token_hex(4)}:{tag}"
    context = build_context(layers, cmd or ["/bin/busybox", "true"])
    stream = client.api.build(
        fileobj=io.BytesIO(context), custom_context=True, tag=ref, rm=True, decode=True
    )
    _check_stream(stream, f"build {ref}")
    info = inspect(client, ref)
    return BuiltImage(ref, info["Id"], tuple(info["RootFS"]["Layers"]))


def build_standard_images(client: docker.DockerClient) -> dict[str, BuiltImage]:
    return {
        name: build_image(client, layers, name, ["/bin/busybox", "cat", f"/app/{name}.txt"])
        for name, layers in standard_layers().items()
    }


def publish(
    client: docker.DockerClient, image: BuiltImage, registry: Registry, repo: str, tag: str
) -> str:
    """Pushes ``image`` as ``HOST/repo:tag``; returns the registry's manifest digest."""
    target = f"{registry.host}/{repo}"
    client.api.tag(image.ref, target, tag)
    chunks = _check_stream(
        client.api.push(target, tag=tag, stream=True, decode=True), f"push {target}:{tag}"
    )
    digest = registry.manifest_digest(repo, tag)
    pushed = [c["aux"]["Digest"] for c in chunks if "Digest" in c.get("aux", {})]
    assert pushed == [digest], f"push reported {pushed}, registry has {digest}"
    return digest


def publish_hub(
    client: docker.DockerClient, image: BuiltImage, registry: Registry, name: str, tag: str
) -> PublishedImage:
    """Serves ``image`` as Docker Hub's ``name:tag`` (``alpha`` or ``user/name``) to a dockerd
    started with ``--registry-mirror http://HOST``: the mirror is asked for ``library/<name>``."""
    repo = name if "/" in name else f"library/{name}"
    digest = publish(client, image, registry, repo, tag)
    client.api.remove_image(f"{registry.host}/{repo}:{tag}")  # only the vehicle tag; keep image.ref
    return PublishedImage(
        name, f"docker.io/{repo}", repo, tag, digest, image.image_id, image.diff_ids
    )


def publish_local(
    client: docker.DockerClient, image: BuiltImage, registry: Registry, repo: str, tag: str
) -> PublishedImage:
    """Serves ``image`` as ``127.0.0.1:PORT/repo:tag`` (a name no mirror can stand in for)."""
    digest = publish(client, image, registry, repo, tag)
    name = f"{registry.host}/{repo}"
    return PublishedImage(name, name, repo, tag, digest, image.image_id, image.diff_ids)


def pull(client: docker.DockerClient, image: PublishedImage) -> None:
    """``docker pull name:tag`` and check that Docker recorded the registry's digest."""
    what = f"pull {image.tag_ref}"
    _check_stream(client.api.pull(image.name, tag=image.tag, stream=True, decode=True), what)
    info = inspect(client, image.tag_ref)
    assert info["Id"] == image.image_id, f"{what}: Id {info['Id']} != {image.image_id}"
    assert image.digest_ref in info["RepoDigests"], f"{what}: RepoDigests {info['RepoDigests']}"


def pull_ref(client: docker.DockerClient, ref: str, platform: str | None = None) -> None:
    """``docker pull [--platform P] ref``, failing on any error in the progress stream."""
    name, _, tag = ref.rpartition(":")
    kwargs: dict[str, Any] = {"platform": platform} if platform else {}
    _check_stream(client.api.pull(name, tag=tag, stream=True, decode=True, **kwargs), f"pull {ref}")


def remove_images(client: docker.DockerClient, refs: Iterable[str]) -> None:
    """``docker rmi -f`` each ref that still exists."""
    for ref in refs:
        with contextlib.suppress(ImageNotFound):
            client.api.remove_image(ref, force=True)
