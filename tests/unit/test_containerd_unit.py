"""containerd naming, ctr errors, and the OCI layout import (no daemon needed)."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from forklift_boot.archive.oci_layout import import_oci_layout
from forklift_boot.cache import ImageCache
from forklift_boot.errors import EngineError, EngineUnavailableError
from forklift_boot.refs import parse_image_ref
from forklift_boot.stores.containerd.content_store import configured_root
from forklift_boot.stores.containerd.ctr import Ctr, containerd_name, names_for

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("written", "name"),
    [
        ("alpha:1.0", "docker.io/library/alpha:1.0"),
        ("alpha", "docker.io/library/alpha:latest"),
        ("someone/app:2", "docker.io/someone/app:2"),
        (f"alpha@{DIGEST}", f"docker.io/library/alpha@{DIGEST}"),
        # CRI resolves name:tag@digest by name@digest: the tag is ignored.
        (f"alpha:1.0@{DIGEST}", f"docker.io/library/alpha@{DIGEST}"),
        ("127.0.0.1:5000/x/y:3", "127.0.0.1:5000/x/y:3"),
    ],
)
def test_containerd_name(written: str, name: str) -> None:
    assert containerd_name(parse_image_ref(written)) == name


def test_names_for_dedupes_spellings() -> None:
    refs = [parse_image_ref(r) for r in ("alpha:1.0", "docker.io/library/alpha:1.0")]
    refs.append(parse_image_ref(f"alpha:1.0@{DIGEST}"))
    assert names_for(refs) == ("docker.io/library/alpha:1.0", f"docker.io/library/alpha@{DIGEST}")


def test_unreachable_socket_is_one_line_with_namespace(tmp_path: Path) -> None:
    ctr = Ctr(str(tmp_path / "none.sock"), "k8s.io")
    with pytest.raises(EngineUnavailableError) as caught:
        ctr.images()
    message = str(caught.value)
    assert "\n" not in message
    assert str(tmp_path / "none.sock") in message
    assert "namespace k8s.io" in message


def test_ctr_error_classification() -> None:
    ctr = Ctr("/run/x.sock", "default")
    dial = ctr.error(("images", "ls"), b'ctr: failed to dial "/run/x.sock": timeout\n', None)
    assert isinstance(dial, EngineUnavailableError)
    missing = ctr.error(
        ("images", "export"), b'ctr: image "docker.io/library/a:1": not found\n', "a:1"
    )
    assert type(missing) is EngineError
    assert str(missing) == (
        "containerd at /run/x.sock (namespace default): ctr images export for a:1 failed: "
        'image "docker.io/library/a:1": not found'
    )


def _layout(blobs: dict[str, bytes], index: object | None, *, rename: str | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for digest, data in blobs.items():
            info = tarfile.TarInfo("blobs/sha256/" + (rename or digest.removeprefix("sha256:")))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if index is not None:
            data = json.dumps(index).encode()
            info = tarfile.TarInfo("index.json")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_import_oci_layout_keeps_blobs_byte_for_byte(tmp_path: Path) -> None:
    layer = b"\x1f\x8b compressed layer bytes, not a tar"
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"diff_ids":["sha256:00"]}}'
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"digest": _digest(config), "size": len(config)},
            "layers": [{"digest": _digest(layer), "size": len(layer)}],
        },
        separators=(",", ":"),
    ).encode()
    blobs = {_digest(b): b for b in (layer, config, manifest)}
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "digest": _digest(manifest),
                "size": len(manifest),
                "annotations": {"io.containerd.image.name": "docker.io/library/a:1"},
            }
        ],
    }
    cache = ImageCache(tmp_path / "cache")
    with cache.writing() as writer:
        imported = import_oci_layout([_layout(blobs, index)], writer, what="test")
        assert set(imported.names) == {"docker.io/library/a:1"}
        descriptor = imported.names["docker.io/library/a:1"]
        assert descriptor.digest == _digest(manifest)
        assert dict(imported.new_blobs) == {d: len(b) for d, b in blobs.items()}
        for digest, data in blobs.items():
            assert writer.blob_path(digest).read_bytes() == data
        again = import_oci_layout([_layout(blobs, index)], writer, what="test")
        assert not again.new_blobs


def test_import_oci_layout_refuses_a_damaged_blob_or_no_index(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "cache")
    with cache.writing() as writer:
        with pytest.raises(EngineError, match="hash to"):
            import_oci_layout(
                [_layout({DIGEST: b"x"}, {"manifests": []}, rename="cd" * 32)],
                writer,
                what="test",
            )
        with pytest.raises(EngineError, match="no index.json"):
            import_oci_layout([_layout({_digest(b"x"): b"x"}, None)], writer, what="test")


def test_import_oci_layout_surfaces_a_producer_failing_after_the_tar(tmp_path: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield _layout({_digest(b"x"): b"x"}, {"manifests": []})
        raise EngineError("ctr images export failed: boom")

    cache = ImageCache(tmp_path / "cache")
    with cache.writing() as writer, pytest.raises(EngineError, match="boom"):
        import_oci_layout(chunks(), writer, what="test")


@pytest.mark.parametrize(
    ("text", "root"),
    [
        ('version = 2\nroot = "/data/containerd"\nstate = "/run/c"\n', "/data/containerd"),
        ('version = 2\n[grpc]\n  address = "/run/c.sock"\n', "/var/lib/containerd"),
        ("root = [unclosed", "/var/lib/containerd"),
        ("root = 3\n", "/var/lib/containerd"),
    ],
)
def test_containerd_root_from_its_configuration(tmp_path: Path, text: str, root: str) -> None:
    config = tmp_path / "config.toml"
    config.write_text(text)
    assert configured_root(config) == Path(root)


def test_containerd_root_without_a_configuration_is_the_default(tmp_path: Path) -> None:
    assert configured_root(tmp_path / "none.toml") == Path("/var/lib/containerd")
