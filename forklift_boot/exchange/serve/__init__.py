"""The cache served read-only as a registry: the pull side of the OCI distribution API."""

from forklift_boot.exchange.serve.api import (
    ApiError,
    RangeNotSatisfiableError,
    catalog_name,
    parse_byte_range,
    repository_name,
)
from forklift_boot.exchange.serve.catalog import CacheCatalog, ServedRepository
from forklift_boot.exchange.serve.server import (
    HEADER_TIMEOUT_SECONDS,
    MAX_CONNECTIONS,
    CacheServer,
)

__all__ = [
    "HEADER_TIMEOUT_SECONDS",
    "MAX_CONNECTIONS",
    "ApiError",
    "CacheCatalog",
    "CacheServer",
    "RangeNotSatisfiableError",
    "ServedRepository",
    "catalog_name",
    "parse_byte_range",
    "repository_name",
]
