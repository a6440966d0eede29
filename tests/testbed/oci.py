"""Images crafted byte by byte and pushed to a registry over HTTP: no daemon needed.

Layers are real gzip-compressed tars (so dockerd loads them), configs are Docker's shape, and
manifests are OCI or Docker schema 2. Standard library only (urllib), so this runs on the PyPI
and the Debian stacks.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tests.testbed.images import MTIME

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
ACCEPT = ", ".join([OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST])

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Blob:
    media_type: str
    data: bytes = field(repr=False)
    platform: Mapping[str, str] | None = None

    @property
    def digest(self) -> str:
        return sha256(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": self.size,
        }
        if self.platform is not None:
            obj["platform"] = dict(self.platform)
        return obj


@dataclass(frozen=True)
class CraftedImage:
    config: Blob
    layers: tuple[Blob, ...]
    manifest: Blob
    platform: Mapping[str, str]

    @property
    def image_id(self) -> str:
        return self.config.digest

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """Config and layers (what a push uploads before the manifest)."""
        return (self.config, *self.layers)

    def child(self) -> dict[str, Any]:
        """This image's entry in an index: its manifest with its platform."""
        return {**self.manifest.descriptor(), "platform": dict(self.platform)}


def pseudo_random(seed: str, size: int) -> bytes:
    """Incompressible, repeatable bytes (a layer that stays big after gzip)."""
    out = bytearray()
    block = seed.encode()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def layer(files: Mapping[str, bytes], media_type: str = OCI_LAYER_GZIP) -> tuple[Blob, str]:
    """A gzip-compressed tar of ``files`` and its diff ID (the uncompressed tar's digest)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o755, MTIME
            tar.addfile(info, io.BytesIO(content))
    raw = buf.getvalue()
    return Blob(media_type, gzip.compress(raw, mtime=0)), sha256(raw)


def craft_image(
    layers: Sequence[Mapping[str, bytes]],
    *,
    architecture: str = "amd64",
    variant: str | None = None,
    oci: bool = True,
    extra_layers: Sequence[dict[str, Any]] = (),
) -> CraftedImage:
    """An image of the given layers; ``extra_layers`` are descriptors listed in the manifest
    only (a foreign layer that the registry does not have)."""
    built = [layer(files, OCI_LAYER_GZIP if oci else DOCKER_LAYER_GZIP) for files in layers]
    platform = {"architecture": architecture, "os": "linux"}
    if variant:
        platform["variant"] = variant
    config_doc: dict[str, Any] = {
        **platform,
        "config": {"Cmd": ["/bin/busybox", "true"]},
        "created": "2023-11-14T22:13:20Z",
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in built]},
    }
    config = Blob(
        OCI_CONFIG if oci else "application/vnd.docker.container.image.v1+json",
        json.dumps(config_doc, sort_keys=True).encode(),
    )
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": config.descriptor(),
        "layers": [blob.descriptor() for blob, _ in built] + list(extra_layers),
    }
    manifest = Blob(OCI_MANIFEST if oci else DOCKER_MANIFEST, json.dumps(manifest_doc).encode())
    return CraftedImage(config, tuple(blob for blob, _ in built), manifest, platform)


def index_of(children: Sequence[dict[str, Any]], media_type: str = OCI_INDEX) -> Blob:
    """An image index (or Docker manifest list) over manifest descriptors with platforms."""
    document = {"schemaVersion": 2, "mediaType": media_type, "manifests": list(children)}
    return Blob(media_type, json.dumps(document, indent=2).encode())


# Pushing over HTTP


def _request(
    method: str, url: str, data: bytes | None = None, headers: Mapping[str, str] | None = None
) -> tuple[int, Mapping[str, str], bytes]:
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    try:
        with _OPENER.open(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"{method} {url}: HTTP {exc.code}: {exc.read()[:300]!r}") from exc


def push_blob(base_url: str, repo: str, blob: Blob) -> None:
    """The monolithic upload of distribution's API: POST an upload, PUT the bytes."""
    status, headers, _ = _request("POST", f"{base_url}/v2/{repo}/blobs/uploads/", b"")
    assert status == 202, status
    location = urllib.parse.urljoin(base_url, headers["Location"])
    separator = "&" if "?" in location else "?"
    status, _, _ = _request(
        "PUT",
        f"{location}{separator}digest={blob.digest}",
        blob.data,
        {"Content-Type": "application/octet-stream"},
    )
    assert status == 201, status


def put_manifest(base_url: str, repo: str, reference: str, blob: Blob) -> str:
    """PUT a manifest or index under a tag (or its digest); returns the registry's digest."""
    status, headers, _ = _request(
        "PUT",
        f"{base_url}/v2/{repo}/manifests/{reference}",
        blob.data,
        {"Content-Type": blob.media_type},
    )
    assert status == 201, status
    digest = headers["Docker-Content-Digest"]
    assert digest == blob.digest, (digest, blob.digest)
    return digest


def push_image(base_url: str, repo: str, reference: str, image: CraftedImage) -> str:
    for blob in image.blobs:
        push_blob(base_url, repo, blob)
    return put_manifest(base_url, repo, reference, image.manifest)


def get_manifest(base_url: str, repo: str, reference: str) -> Blob:
    """A manifest as the registry serves it (bytes and media type)."""
    _, headers, data = _request(
        "GET", f"{base_url}/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT}
    )
    return Blob(headers["Content-Type"].split(";")[0], data)
