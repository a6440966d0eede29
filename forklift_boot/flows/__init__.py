"""The flows: cache-img and load-img, orchestrated over the ImageSource / ImageTarget protocols.

They see the backends only through those protocols (``forklift_boot.images``); the CLI composes
the real sources and targets.
"""

from forklift_boot.flows.cache_images import FallbackSource, cache_images
from forklift_boot.flows.load_images import load_images

__all__ = ["FallbackSource", "cache_images", "load_images"]
