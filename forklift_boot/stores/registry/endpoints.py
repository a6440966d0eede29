"""Where a repository is served: Docker's name mapping, loopback registries, Hub's mirrors."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from forklift_boot.refs import ImageRef

__all__ = [
    "DOCKER_HUB_DOMAIN",
    "DOCKER_HUB_REGISTRY",
    "Endpoint",
    "endpoints_for",
    "is_loopback_host",
    "mirror_base_url",
    "registry_base_url",
    "registry_host",
]

DOCKER_HUB_DOMAIN = "docker.io"
DOCKER_HUB_REGISTRY = "registry-1.docker.io"


def registry_host(domain: str) -> str:
    """The host that serves a reference's domain: Docker Hub's API is not at docker.io."""
    return DOCKER_HUB_REGISTRY if domain in (DOCKER_HUB_DOMAIN, "index.docker.io") else domain


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address, with or without a port (``[::1]:5000`` too)."""
    name = host.strip().lower()
    if name.startswith("["):
        name = name[1:].partition("]")[0]
    elif name.count(":") == 1:
        name = name.partition(":")[0]
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def registry_base_url(host: str) -> str:
    """HTTP for a loopback registry (Docker's insecure-by-default 127.0.0.0/8), else HTTPS."""
    return f"{'http' if is_loopback_host(host) else 'https'}://{host}"


def mirror_base_url(url: str) -> str:
    """A ``--registry-mirror`` value as a base URL; ValueError if it is not one."""
    text = url.strip()
    if "://" not in text:
        text = registry_base_url(text.rstrip("/"))
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"invalid registry mirror {url!r}: expected http(s)://host[:port]")
    if parts.query or parts.fragment or "@" in parts.netloc:
        raise ValueError(
            f"invalid registry mirror {url!r}: no credentials, query or fragment in the URL "
            "(credentials go in Docker's config.json)"
        )
    return text.rstrip("/")


@dataclass(frozen=True)
class Endpoint:
    """Where a repository is served: its registry, or a mirror of Docker Hub."""

    base_url: str
    credentials_host: str  # whose credentials apply: docker.io for Docker Hub, else the host
    is_mirror: bool = False

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc


def endpoints_for(ref: ImageRef, mirrors: Sequence[str] = ()) -> list[Endpoint]:
    """Docker Hub's mirrors first (as dockerd tries them), then the reference's registry."""
    domain = ref.domain or DOCKER_HUB_DOMAIN
    origin = Endpoint(registry_base_url(registry_host(domain)), domain)
    if domain != DOCKER_HUB_DOMAIN:
        return [origin]
    # A mirror gets its own credentials, never Docker Hub's.
    found = [Endpoint(base, urlsplit(base).netloc, is_mirror=True) for base in mirrors]
    return [*found, origin]
