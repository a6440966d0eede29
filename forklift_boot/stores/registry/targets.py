"""Where cached images go on a registry: ``REGISTRY[/PREFIX]`` targets and the names under them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from forklift_boot.errors import RegistryError
from forklift_boot.refs import (
    NAME_TOTAL_LENGTH_MAX,
    PATH_COMPONENT_RE,
    REGISTRY_HOST_RE,
    ImageRef,
    host_path_component,
)
from forklift_boot.stores.registry.endpoints import (
    DOCKER_HUB_DOMAIN,
    Endpoint,
    is_loopback_host,
    registry_host,
)

__all__ = ["PushTarget", "parse_push_target", "parse_size"]

_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


@dataclass(frozen=True)
class PushTarget:
    """A registry and the repository prefix that cached images go under."""

    endpoint: Endpoint
    prefix: str  # "" or "fleet/images": path components without slashes at either end

    @property
    def display(self) -> str:
        """``host[/prefix]``, as the user wrote it (without a scheme)."""
        return f"{self.endpoint.host}/{self.prefix}" if self.prefix else self.endpoint.host

    def repository_for(self, ref: ImageRef) -> str:
        """Where an image goes: ``PREFIX/<its registry>/<its repository>``.

        The source registry stays in the name, as ``skopeo sync --scoped`` keeps it and as
        Harbor keeps one proxy-cache project per upstream registry: a cache holds images of
        several registries, and ``docker.io/acme/app`` and ``ghcr.io/acme/app`` are
        different images. A port's ``:`` (not allowed in a repository name) becomes ``_``,
        which no host name contains: ``127.0.0.1:5000`` -> ``127.0.0.1_5000``.
        """
        host = host_path_component(ref.domain or DOCKER_HUB_DOMAIN)
        if host is None:
            raise RegistryError(
                f"couldn't name {ref.name} on {self.display}: an IPv6 registry address has no "
                "form allowed in a repository name; cache it under a host name"
            )
        path = "/".join(part for part in (self.prefix, host, ref.path) if part)
        # distribution/reference: the whole name, registry host included, is at most this long.
        if len(self.endpoint.host) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
            raise RegistryError(
                f"couldn't name {ref.name} on {self.display}: {self.endpoint.host}/{path} is "
                f"longer than the {NAME_TOTAL_LENGTH_MAX} characters a reference may have; "
                "choose a shorter prefix"
            )
        return path


def parse_push_target(text: str, *, plain_http: bool = False) -> PushTarget:
    """``REGISTRY[/PREFIX]``, or ``http(s)://REGISTRY[/PREFIX]`` like ``--registry-mirror``.

    HTTPS unless the URL says ``http://``, ``plain_http`` is set, or the registry is on a
    loopback address (Docker's insecure-by-default ``127.0.0.0/8``, as for pulling).
    ValueError says what is wrong.
    """
    given = text.strip()
    scheme = None
    if "://" in given:
        parts = urlsplit(given)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(
                f"invalid registry {text!r}: expected [http(s)://]HOST[:PORT][/PREFIX]"
            )
        if parts.query or parts.fragment or "@" in parts.netloc:
            raise ValueError(
                f"invalid registry {text!r}: no credentials, query or fragment in it "
                "(credentials go in Docker's config.json: `docker login`)"
            )
        scheme, host, prefix = parts.scheme, parts.netloc, parts.path
    else:
        host, _, prefix = given.partition("/")
    if not host or REGISTRY_HOST_RE.fullmatch(host) is None:
        raise ValueError(f"invalid registry {text!r}: {host!r} is not a HOST[:PORT]")
    host = host.lower()  # host names are case-insensitive; repository names are lowercase
    prefix = prefix.strip("/")
    for component in prefix.split("/") if prefix else []:
        if PATH_COMPONENT_RE.fullmatch(component) is None:
            raise ValueError(
                f"invalid repository prefix {prefix!r} in {text!r}: {component!r} is not a "
                "repository name component (lowercase letters, digits, and . _ - between them)"
            )
    if plain_http:
        if scheme == "https":
            raise ValueError(f"--plain-http contradicts the https:// of {text!r}")
        scheme = "http"
    if scheme is None:
        scheme = "http" if is_loopback_host(host) else "https"
    endpoint = Endpoint(f"{scheme}://{registry_host(host)}", host)
    return PushTarget(endpoint, prefix)


def parse_size(text: str) -> int:
    """``16M``, ``512k``, ``1G``, ``1048576`` (bytes; binary units); ValueError otherwise."""
    match = re.fullmatch(r"\s*([0-9]+)\s*([kmgKMG]?)(?:i?[bB])?\s*", text)
    if match is None:
        raise ValueError(f"invalid size {text!r}: expected a number of bytes, e.g. 16M")
    size = int(match[1]) * _SIZE_UNITS[match[2].lower()]
    if size < 1:
        raise ValueError(f"invalid size {text!r}: expected at least 1 byte")
    return size
