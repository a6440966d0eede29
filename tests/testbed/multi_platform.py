"""A two-platform image (linux/amd64 and linux/arm64/v8) built by dockerd and pushed with an
index the test writes, as a multi-platform image on Docker Hub looks."""

from __future__ import annotations

import io
from dataclasses import dataclass

import docker

from tests.testbed import images, oci
from tests.testbed.oci import Blob
from tests.testbed.registry import Registry

MULTI_REPO = "library/fbmulti"  # Docker Hub's fbmulti through the mirror, or HOST/library/...


@dataclass(frozen=True)
class BuiltMulti:
    registry: Registry
    repo: str
    index_digest: str
    amd64: images.BuiltImage
    arm64: images.BuiltImage
    manifests: dict[str, Blob]  # architecture -> the manifest dockerd pushed

    def built_refs(self) -> list[str]:
        """The local names the build and the push left in the building dockerd."""
        return [self.amd64.ref, self.arm64.ref] + [
            f"{self.registry.host}/{self.repo}:{arch}" for arch in self.manifests
        ]


def build_for(client: docker.DockerClient, platform: str, name: str) -> images.BuiltImage:
    """``docker build --platform`` of a FROM scratch image: no emulation needed."""
    ref = f"{images.LOCAL_PREFIX}/multi:{name}"
    context = images.build_context(
        [images.busybox_layer(), images.app_layer(f"multi-{name}")],
        ["/bin/busybox", "cat", f"/app/multi-{name}.txt"],
    )
    stream = client.api.build(
        fileobj=io.BytesIO(context),
        custom_context=True,
        tag=ref,
        rm=True,
        decode=True,
        platform=platform,
        # dockerd 20.10's legacy builder reuses cached steps of another platform, then fails.
        nocache=True,
    )
    for chunk in stream:
        assert "error" not in chunk, chunk
    info = images.inspect(client, ref)
    assert f"{info['Os']}/{info['Architecture']}" == platform
    return images.BuiltImage(ref, info["Id"], tuple(info["RootFS"]["Layers"]))


def publish_multi_platform(client: docker.DockerClient, registry: Registry) -> BuiltMulti:
    """Builds both platforms, pushes each, then PUTs a Docker manifest list over them as
    ``fbmulti:1.0``."""
    built = {"amd64": build_for(client, "linux/amd64", "amd64")}
    built["arm64"] = build_for(client, "linux/arm64", "arm64")
    manifests: dict[str, Blob] = {}
    children = []
    for arch, image in built.items():
        digest = images.publish(client, image, registry, MULTI_REPO, arch)
        manifest = oci.get_manifest(registry.url, MULTI_REPO, digest)
        assert manifest.media_type == oci.DOCKER_MANIFEST
        manifests[arch] = manifest
        children.append(
            {**manifest.descriptor(), "platform": {"architecture": arch, "os": "linux"}}
        )
    children[1]["platform"]["variant"] = "v8"  # as buildx writes arm64
    index = oci.index_of(children, oci.DOCKER_LIST)
    digest = oci.put_manifest(registry.url, MULTI_REPO, "1.0", index)
    return BuiltMulti(registry, MULTI_REPO, digest, built["amd64"], built["arm64"], manifests)
