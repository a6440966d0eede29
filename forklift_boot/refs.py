"""Parse image references exactly as Docker's distribution/reference v0.6.0 does."""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

from forklift_boot.errors import ImageRefError

__all__ = [
    "NAME_TOTAL_LENGTH_MAX",
    "PATH_COMPONENT_RE",
    "REGISTRY_HOST_RE",
    "REPOSITORY_RE",
    "TAG_RE",
    "ImageRef",
    "host_path_component",
    "is_image_id",
    "parse_image_ref",
    "path_component_host",
]

# --- Grammar pieces, named as in distribution/reference's regexp.go -------------------

_ALPHANUMERIC = r"[a-z0-9]+"
# One period, one or two underscores, or any number of dashes.
_SEPARATOR = r"(?:[._]|__|[-]+)"
_DOMAIN_NAME_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_OPTIONAL_PORT = r"(?::[0-9]+)?"
# Go's \w is ASCII-only; the patterns are compiled with re.ASCII to match it.
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*[:][0-9a-fA-F]{32,}"
_IDENTIFIER = r"[a-f0-9]{64}"
# Bracketed IPv6 only; zone identifiers and IPv4-mapped forms are deliberately excluded.
_IPV6_ADDRESS = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_NAME = rf"{_DOMAIN_NAME_COMPONENT}(?:\.{_DOMAIN_NAME_COMPONENT})*"
_HOST = rf"(?:{_DOMAIN_NAME}|{_IPV6_ADDRESS})"
_DOMAIN_AND_PORT = _HOST + _OPTIONAL_PORT
_PATH_COMPONENT = rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_NAME = rf"(?:{_DOMAIN_AND_PORT}/)?{_REMOTE_NAME}"

# Always used with fullmatch: Python's "$" would also accept a trailing newline.
_REFERENCE_RE = re.compile(
    rf"(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?", re.ASCII
)
_ANCHORED_NAME_RE = re.compile(
    rf"(?:(?P<domain>{_DOMAIN_AND_PORT})/)?(?P<path>{_REMOTE_NAME})", re.ASCII
)
_IDENTIFIER_RE = re.compile(_IDENTIFIER)
_IMAGE_ID_RE = re.compile(rf"(?:sha256:)?{_IDENTIFIER}")

# go-digest v1.0.0 validates the digest after the grammar has matched it.
_GO_DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
# The algorithms Docker links in, with their hex-encoded lengths.
_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}

_DEFAULT_DOMAIN = "docker.io"
_LEGACY_DEFAULT_DOMAIN = "index.docker.io"
_OFFICIAL_REPO_PREFIX = "library/"
_DEFAULT_TAG = "latest"

# The grammar's pieces for the registry code (cache serve, cache push); fullmatch only.
PATH_COMPONENT_RE = re.compile(_PATH_COMPONENT, re.ASCII)
# A repository path, without its registry: ``library/alpha``, ``fbtest/delta``.
REPOSITORY_RE = re.compile(_REMOTE_NAME, re.ASCII)
TAG_RE = re.compile(_TAG, re.ASCII)
# ``HOST[:PORT]``: a domain name, an IPv4 address or a bracketed IPv6 address.
REGISTRY_HOST_RE = re.compile(_DOMAIN_AND_PORT, re.ASCII)
# The longest repository name, in characters.
NAME_TOTAL_LENGTH_MAX = 255

# A registry host with a port as one repository-name component, where ":" can't be:
# ``127.0.0.1_5000``; "_" is in no host name. As in Docker's rule for a first component, the
# host needs a dot or to be localhost; anything else is a path (``app_1``).
_HOST_PORT_COMPONENT_RE = re.compile(
    r"(?P<host>[a-z0-9-]+(?:\.[a-z0-9-]+)+|localhost)_(?P<port>[0-9]+)", re.ASCII
)


@dataclass(frozen=True)
class ImageRef:
    """A parsed, normalised image reference (Docker's ``ParseNormalizedNamed``)."""

    written: str
    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """The canonical repository, e.g. ``docker.io/library/nginx``."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    @property
    def familiar_name(self) -> str:
        """The repository as Docker shows it, e.g. ``nginx`` or ``someone/app``."""
        if self.domain != _DEFAULT_DOMAIN:
            return self.name
        short = self.path.removeprefix(_OFFICIAL_REPO_PREFIX)
        # Only a single component under library/ is an official image.
        return self.path if "/" in short else short

    @property
    def canonical(self) -> str:
        """``name[:tag][@digest]``."""
        return self._with_suffixes(self.name)

    @property
    def familiar(self) -> str:
        """``familiar_name[:tag][@digest]`` (Docker's ``FamiliarString``)."""
        return self._with_suffixes(self.familiar_name)

    @property
    def is_name_only(self) -> bool:
        """Whether the reference has neither a tag nor a digest."""
        return self.tag is None and self.digest is None

    @property
    def tagged(self) -> str | None:
        """``name:tag``, or None without a tag."""
        return f"{self.name}:{self.tag}" if self.tag is not None else None

    @property
    def digested(self) -> str | None:
        """``name@digest``, or None without a digest."""
        return f"{self.name}@{self.digest}" if self.digest is not None else None

    def with_default_tag(self) -> ImageRef:
        """Tag a name-only reference ``latest`` (Docker's ``TagNameOnly``)."""
        if not self.is_name_only:
            return self
        return dataclasses.replace(self, tag=_DEFAULT_TAG)

    def _with_suffixes(self, name: str) -> str:
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return name + tag + digest


def parse_image_ref(text: str) -> ImageRef:
    """Parse and normalise ``text``; raise ImageRefError if Docker would refuse it."""
    if text == "":
        raise _invalid(text, "repository name must have at least one component")
    # A bare 64-hex string is an image ID; Docker refuses to read it as a name.
    if _IDENTIFIER_RE.fullmatch(text):
        raise _invalid(text, "cannot specify 64-byte hexadecimal strings")

    domain, remainder = _split_docker_domain(text)
    # Docker checks case up to the first ":", so without a tag the digest
    # algorithm is checked too ("nginx@SHA256:..." is a lowercase error).
    remote = remainder.partition(":")[0]
    if remote.lower() != remote:
        raise _invalid(text, "repository name must be lowercase")

    full = f"{domain}/{remainder}"
    match = _REFERENCE_RE.fullmatch(full)
    if match is None:
        if _REFERENCE_RE.fullmatch(full.lower()):
            raise _invalid(text, "repository name must be lowercase")
        raise _invalid(text, "invalid reference format")

    # Re-split with the grammar: a first component that looked like a domain but
    # is not one (e.g. "foo_bar.com") becomes part of the path, with no domain.
    name = _ANCHORED_NAME_RE.fullmatch(match["name"])
    assert name is not None  # the reference grammar embeds the name grammar
    if len(name["path"]) > NAME_TOTAL_LENGTH_MAX:
        raise _invalid(
            text,
            f"repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters",
        )

    digest: str | None = match["digest"]
    if digest is not None:
        problem = _digest_problem(digest)
        if problem is not None:
            raise _invalid(text, problem)

    return ImageRef(
        written=text,
        domain=name["domain"] or "",
        path=name["path"],
        tag=match["tag"],
        digest=digest,
    )


def is_image_id(text: str) -> bool:
    """Whether ``text`` is an image ID: ``sha256:<64 hex>`` or bare 64 hex."""
    return _IMAGE_ID_RE.fullmatch(text) is not None


def host_path_component(host: str) -> str | None:
    """A registry host as a repository-name component, as `cache push` names it and `cache
    serve` reads it back (``path_component_host``): ``127.0.0.1:5000`` -> ``127.0.0.1_5000``,
    ``ghcr.io`` -> ``ghcr.io``; None for an IPv6 address, which has no such form."""
    if host.startswith("["):
        return None
    return host.lower().replace(":", "_")


def path_component_host(component: str) -> str | None:
    """The ``HOST:PORT`` that a first repository-name component ``HOST_PORT`` stands for
    (``127.0.0.1_5000`` -> ``127.0.0.1:5000``), or None if the component is not one: it
    is then read as it is (``ghcr.io``, ``library``)."""
    match = _HOST_PORT_COMPONENT_RE.fullmatch(component)
    return f"{match['host']}:{match['port']}" if match else None


def _split_docker_domain(text: str) -> tuple[str, str]:
    """Split off the registry domain, else Docker Hub (``splitDockerDomain``)."""
    first, slash, rest = text.partition("/")
    if not slash:
        # A single component is always an official image, even "localhost:5000",
        # which reads as image "localhost" with tag "5000".
        return _DEFAULT_DOMAIN, _OFFICIAL_REPO_PREFIX + text
    if first == "localhost":
        domain, remote = first, rest
    elif first == _LEGACY_DEFAULT_DOMAIN:
        domain, remote = _DEFAULT_DOMAIN, rest
    elif "." in first or ":" in first or first.lower() != first:
        # Looks like a host name, IP address or host:port; uppercase is never
        # allowed in a path, so an uppercase first component must be a host.
        domain, remote = first, rest
    else:
        domain, remote = _DEFAULT_DOMAIN, text
    if domain == _DEFAULT_DOMAIN and "/" not in remote:
        remote = _OFFICIAL_REPO_PREFIX + remote
    return domain, remote


def _digest_problem(digest: str) -> str | None:
    """Why go-digest would reject ``digest``, or None if it is valid."""
    algorithm, _, encoded = digest.partition(":")
    length = _HEX_LENGTHS.get(algorithm)
    if length is None:
        if _GO_DIGEST_RE.fullmatch(digest) is None:
            return "invalid checksum digest format"
        return "unsupported digest algorithm"
    if len(encoded) != length:
        return "invalid checksum digest length"
    if re.fullmatch(r"[a-f0-9]+", encoded) is None:
        return "invalid checksum digest format"
    return None


def _invalid(text: str, reason: str) -> ImageRefError:
    # JSON quoting keeps whitespace and control characters visible, like Go's %q.
    return ImageRefError(
        f"invalid image reference {json.dumps(text, ensure_ascii=False)}: {reason}"
    )
