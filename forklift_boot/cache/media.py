"""Media types and annotation keys of the OCI image layout that forklift-boot writes and reads."""

from __future__ import annotations

__all__ = [
    "ANNOTATION_IMAGE_ID",
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_PLATFORM",
    "ANNOTATION_REFS",
    "ANNOTATION_REF_NAME",
    "ANNOTATION_REGISTRY_DIGEST",
    "FORKLIFT_ANNOTATION_PREFIX",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "MEDIA_DOCKER_CONFIG",
    "MEDIA_DOCKER_LAYER",
    "MEDIA_DOCKER_LAYER_FOREIGN",
    "MEDIA_DOCKER_LAYER_GZIP",
    "MEDIA_DOCKER_MANIFEST",
    "MEDIA_DOCKER_MANIFEST_LIST",
    "MEDIA_OCI_CONFIG",
    "MEDIA_OCI_INDEX",
    "MEDIA_OCI_LAYER",
    "MEDIA_OCI_LAYER_GZIP",
    "MEDIA_OCI_LAYER_ZSTD",
    "MEDIA_OCI_MANIFEST",
    "NONDISTRIBUTABLE_LAYER_MEDIA_TYPES",
]

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
MEDIA_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MEDIA_DOCKER_LAYER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

# Layers that only their origin may serve (Windows base layers, listed with `urls`): a registry
# copy leaves them out, so an entry may lack them.
NONDISTRIBUTABLE_LAYER_MEDIA_TYPES = frozenset(
    {
        MEDIA_DOCKER_LAYER_FOREIGN,
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)

# Documents whose "manifests" list points at per-platform manifests (or further indexes).
INDEX_MEDIA_TYPES = frozenset({MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST_LIST})
# Documents with one "config" and a list of "layers".
MANIFEST_MEDIA_TYPES = frozenset({MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST})

# containerd's importer and Docker's containerd-store loader name images by this one.
ANNOTATION_IMAGE_NAME = "io.containerd.image.name"
# skopeo, crane and regctl find `oci:DIR:<name>` by this one.
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

FORKLIFT_ANNOTATION_PREFIX = "run.forklift.boot."
# The refs as written that share the entry's canonical name: comma-separated, sorted, unique.
ANNOTATION_REFS = FORKLIFT_ANNOTATION_PREFIX + "refs"
ANNOTATION_IMAGE_ID = FORKLIFT_ANNOTATION_PREFIX + "image-id"
ANNOTATION_REGISTRY_DIGEST = FORKLIFT_ANNOTATION_PREFIX + "registry-digest"
ANNOTATION_PLATFORM = FORKLIFT_ANNOTATION_PREFIX + "platform"
