"""The distribution API's vocabulary as `cache serve` speaks it: errors, names, digests, byte
ranges and pages."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from forklift_boot.errors import ImageRefError
from forklift_boot.refs import (
    NAME_TOTAL_LENGTH_MAX,
    REGISTRY_HOST_RE,
    REPOSITORY_RE,
    host_path_component,
    parse_image_ref,
    path_component_host,
)

__all__ = [
    "API_VERSION_HEADER",
    "DIGEST_RE",
    "ApiError",
    "RangeNotSatisfiableError",
    "blob_unknown",
    "catalog_name",
    "check_digest",
    "manifest_unknown",
    "next_page_link",
    "paginate",
    "parse_byte_range",
    "repository_name",
    "single_param",
]

API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")

# The cache stores sha256 blobs only; a digest is checked before it names anything.
DIGEST_RE = re.compile(r"sha256:[a-f0-9]{64}")
_DOCKER_HUB = "docker.io"
# containerd sends the registry's host as written in the ref; Docker Hub has several spellings.
_DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
_RANGE_RE = re.compile(r"bytes=([0-9]*)-([0-9]*)")
_COUNT_RE = re.compile(r"[0-9]{1,9}")  # ASCII digits only: int() also reads "٣"


class ApiError(Exception):
    """A registry API error: its HTTP status and the JSON error body's code and message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = dict(detail or {})
        self.headers = dict(headers or {})

    def body(self) -> bytes:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail:
            error["detail"] = self.detail
        return json.dumps({"errors": [error]}).encode()


class RangeNotSatisfiableError(Exception):
    """A Range header that is malformed or asks for bytes past the end (HTTP 416)."""


# Names


def repository_name(name: str, namespace: str | None = None) -> str:
    """The canonical repository (``docker.io/library/alpha``) that a request's name means.

    Without ``namespace`` the name is read by Docker's rules, so ``library/alpha`` and ``alpha``
    are Docker Hub's, and ``ghcr.io/x/y`` is ghcr.io's; a first component ``HOST_PORT`` stands
    for ``HOST:PORT`` (``127.0.0.1_5000/x``, as `cache push` names it: a repository name can't
    hold a ``:``). ``namespace`` is the registry host that containerd adds as ``?ns=`` when it
    asks a mirror; then the name is the path in that registry. ApiError NAME_INVALID when the
    name or namespace is not one.
    """
    # distribution/reference's path grammar: components start and end with [a-z0-9], so no
    # "..", no "%", no empty component can get through.
    if len(name) > NAME_TOTAL_LENGTH_MAX or REPOSITORY_RE.fullmatch(name) is None:
        raise _name_invalid(name)
    if namespace is not None:
        if REGISTRY_HOST_RE.fullmatch(namespace) is None:
            raise ApiError(
                400, "NAME_INVALID", "invalid ns parameter: not a registry host", {"ns": namespace}
            )
        host = _DOCKER_HUB if namespace.lower() in _DOCKER_HUB_ALIASES else namespace
        path = f"library/{name}" if host == _DOCKER_HUB and "/" not in name else name
        return f"{host}/{path}"
    first, _, rest = name.partition("/")
    text = name
    if rest and (host_port := path_component_host(first)) is not None:
        text = f"{host_port}/{rest}"
    try:
        return parse_image_ref(text).name
    except ImageRefError as err:
        raise _name_invalid(name) from err


def catalog_name(repository: str, namespace: str | None = None) -> str | None:
    """How a client names ``repository`` (canonical) in a request, or None if it can't.

    Docker Hub's repositories go by their path (``library/alpha``), others by host and path
    (``ghcr.io/x/y``, ``127.0.0.1_5000/x``); an IPv6 host has no such form. With ``namespace``,
    only that registry's repositories, by path.
    """
    host, _, path = repository.partition("/")
    if namespace is not None:
        wanted = _DOCKER_HUB if namespace.lower() in _DOCKER_HUB_ALIASES else namespace
        return path if host == wanted else None
    if host == _DOCKER_HUB:
        name = path
    elif (component := host_path_component(host)) is not None:
        name = f"{component}/{path}"
    else:
        return None
    try:
        return name if repository_name(name) == repository else None
    except ApiError:
        return None


def _name_invalid(name: str) -> ApiError:
    return ApiError(400, "NAME_INVALID", "invalid repository name", {"name": name})


# Ranges


def parse_byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The one byte range (first, last; inclusive) that a Range header asks for, or None to
    send the whole blob.

    Other units and lists of ranges are ignored, which RFC 9110 allows (the whole blob is the
    answer); a malformed or unsatisfiable ``bytes=`` range raises RangeNotSatisfiableError, as
    Go's http.ServeContent (and so distribution's registry) answers it.
    """
    if header is None:
        return None
    text = header.strip()
    if not text.startswith("bytes=") or "," in text:
        return None
    match = _RANGE_RE.fullmatch(text.replace(" ", ""))
    if match is None or match[1] == match[2] == "":
        raise RangeNotSatisfiableError(header)
    if match[1] == "":
        # A suffix: the last N bytes.
        count = int(match[2])
        if count == 0 or size == 0:
            raise RangeNotSatisfiableError(header)
        return max(size - count, 0), size - 1
    first = int(match[1])
    last = int(match[2]) if match[2] else size - 1
    if first > last or first >= size:
        raise RangeNotSatisfiableError(header)
    return first, min(last, size - 1)


# Requests and answers


def single_param(params: dict[str, list[str]], key: str) -> str | None:
    values = params.get(key)
    return values[0] if values else None


def check_digest(text: str) -> str:
    if DIGEST_RE.fullmatch(text) is None:
        raise ApiError(
            400,
            "DIGEST_INVALID",
            "invalid digest: the image cache serves sha256:<64 lowercase hex digits> only",
            {"digest": text},
        )
    return text


def manifest_unknown(name: str, reference: str) -> ApiError:
    return ApiError(
        404,
        "MANIFEST_UNKNOWN",
        "manifest unknown",
        {"name": name, "reference": reference},
    )


def blob_unknown(digest: str) -> ApiError:
    return ApiError(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})


def paginate(
    items: list[str], params: dict[str, list[str]]
) -> tuple[list[str], dict[str, str] | None]:
    """One page of sorted ``items`` after ``last``, at most ``n``; and the next page's query
    parameters if there are more."""
    last = single_param(params, "last")
    if last is not None:
        items = [item for item in items if item > last]
    count_text = single_param(params, "n")
    if count_text is None:
        return items, None
    if _COUNT_RE.fullmatch(count_text) is None:
        raise ApiError(
            400,
            "PAGINATION_NUMBER_INVALID",
            "invalid number of results requested",
            {"n": count_text},
        )
    count = int(count_text)
    page = items[:count]
    if len(items) <= count or not page:
        return page, None
    next_params = {"n": str(count), "last": page[-1]}
    namespace = single_param(params, "ns")
    if namespace is not None:
        next_params["ns"] = namespace
    return page, next_params


def next_page_link(path: str, next_params: dict[str, str] | None) -> dict[str, str]:
    if next_params is None:
        return {}
    return {"Link": f'<{quote(path)}?{urlencode(next_params)}>; rel="next"'}
