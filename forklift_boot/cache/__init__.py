"""The image cache: one OCI image layout directory (image-spec 1.1) whose blobs all images share."""

from __future__ import annotations

from forklift_boot.cache.blob_writer import BlobWriter, ReadableStream, StoredBlob
from forklift_boot.cache.blobs import BUFFER_SIZE, DamagedBlobError
from forklift_boot.cache.descriptors import CachedImage, Descriptor
from forklift_boot.cache.image_cache import DEFAULT_LOCK_TIMEOUT, ImageCache
from forklift_boot.cache.manifests import build_oci_manifest
from forklift_boot.cache.media import (
    ANNOTATION_IMAGE_ID,
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_PLATFORM,
    ANNOTATION_REF_NAME,
    ANNOTATION_REFS,
    ANNOTATION_REGISTRY_DIGEST,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPES,
    MEDIA_DOCKER_CONFIG,
    MEDIA_DOCKER_LAYER,
    MEDIA_DOCKER_LAYER_FOREIGN,
    MEDIA_DOCKER_LAYER_GZIP,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_ZSTD,
    MEDIA_OCI_MANIFEST,
    NONDISTRIBUTABLE_LAYER_MEDIA_TYPES,
)
from forklift_boot.cache.reader import MAX_JSON_BLOB_SIZE, CacheReader
from forklift_boot.cache.space import ensure_free_space, human_bytes
from forklift_boot.cache.writer import CacheWriter

__all__ = [
    "ANNOTATION_IMAGE_ID",
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_PLATFORM",
    "ANNOTATION_REFS",
    "ANNOTATION_REF_NAME",
    "ANNOTATION_REGISTRY_DIGEST",
    "BUFFER_SIZE",
    "DEFAULT_LOCK_TIMEOUT",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "MAX_JSON_BLOB_SIZE",
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
    "BlobWriter",
    "CacheReader",
    "CacheWriter",
    "CachedImage",
    "DamagedBlobError",
    "Descriptor",
    "ImageCache",
    "ReadableStream",
    "StoredBlob",
    "build_oci_manifest",
    "ensure_free_space",
    "human_bytes",
]
