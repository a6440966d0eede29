"""Which platform a command works for: ``--platform``, else the image's or this machine's."""

from __future__ import annotations

import platform as pyplatform

from forklift_boot.cache import CachedImage
from forklift_boot.config import Settings, dpkg_architecture
from forklift_boot.errors import UsageError
from forklift_boot.platforms import default_platform, format_platform


def host_platform(settings: Settings) -> str:
    """``--platform``/``FORKLIFT_PLATFORM``, else dpkg's architecture, else the machine's."""
    if settings.platform:
        try:
            return format_platform(settings.platform)
        except ValueError as err:
            raise UsageError(f"--platform: {err}") from err
    return default_platform(None, dpkg_architecture(), pyplatform.machine())


def entry_platform(settings: Settings, entry: CachedImage) -> str:
    """The platform to take from a cached image index: ``--platform``, else the one it was
    cached for, else this machine's (as ``host_platform``)."""
    if settings.platform or not entry.platform:
        return host_platform(settings)
    return entry.platform
