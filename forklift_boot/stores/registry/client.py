"""The OCI distribution API over requests: the only module that talks to registries.

Manifests (Docker schema 2 and OCI, image indexes) and blobs, with Docker's name mapping
(``docker.io`` is ``registry-1.docker.io``), registry mirrors for Docker Hub, anonymous, bearer
and basic auth, retries with exponential backoff and jitter that honour ``Retry-After``, and
blob downloads that resume with ``Range`` after a cut and are verified before they are kept.
Secrets (passwords, tokens) never reach a log line or an exception message.
"""

from __future__ import annotations

import email.utils
import hashlib
import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import requests
import urllib3

from forklift_boot import __version__
from forklift_boot.cache import (
    BUFFER_SIZE,
    INDEX_MEDIA_TYPES,
    MAX_JSON_BLOB_SIZE,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    BlobWriter,
    Descriptor,
    StoredBlob,
)
from forklift_boot.cache.json_limits import load_json
from forklift_boot.errors import RegistryError
from forklift_boot.refs import ImageRef
from forklift_boot.stores.registry.auth import Challenge, CredentialStore, parse_www_authenticate

__all__ = [
    "DOCKER_HUB_REGISTRY",
    "MANIFEST_ACCEPT",
    "BlobSink",
    "Endpoint",
    "Manifest",
    "ManifestHead",
    "RegistryAccessError",
    "RegistryClient",
    "RegistryConnectionError",
    "Repository",
    "RetryPolicy",
    "endpoints_for",
    "is_loopback_host",
    "mirror_base_url",
    "parse_retry_after",
    "registry_base_url",
    "registry_host",
]

log = logging.getLogger(__name__)

DOCKER_HUB_DOMAIN = "docker.io"
DOCKER_HUB_REGISTRY = "registry-1.docker.io"
USER_AGENT = f"forklift-boot/{__version__}"

# Indexes first: a registry that has one for a tag serves it, and we pick the platform.
MANIFEST_ACCEPT = ", ".join(
    [MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST_LIST, MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST]
)
_DEFAULT_MANIFEST_TYPES = {"application/json", "text/plain", "application/octet-stream", ""}
# (connect, read) in seconds; a read timeout is a stalled stream, resumed like a cut.
TIMEOUT = (30.0, 60.0)
_HTTP_RETRY_STATUSES = frozenset({408, 425, 429})


# Pure parts: names, URLs, retry delays


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per request (and per blob without progress), and how long to wait between."""

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0
    # A Retry-After longer than this is not waited for: the error says when to come back.
    max_retry_after: float = 300.0
    # A mirror that fails is left for the next endpoint sooner.
    mirror_attempts: int = 2

    def backoff(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Exponential backoff with jitter: half the capped delay plus a random half."""
        delay = min(self.max_delay, self.base_delay * 2.0 ** max(attempt - 1, 0))
        return delay / 2 + rand() * delay / 2


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), None if absent
    or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:  # Python before 3.10 returned None for garbage
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


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


# What the registry serves


@dataclass(frozen=True)
class ManifestHead:
    digest: str | None
    media_type: str
    size: int | None


@dataclass(frozen=True)
class Manifest:
    """A manifest or image index exactly as the registry served it."""

    data: bytes = field(repr=False)
    media_type: str
    digest: str

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_MEDIA_TYPES

    def document(self) -> dict[str, Any]:
        """The parsed JSON object; RegistryError if it is not one."""
        try:
            document = load_json(self.data)
        except ValueError as err:
            raise RegistryError(f"the manifest {self.digest} is not valid JSON ({err})") from err
        if not isinstance(document, dict):
            raise RegistryError(f"the manifest {self.digest} is not a JSON object")
        return document

    def descriptor(self, platform: dict[str, Any] | None = None) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, platform=platform)


def manifest_media_type(content_type: str | None, data: bytes) -> str:
    """The served Content-Type, else the document's own ``mediaType``, else its shape."""
    served = (content_type or "").split(";", 1)[0].strip().lower()
    if served not in _DEFAULT_MANIFEST_TYPES:
        return served
    try:
        document = load_json(data)
    except ValueError:
        return served
    if isinstance(document, dict):
        declared = document.get("mediaType")
        if isinstance(declared, str) and declared:
            return declared
        if "manifests" in document:
            return MEDIA_OCI_INDEX
        if "config" in document:
            return MEDIA_OCI_MANIFEST
    return served


class RegistryAccessError(RegistryError):
    """The registry refused our credentials, or needs some (HTTP 401/403)."""


class RegistryConnectionError(RegistryError):
    """The registry (or its token service) can't be reached: refused, timed out, TLS."""


@dataclass(frozen=True)
class _AuthKey:
    """The access a token was asked for: tokens are scoped, basic credentials are not."""

    base_url: str
    repository: str
    push: bool = False
    mount_from: str | None = None

    def scopes(self, challenged: str | None) -> list[str]:
        """Pulling takes the scope the registry named in its challenge; pushing asks for
        pull and push, and pull on the repository a blob is mounted from (as Docker does)."""
        if not self.push:
            return [challenged or f"repository:{self.repository}:pull"]
        scopes = [f"repository:{self.repository}:pull,push"]
        if self.mount_from is not None and self.mount_from != self.repository:
            scopes.append(f"repository:{self.mount_from}:pull")
        return scopes


class BlobSink(Protocol):
    """Where downloaded blobs go: the cache's writer (``CacheWriter.blob_writer``)."""

    def blob_writer(self) -> AbstractContextManager[BlobWriter]: ...


# The client


class RegistryClient:
    """Sessions, credentials, tokens and the retry policy shared by every repository."""

    def __init__(
        self,
        *,
        mirrors: Sequence[str] = (),
        credentials: CredentialStore | None = None,
        retry: RetryPolicy | None = None,
        offline: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.mirrors = [mirror_base_url(mirror) for mirror in mirrors]
        self.credentials = credentials or CredentialStore(None)
        self.retry = retry or RetryPolicy()
        self.offline = offline
        self._sleep = sleep
        self._rand = rand
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        # Authorization header values (never logged): per access asked for, and basic auth's
        # per registry.
        self._auth: dict[_AuthKey, str] = {}
        self._basic: dict[str, str] = {}

    def repository(self, ref: ImageRef) -> Repository:
        return Repository(self, ref)

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    # --- HTTP with auth and retries -----------------------------------------------------

    def _session(self, endpoint: Endpoint) -> requests.Session:
        """One session per thread (requests' sessions are not thread-safe); loopback ones
        ignore proxy variables, as a registry on 127.0.0.1 is never behind a proxy."""
        key = "loopback" if is_loopback_host(endpoint.host) else "remote"
        sessions: dict[str, requests.Session] = getattr(self._local, "sessions", {})
        self._local.sessions = sessions
        if key not in sessions:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            session.trust_env = key == "remote"
            sessions[key] = session
            with self._lock:
                self._sessions.append(session)
        return sessions[key]

    def request(
        self,
        endpoint: Endpoint,
        repository: str,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        what: str,
        url: str | None = None,
        params: Mapping[str, str] | None = None,
        body: bytes | Iterable[bytes] | None = None,
        push: bool = False,
        mount_from: str | None = None,
    ) -> requests.Response:
        """One request to ``endpoint``: authenticates on a 401 challenge, retries 429, 5xx and
        dropped connections with backoff, honouring Retry-After. The body streams; callers
        close the response. 4xx other than 401/429 are returned to the caller.

        ``url`` replaces ``path`` (an upload's ``Location``); ``body`` is sent again from its
        start on a retry, so an iterable must be iterable afresh. ``push`` asks for
        ``pull,push`` access to ``repository``, and ``mount_from`` also for pulling from the
        repository a blob is mounted from.
        """
        at = f"{'on' if push else 'from'} {endpoint.host}"
        if self.offline:
            raise RegistryError(
                f"couldn't {what} {at}: --offline forbids network access; "
                "cache it from Docker (--from docker) or run without --offline"
            )
        if url is None:
            url = (
                f"{endpoint.base_url}/v2/{repository}/{path}"
                if path
                else f"{endpoint.base_url}/v2/"
            )
        # Our credentials go to the registry only, never to another host an upload names.
        is_own = urlsplit(url).netloc == endpoint.host
        key = _AuthKey(endpoint.base_url, repository, push, mount_from)
        attempts = self.retry.mirror_attempts if endpoint.is_mirror else self.retry.attempts
        attempt = 0
        authenticated = False
        while True:
            attempt += 1
            sent = dict(headers or {})
            authorization = self._auth.get(key) or self._basic.get(endpoint.base_url)
            if authorization is not None and is_own:
                sent["Authorization"] = authorization
            try:
                response = self._session(endpoint).request(
                    method,
                    url,
                    headers=sent,
                    params=params,
                    data=body,
                    stream=True,
                    timeout=TIMEOUT,
                    # A redirected upload would need its body again: uploads never follow.
                    allow_redirects=method in ("GET", "HEAD"),
                )
            except requests.exceptions.SSLError as err:
                raise RegistryConnectionError(
                    f"couldn't {what} {at}: TLS failed ({_reason(err)}); check "
                    "the registry's certificate and the system's CA certificates"
                    + (" (or --plain-http for a registry that speaks plain HTTP)" if push else "")
                ) from err
            except (
                requests.exceptions.ConnectionError,
                requests.exceptions.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as err:
                if attempt >= attempts:
                    raise RegistryConnectionError(
                        f"couldn't {what} {at}: {_reason(err)} ({attempt} "
                        "attempts); check the network and the registry's address"
                    ) from err
                self._wait(self.retry.backoff(attempt, self._rand), at, what, _reason(err))
                continue
            except requests.exceptions.RequestException as err:
                raise RegistryError(f"couldn't {what} {at}: {_reason(err)}") from err
            status = response.status_code
            log.debug("%s %s -> %d", method, url, status)
            if status == 401 and not authenticated:
                challenges = parse_www_authenticate(response.headers.get("WWW-Authenticate", ""))
                response.close()
                self._auth.pop(key, None)
                self._authenticate(endpoint, key, challenges, what, at)
                authenticated = True
                attempt -= 1  # logging in is not a failed attempt
                continue
            if status in _HTTP_RETRY_STATUSES or 500 <= status <= 599:
                retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
                response.close()
                problem = f"HTTP {status}" + (", too many requests" if status == 429 else "")
                if retry_after is not None and retry_after > self.retry.max_retry_after:
                    raise RegistryError(
                        f"couldn't {what} {at}: {problem}, and it asks to wait "
                        f"{retry_after:.0f} s; try again later (Docker Hub: log in for a higher "
                        "rate limit, or use --registry-mirror)"
                    )
                if attempt >= attempts:
                    raise RegistryError(
                        f"couldn't {what} {at}: {problem} {attempt} times; try again later"
                    )
                delay = (
                    retry_after
                    if retry_after is not None
                    else self.retry.backoff(attempt, self._rand)
                )
                self._wait(delay, at, what, problem)
                continue
            if status in (401, 403):
                response.close()
                if push:
                    credentials = self.credentials.lookup(endpoint.credentials_host)
                    whose = "anonymous access"
                    if credentials is not None:
                        whose = f"the credentials from {credentials.source}"
                    raise RegistryAccessError(
                        f"couldn't {what} {at}: access denied (HTTP {status}) to {whose}; log "
                        f"in with `docker login {endpoint.credentials_host}` as a user who may "
                        f"push to {repository} (forklift-boot reads Docker's config.json)"
                    )
                raise RegistryAccessError(
                    f"couldn't {what} {at}: access denied (HTTP {status}); the "
                    "repository doesn't exist or needs credentials: log in with `docker login "
                    f"{endpoint.credentials_host}` (forklift-boot reads Docker's config.json)"
                )
            return response

    def pause(self, attempt: int) -> None:
        """Sleeps the backoff delay after the ``attempt``-th failure."""
        self._sleep(self.retry.backoff(attempt, self._rand))

    def _wait(self, delay: float, at: str, what: str, problem: str) -> None:
        log.warning("couldn't %s %s (%s); trying again in %.1f s", what, at, problem, delay)
        self._sleep(delay)

    def _authenticate(
        self,
        endpoint: Endpoint,
        key: _AuthKey,
        challenges: Sequence[Challenge],
        what: str,
        at: str,
    ) -> None:
        credentials = self.credentials.lookup(endpoint.credentials_host)
        by_scheme = {challenge.scheme: challenge for challenge in challenges}
        if "bearer" in by_scheme:
            token = self._fetch_token(endpoint, key, by_scheme["bearer"], what, at)
            self._auth[key] = f"Bearer {token}"
            return
        if "basic" in by_scheme:
            if credentials is None or credentials.is_identity_token:
                raise RegistryAccessError(
                    f"couldn't {what} {at}: it needs a user name and password; "
                    f"log in with `docker login {endpoint.credentials_host}` (forklift-boot "
                    "reads Docker's config.json and credential helpers)"
                )
            # The same for every repository of the registry: no challenge per repository.
            self._basic[endpoint.base_url] = self._auth[key] = credentials.basic_header()
            return
        schemes = ", ".join(sorted(by_scheme)) or "none"
        raise RegistryError(
            f"couldn't {what} {at}: it asks for authentication that "
            f"forklift-boot doesn't speak (WWW-Authenticate schemes: {schemes})"
        )

    def _fetch_token(
        self, endpoint: Endpoint, key: _AuthKey, challenge: Challenge, what: str, at: str
    ) -> str:
        """A bearer token from the challenge's realm, for pulling ``key.repository``, or for
        pulling and pushing it (and pulling the repository a blob is mounted from)."""
        realm = challenge.params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RegistryError(f"couldn't {what} {at}: its token realm {realm!r} is not a URL")
        params: dict[str, str | list[str]] = {"scope": key.scopes(challenge.params.get("scope"))}
        if challenge.params.get("service"):
            params["service"] = challenge.params["service"]
        credentials = self.credentials.lookup(endpoint.credentials_host)
        token_endpoint = Endpoint(f"{parts.scheme}://{parts.netloc}", endpoint.credentials_host)
        token_at = f"at {parts.netloc}"
        attempts = self.retry.attempts
        for attempt in range(1, attempts + 1):
            try:
                if credentials is not None and credentials.is_identity_token:
                    # OAuth2 refresh-token grant, as Docker does for an identity token.
                    response = self._session(token_endpoint).post(
                        realm,
                        data={
                            **params,
                            "grant_type": "refresh_token",
                            "refresh_token": credentials.secret,
                            "client_id": "forklift-boot",
                        },
                        timeout=TIMEOUT,
                    )
                else:
                    headers = {}
                    if credentials is not None:
                        headers["Authorization"] = credentials.basic_header()
                    response = self._session(token_endpoint).get(
                        realm, params=params, headers=headers, timeout=TIMEOUT
                    )
            except requests.exceptions.RequestException as err:
                if attempt >= attempts:
                    raise RegistryConnectionError(
                        f"couldn't {what} {at}: its token service "
                        f"{parts.netloc} failed ({_reason(err)})"
                    ) from err
                self._wait(self.retry.backoff(attempt, self._rand), token_at, what, "token")
                continue
            status = response.status_code
            if status == 429 or 500 <= status <= 599:
                response.close()
                if attempt >= attempts:
                    raise RegistryError(
                        f"couldn't {what} {at}: its token service "
                        f"{parts.netloc} answered HTTP {status}; try again later"
                    )
                delay = parse_retry_after(response.headers.get("Retry-After"), time.time())
                if delay is None or delay > self.retry.max_retry_after:
                    delay = self.retry.backoff(attempt, self._rand)
                self._wait(delay, token_at, what, f"token service HTTP {status}")
                continue
            break
        if status in (401, 403):
            response.close()
            whose = f"the credentials from {credentials.source}" if credentials else "anonymous"
            raise RegistryAccessError(
                f"couldn't {what} {at}: its token service refused {whose} "
                f"access (HTTP {status}); check them with `docker login "
                f"{endpoint.credentials_host}`"
            )
        if status != 200:
            response.close()
            raise RegistryError(
                f"couldn't {what} {at}: its token service {parts.netloc} answered HTTP {status}"
            )
        try:
            document = response.json()
        except ValueError as err:
            raise RegistryError(
                f"couldn't {what} {at}: its token service's answer is not JSON"
            ) from err
        finally:
            response.close()
        token = document.get("token") or document.get("access_token") if document else None
        if not isinstance(token, str) or not token or not token.isprintable() or " " in token:
            raise RegistryError(f"couldn't {what} {at}: its token service gave no usable token")
        return token


def _reason(err: BaseException) -> str:
    """A short, secret-free reason: the exception's class and the innermost cause's message."""
    inner: BaseException = err
    while inner.__context__ is not None and inner.__context__ is not inner:
        inner = inner.__context__
    text = str(inner) or type(inner).__name__
    # urllib3 messages repeat the pool's repr; keep the end, which says what happened.
    if "Caused by" in text:
        text = text.rsplit("Caused by", 1)[1].strip(" ()'\"")
    return text[:200]


_T = TypeVar("_T")


class Repository:
    """One repository on its registry, and on Docker Hub's mirrors when it is there."""

    def __init__(self, client: RegistryClient, ref: ImageRef) -> None:
        self.client = client
        self.ref = ref
        self.path = ref.path
        self.endpoints = endpoints_for(ref, client.mirrors)
        self.name = ref.name
        self._preferred: Endpoint | None = None  # the endpoint that served the manifest

    # --- manifests ----------------------------------------------------------------------

    def head_manifest(self, reference: str) -> ManifestHead | None:
        """The digest and type of a tag or digest without fetching it (Docker Hub doesn't
        count a HEAD against its pull rate limit); None if the registry doesn't have it."""

        def head(endpoint: Endpoint) -> ManifestHead | None:
            response = self.client.request(
                endpoint,
                self.path,
                "HEAD",
                f"manifests/{reference}",
                headers={"Accept": MANIFEST_ACCEPT},
                what=f"look up {_at(self.path, reference)}",
            )
            with response:
                if response.status_code == 404:
                    return None
                if response.status_code == 405:  # HEAD not supported: the GET will tell
                    return ManifestHead(None, "", None)
                self._check(response, f"look up {reference}", endpoint)
                length = response.headers.get("Content-Length")
                return ManifestHead(
                    response.headers.get("Docker-Content-Digest"),
                    (response.headers.get("Content-Type") or "").split(";")[0].strip(),
                    int(length) if length and length.isdigit() else None,
                )

        return self._first(head, f"look up {self.name} {reference}")

    def get_manifest(
        self, reference: str, *, expected_digest: str | None = None
    ) -> Manifest | None:
        """The manifest or index exactly as served, its digest checked against
        ``expected_digest`` (or the reference, when that is a digest); None if there is none."""
        if expected_digest is None and reference.startswith("sha256:"):
            expected_digest = reference

        def get(endpoint: Endpoint) -> Manifest | None:
            what = f"fetch the manifest of {_at(self.path, reference)}"
            fetched = self._read(
                endpoint, f"manifests/{reference}", {"Accept": MANIFEST_ACCEPT}, MAX_JSON_BLOB_SIZE,
                what,
            )  # fmt: skip
            if fetched is None:
                return None
            data, headers = fetched
            served_digest = headers.get("Docker-Content-Digest")
            media_type = manifest_media_type(headers.get("Content-Type"), data)
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            wanted = expected_digest or (
                served_digest if served_digest and served_digest.startswith("sha256:") else None
            )
            if wanted is not None and digest != wanted:
                raise RegistryError(
                    f"couldn't {what} from {endpoint.host}: it hashes to {digest}, not {wanted}; "
                    "the registry or a proxy changed it: nothing was cached, try again"
                )
            if not media_type.startswith("application/vnd."):
                raise RegistryError(
                    f"couldn't {what} from {endpoint.host}: it is not an image manifest "
                    f"(Content-Type {media_type or 'missing'})"
                )
            return Manifest(data, media_type, digest)

        return self._first(get, f"fetch {self.name} {reference}")

    def _read(
        self, endpoint: Endpoint, path: str, headers: dict[str, str], limit: int, what: str
    ) -> tuple[bytes, Mapping[str, str]] | None:
        """A small body in memory (at most ``limit`` bytes), fetched again if the connection
        drops; None on 404."""
        policy = self.client.retry
        attempt = 0
        while True:
            attempt += 1
            response = self.client.request(
                endpoint, self.path, "GET", path, headers=headers, what=what
            )
            with response:
                if response.status_code == 404:
                    return None
                self._check(response, what, endpoint)
                try:
                    return _read_body(response, limit, what, endpoint), response.headers
                except _TransferCutError as err:
                    if attempt >= policy.attempts:
                        raise
                    log.warning("%s; trying again", err)
            self.client.pause(attempt)

    def _first(self, call: Callable[[Endpoint], _T | None], what: str) -> _T | None:
        """``call`` on the preferred endpoint, then on the others: a mirror that fails or
        lacks the image hands over to the next one, and finally to the registry itself."""
        last_error: RegistryError | None = None
        for endpoint in self._ordered_endpoints():
            try:
                found = call(endpoint)
            except RegistryError as err:
                if not endpoint.is_mirror:
                    raise
                log.warning("mirror %s failed (%s); trying the next source", endpoint.host, err)
                last_error = err
                continue
            if found is None and endpoint.is_mirror:
                log.debug("mirror %s lacks %s", endpoint.host, what)
                continue
            if found is not None:
                self._preferred = endpoint
            return found
        if last_error is not None:
            raise last_error
        return None

    def _ordered_endpoints(self) -> list[Endpoint]:
        if self._preferred is None:
            return list(self.endpoints)
        return [self._preferred, *(e for e in self.endpoints if e != self._preferred)]

    def _check(self, response: requests.Response, what: str, endpoint: Endpoint) -> None:
        if response.status_code < 400:
            return
        raise RegistryError(
            f"couldn't {what} from {endpoint.host}/{self.path}: HTTP {response.status_code}"
            f"{_registry_error_code(response)}"
        )

    # --- blobs --------------------------------------------------------------------------

    def fetch_small_blob(self, descriptor: Descriptor) -> bytes:
        """A config blob in memory (bounded), its digest and size checked."""
        if descriptor.size > MAX_JSON_BLOB_SIZE:
            raise RegistryError(
                f"couldn't fetch {descriptor.digest} of {self.name}: {descriptor.size} bytes is "
                "too large for an image config"
            )

        def get(endpoint: Endpoint) -> bytes | None:
            what = f"fetch blob {descriptor.digest} of {self.path}"
            fetched = self._read(
                endpoint, f"blobs/{descriptor.digest}", {"Accept-Encoding": "identity"},
                descriptor.size, what,
            )  # fmt: skip
            if fetched is None:
                return None
            data = fetched[0]
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            if len(data) != descriptor.size or digest != descriptor.digest:
                raise RegistryError(
                    f"couldn't {what} from {endpoint.host}: received {len(data)} bytes hashing "
                    f"to {digest}; nothing was cached, try again"
                )
            return data

        data: bytes | None = self._first(get, f"blob {descriptor.digest}")
        if data is None:
            raise RegistryError(
                f"couldn't fetch blob {descriptor.digest} of {self.name}: the registry doesn't "
                "have it (blob unknown); the image is incomplete there"
            )
        return data

    def download_blob(
        self,
        descriptor: Descriptor,
        sink: BlobSink,
        on_bytes: Callable[[int], None] = lambda n: None,
    ) -> StoredBlob:
        """Streams a blob into the cache through fixed buffers. A cut connection resumes
        with ``Range`` into the same temporary; the digest and size are checked before the
        blob enters the cache, and a blob that doesn't match is never kept."""
        last_error: RegistryError | None = None
        for endpoint in self._ordered_endpoints():
            try:
                return self._download_from(endpoint, descriptor, sink, on_bytes)
            except _BlobUnknownError as err:
                last_error = err
            except RegistryError as err:
                if not endpoint.is_mirror:
                    raise
                last_error = err
                log.warning("mirror %s failed (%s); trying the next source", endpoint.host, err)
        assert last_error is not None
        raise last_error

    def _download_from(
        self,
        endpoint: Endpoint,
        descriptor: Descriptor,
        sink: BlobSink,
        on_bytes: Callable[[int], None],
    ) -> StoredBlob:
        fresh_starts = 2  # a resumed download that fails its digest check starts over once
        while True:
            with sink.blob_writer() as blob:
                resumed = self._stream_into(endpoint, descriptor, blob, on_bytes)
                what = f"download blob {descriptor.digest} of {self.path} from {endpoint.host}"
                if blob.size == descriptor.size and blob.digest == descriptor.digest:
                    # A CacheError here is the disk's, not the registry's: it propagates.
                    return blob.commit(
                        expected_digest=descriptor.digest, expected_size=descriptor.size
                    )
                problem = f"received {blob.size} bytes hashing to {blob.digest}"
                fresh_starts -= 1
                if resumed and fresh_starts > 0:
                    log.warning("couldn't %s: %s; downloading it again", what, problem)
                    continue
                raise RegistryError(
                    f"couldn't {what}: {problem}, expected {descriptor.size} bytes hashing to "
                    f"{descriptor.digest}; it was not cached (a corrupted transfer, or a broken "
                    "registry or proxy): try again"
                )

    def _stream_into(
        self,
        endpoint: Endpoint,
        descriptor: Descriptor,
        blob: BlobWriter,
        on_bytes: Callable[[int], None],
    ) -> bool:
        """Fills ``blob`` up to the descriptor's size, resuming after cuts; returns whether
        any part came from a resumed request."""
        policy = self.client.retry
        size = descriptor.size
        failures = 0
        resumed = False
        what = f"download blob {descriptor.digest} of {self.path}"
        while blob.size < size:
            offset = blob.size
            headers = {"Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
                resumed = True
            response = self.client.request(
                endpoint, self.path, "GET", f"blobs/{descriptor.digest}", headers=headers,
                what=what,
            )  # fmt: skip
            with response:
                if response.status_code == 404:
                    raise _BlobUnknownError(
                        f"couldn't {what} from {endpoint.host}: the registry doesn't have it "
                        "(blob unknown); the image is incomplete there"
                    )
                skip = 0
                if offset and response.status_code == 200:
                    skip = offset  # Range ignored: the whole blob again
                    log.debug(
                        "%s ignored the Range request; skipping %d bytes", endpoint.host, skip
                    )
                elif offset and response.status_code == 206:
                    start = _content_range_start(response.headers.get("Content-Range"))
                    if start != offset:
                        raise RegistryError(
                            f"couldn't {what} from {endpoint.host}: asked for bytes from {offset}, "
                            f"got a range starting at {start}"
                        )
                elif response.status_code == 416:
                    raise RegistryError(
                        f"couldn't {what} from {endpoint.host}: it refused the byte range "
                        f"{offset}- of a {size}-byte blob (HTTP 416)"
                    )
                else:
                    self._check(response, what, endpoint)
                try:
                    for chunk in _chunks(response, skip):
                        if blob.size + len(chunk) > size:
                            raise RegistryError(
                                f"couldn't {what} from {endpoint.host}: it sent more than the "
                                f"{size} bytes its manifest names; it was not cached"
                            )
                        blob.write(chunk)
                        on_bytes(len(chunk))
                except (
                    requests.exceptions.ConnectionError,
                    requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError,
                ) as err:
                    cause = _reason(err)
                else:
                    cause = "the connection closed early"
            if blob.size >= size:
                break
            # Cut short (urllib3 1.26 may end a short body without an error): resume.
            failures = 0 if blob.size > offset else failures + 1
            if failures >= policy.attempts:
                raise RegistryError(
                    f"couldn't {what} from {endpoint.host}: {cause} at byte {blob.size} of "
                    f"{size}, {failures} times without progress; try again later"
                )
            log.warning("%s: %s at byte %d of %d; resuming", what, cause, blob.size, size)
            if failures:
                self.client.pause(failures)
        return resumed


class _BlobUnknownError(RegistryError):
    """The endpoint doesn't have the blob: another endpoint may."""


def _chunks(response: requests.Response, skip: int) -> Iterator[bytes]:
    """The body in chunks of at most BUFFER_SIZE, after dropping ``skip`` leading bytes."""
    for chunk in _body_chunks(response):
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        yield chunk[skip:] if skip else chunk
        skip = 0


def _body_chunks(response: requests.Response) -> Iterator[bytes]:
    """The body as it arrives, at most BUFFER_SIZE at a time. Unlike ``iter_content``, the
    bytes that arrived before a cut are yielded before the error: urllib3 2's ``read(n)``
    drops them with its IncompleteRead, and a resume would fetch them again. A cut raises
    requests' ChunkedEncodingError; urllib3 1.26 ends a short body quietly instead."""
    raw = response.raw
    read1 = getattr(raw, "read1", None)  # urllib3 2
    try:
        while True:
            if read1 is not None:
                chunk = read1(BUFFER_SIZE, decode_content=True)
            else:
                chunk = raw.read(BUFFER_SIZE, decode_content=True)
            if not chunk:
                return
            yield chunk
    except (urllib3.exceptions.HTTPError, OSError) as err:
        raise requests.exceptions.ChunkedEncodingError(_reason(err)) from err


class _TransferCutError(RegistryError):
    """The connection dropped while a body was read."""


def _read_body(response: requests.Response, limit: int, what: str, endpoint: Endpoint) -> bytes:
    data = bytearray()
    try:
        for chunk in _body_chunks(response):
            data += chunk
            if len(data) > limit:
                raise RegistryError(
                    f"couldn't {what} from {endpoint.host}: it is larger than {limit} bytes"
                )
    except (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.ChunkedEncodingError,
    ) as err:
        raise _TransferCutError(f"couldn't {what} from {endpoint.host}: {_reason(err)}") from err
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) != len(data):
        # urllib3 1.26 ends a short body quietly.
        raise _TransferCutError(
            f"couldn't {what} from {endpoint.host}: the connection closed after {len(data)} of "
            f"{length} bytes"
        )
    return bytes(data)


def _at(repository: str, reference: str) -> str:
    """``repo:tag`` or ``repo@sha256:...``."""
    return f"{repository}@{reference}" if ":" in reference else f"{repository}:{reference}"


def _content_range_start(value: str | None) -> int | None:
    """The first byte of ``Content-Range: bytes START-END/SIZE``."""
    if not value or not value.startswith("bytes "):
        return None
    start = value[6:].partition("-")[0].strip()
    return int(start) if start.isdigit() else None


def _registry_error_code(response: requests.Response) -> str:
    """`` (MANIFEST_UNKNOWN: ...)`` from the registry's JSON error body, if it has one."""
    try:
        errors = response.json().get("errors") or []
        first = errors[0]
        return f" ({first.get('code', '')}: {str(first.get('message', ''))[:120]})"
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""
