"""Copying images from one image cache into another: `cache copy` and `cache merge`."""

from forklift_boot.exchange.copy.copier import copy_images
from forklift_boot.exchange.copy.report import (
    ALREADY_THERE,
    COPIED,
    KEPT,
    REPLACED,
    UPDATED,
    TransferReport,
)

__all__ = [
    "ALREADY_THERE",
    "COPIED",
    "KEPT",
    "REPLACED",
    "UPDATED",
    "TransferReport",
    "copy_images",
]
