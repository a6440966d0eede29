"""Every image store forklift-boot copies out of and loads into, behind one test interface.

The store contract (tests/integration/test_store_contract.py) runs the same round trip on each:
put the published images in the store from the loopback registry, cache them, remove them, load
them back with the registry stopped, and check that every ref as written resolves the way that
store's users resolve it. What "resolves" means, and the ID a ref must resolve to, is worked out
from the registry's own digests and Docker's build of the images, never from forklift-boot.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import docker
from docker.errors import ImageNotFound

from forklift_boot.refs import parse_image_ref
from tests.testbed import images
from tests.testbed.containerd import Containerd
from tests.testbed.images import PublishedImage
from tests.testbed.registry import Registry


class ImageStore(Protocol):
    @property
    def name(self) -> str:
        """As CI's summary lists it."""

    @property
    def docker_host(self) -> str:
        """DOCKER_HOST for the command (a dead socket where Docker isn't used)."""

    @property
    def source_args(self) -> tuple[str, ...]:
        """cache-img options that copy out of this store."""

    @property
    def target_args(self) -> tuple[str, ...]:
        """load-img options that load into it."""

    @property
    def keeps_registry_manifests(self) -> bool:
        """Whether its export carries the registry's manifest bytes."""

    def put(self, published: Iterable[PublishedImage]) -> None:
        """Pull every image from the registry, named as a user's pull names it."""

    def remove_all(self, published: Iterable[PublishedImage]) -> None:
        """Remove every image, so that a load really loads."""

    def assert_resolves(self, published: Iterable[PublishedImage], refs: Iterable[str]) -> None:
        """Each ref as written resolves to its image, offline."""

    def present(self) -> set[str]:
        """A snapshot of the store's image names, to show that a rerun changes nothing."""


NO_DOCKER = "unix:///nonexistent/docker.sock"

# Every store the contract runs on; CI's summary lists each (tests/integration/conftest.py).
STORE_NAMES = (
    "docker-classic",
    "docker-with-external-containerd",
    "docker-containerd-store",
    "containerd-default",
    "containerd-k8s.io",
)


@dataclass
class DockerStore:
    """A dockerd reached at ``docker_host``: classic store (IDs are config digests) or
    containerd image store (IDs are the registry's manifest digests)."""

    name: str
    docker_host: str
    is_containerd_store: bool
    source_args: tuple[str, ...] = ("--from", "docker")
    target_args: tuple[str, ...] = ("--into", "docker")

    @property
    def keeps_registry_manifests(self) -> bool:
        return self.is_containerd_store

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.docker_host, version="auto")

    def expected_id(self, image: PublishedImage) -> str:
        return image.registry_digest if self.is_containerd_store else image.image_id

    def put(self, published: Iterable[PublishedImage]) -> None:
        with contextlib.closing(self.client()) as client:
            for image in published:
                stream = client.api.pull(image.name, tag=image.tag, stream=True, decode=True)
                for chunk in stream:
                    assert "error" not in chunk, f"pull {image.tag_ref}: {chunk['error']}"
                info = images.inspect(client, image.tag_ref)
                assert info["Id"] == self.expected_id(image), (image.tag_ref, info["Id"])

    def remove_all(self, published: Iterable[PublishedImage]) -> None:
        with contextlib.closing(self.client()) as client:
            for image in published:
                for ref in (image.tag_ref, image.digest_ref, image.image_id):
                    with contextlib.suppress(ImageNotFound):
                        client.api.remove_image(ref, force=True)
            left = client.images.list(all=True)
            assert not left, [i.tags for i in left]

    def assert_resolves(self, published: Iterable[PublishedImage], refs: Iterable[str]) -> None:
        expected = {ref: self.expected_id(image) for image in published for ref in image.refs}
        with contextlib.closing(self.client()) as client:
            for ref in refs:
                # The Engine API's GET /images/<ref>/json, as Compose asks it.
                assert images.inspect(client, ref)["Id"] == expected[ref], ref
                # The SDK's create never pulls: only a ref the daemon resolves itself works.
                container = client.containers.create(ref, command=["/bin/busybox", "true"])
                assert container.attrs["Image"] == expected[ref], ref
                container.remove()

    def present(self) -> set[str]:
        with contextlib.closing(self.client()) as client:
            return {
                f"{image.id} {tag}"
                for image in client.images.list(all=True)
                for tag in image.tags or ["<none>"]
            }


@dataclass
class ContainerdStore:
    """A standalone containerd namespace, driven with ctr; refs resolve as containerd's CRI
    and nerdctl resolve them: by ``name:tag``, or ``name@digest`` when a digest is pinned."""

    name: str
    containerd: Containerd
    registry: Registry
    namespace: str
    docker_host: str = NO_DOCKER
    keeps_registry_manifests: bool = True

    @property
    def _where(self) -> tuple[str, ...]:
        return ("--containerd-address", str(self.containerd.sock), "--namespace", self.namespace)

    @property
    def source_args(self) -> tuple[str, ...]:
        return ("--from", "containerd", *self._where)

    @property
    def target_args(self) -> tuple[str, ...]:
        return ("--into", "containerd", *self._where)

    def ctr(self, *args: str) -> str:
        return self.containerd.ctr(*args, namespace=self.namespace).stdout

    def put(self, published: Iterable[PublishedImage]) -> None:
        for image in published:
            loopback = f"{self.registry.host}/{image.registry_repo}:{image.tag}"
            self.ctr("images", "pull", "--plain-http", loopback)
            if image.full_tag_ref != loopback:
                self.ctr("images", "tag", loopback, image.full_tag_ref)
                self.ctr("images", "rm", loopback)

    def present(self) -> set[str]:
        return set(self.ctr("images", "ls", "-q").split())

    def remove_all(self, published: Iterable[PublishedImage]) -> None:
        """Every name, CRI's ``sha256:<config>`` ones included."""
        names = self.present()
        if names:
            self.ctr("images", "rm", "--sync", *sorted(names))
        assert not self.present()

    def assert_resolves(self, published: Iterable[PublishedImage], refs: Iterable[str]) -> None:
        expected_target = {ref: image.registry_digest for image in published for ref in image.refs}
        records = {}
        for line in self.ctr("images", "ls").splitlines()[1:]:
            fields = line.split()
            records[fields[0]] = fields[2]
        check = {line.split()[0]: line for line in self.ctr("images", "check").splitlines()[1:]}
        for ref in refs:
            parsed = parse_image_ref(ref)
            name = parsed.digested or parsed.tagged or ""
            assert name in records, f"{ref}: no image named {name}"
            assert records[name] == expected_target[ref], (ref, records[name])
            assert "complete" in check[name], check[name]
