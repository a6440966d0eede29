"""The registry client: credentials and tokens per registry and repository, and every request
of the OCI distribution API with its authentication and retries.

Anonymous, bearer and basic auth; retries with exponential backoff and jitter that honour
``Retry-After``. Secrets (passwords, tokens) never reach a log line or an exception message.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

from forklift_boot.cache.json_limits import load_json
from forklift_boot.errors import RegistryError, printable
from forklift_boot.refs import ImageRef
from forklift_boot.stores.registry.auth import Challenge, CredentialStore, parse_www_authenticate
from forklift_boot.stores.registry.bodies import read_body
from forklift_boot.stores.registry.endpoints import Endpoint, mirror_base_url
from forklift_boot.stores.registry.repository import Repository
from forklift_boot.stores.registry.transport import (
    TIMEOUT,
    Attempts,
    Deadline,
    MinimumRate,
    RegistryAccessError,
    RegistryConnectionError,
    RegistryUnavailableError,
    RetryPolicy,
    Transport,
    is_retry_status,
    parse_retry_after,
    reason,
)

__all__ = ["RegistryClient"]

log = logging.getLogger(__name__)

# A token answer is a few KiB of JSON (a JWT and its expiry).
_TOKEN_LIMIT = 1 << 20


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


class RegistryClient:
    """Sessions, credentials, tokens and the retry policy shared by every repository."""

    def __init__(
        self,
        *,
        mirrors: Sequence[str] = (),
        credentials: CredentialStore | None = None,
        retry: RetryPolicy | None = None,
        offline: bool = False,
        min_rate: MinimumRate | None = None,
        timeout: tuple[float, float] = TIMEOUT,
        deadline: Deadline | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.mirrors = [mirror_base_url(mirror) for mirror in mirrors]
        self.credentials = credentials or CredentialStore(None)
        self.retry = retry or RetryPolicy()
        self.offline = offline
        # Every body (manifests, blobs, tokens, error answers) arrives at least this fast.
        self.min_rate = min_rate or MinimumRate()
        # ``timeout`` (connect, read) bounds each request; ``deadline`` all of them together.
        self._transport = Transport(
            self.retry, timeout=timeout, deadline=deadline, sleep=sleep, rand=rand
        )
        # Authorization header values (never logged): per access asked for, and basic auth's
        # per registry.
        self._auth: dict[_AuthKey, str] = {}
        self._basic: dict[str, str] = {}

    def repository(self, ref: ImageRef) -> Repository:
        return Repository(self, ref)

    def close(self) -> None:
        self._transport.close()

    def pause(self, attempt: int) -> None:
        """Sleeps the backoff delay after the ``attempt``-th failure."""
        self._transport.pause(attempt)

    # --- HTTP with auth and retries -----------------------------------------------------

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
        self._refuse_offline(what, at)
        if url is None:
            url = _api_url(endpoint, repository, path)
        # Our credentials go to the registry only, never to another host an upload names.
        # (requests drops them itself when a GET is redirected to another host.)
        is_own = _is_registry(url, endpoint)
        key = _AuthKey(endpoint.base_url, repository, push, mount_from)
        tries = Attempts(self.retry.mirror_attempts if endpoint.is_mirror else self.retry.attempts)
        authenticated = False
        while True:
            tries.number += 1
            response = self._transport.send(
                endpoint.host, method, url,
                headers=self._headers(endpoint, key, headers, is_own), params=params, body=body,
                tries=tries, what=what, at=at, push=push,
            )  # fmt: skip
            if response is None:  # the connection dropped; the transport waited
                continue
            status = response.status_code
            log.debug("%s %s -> %d", method, url, status)
            if status in (401, 403) and not _is_registry(response.url or url, endpoint):
                # A challenge from where a redirect (or an upload's Location) led: answering
                # it would hand the registry's credentials to another host, the class of
                # containerd's CVE-2020-15157.
                response.close()
                raise _foreign_challenge(endpoint, response.url or url, status, what, at)
            if status == 401 and not authenticated:
                challenges = parse_www_authenticate(response.headers.get("WWW-Authenticate", ""))
                response.close()
                self._auth.pop(key, None)
                self._authenticate(endpoint, key, challenges, what, at)
                authenticated = True
                tries.number -= 1  # logging in is not a failed attempt
                continue
            if is_retry_status(status):
                self._transport.wait_to_retry(response, tries, what, at)
                continue
            if status in (401, 403):
                response.close()
                raise self._access_error(endpoint, repository, status, what=what, at=at, push=push)
            return response

    def _refuse_offline(self, what: str, at: str) -> None:
        if self.offline:
            raise RegistryError(
                f"couldn't {what} {at}: --offline forbids network access; "
                "cache it from Docker (--from docker) or run without --offline"
            )

    def _headers(
        self, endpoint: Endpoint, key: _AuthKey, headers: Mapping[str, str] | None, is_own: bool
    ) -> dict[str, str]:
        """The caller's headers, and the token or basic credentials we hold for the registry."""
        sent = dict(headers or {})
        authorization = self._auth.get(key) or self._basic.get(endpoint.base_url)
        if authorization is not None and is_own:
            sent["Authorization"] = authorization
        return sent

    def _access_error(
        self, endpoint: Endpoint, repository: str, status: int, *, what: str, at: str, push: bool
    ) -> RegistryAccessError:
        """What a 401 after logging in, or a 403, means for the user, and what to do."""
        if push:
            credentials = self.credentials.lookup(endpoint.credentials_host)
            whose = "anonymous access"
            if credentials is not None:
                whose = f"the credentials from {credentials.source}"
            return RegistryAccessError(
                f"couldn't {what} {at}: access denied (HTTP {status}) to {whose}; log "
                f"in with `docker login {endpoint.credentials_host}` as a user who may "
                f"push to {repository} (forklift-boot reads Docker's config.json)"
            )
        return RegistryAccessError(
            f"couldn't {what} {at}: access denied (HTTP {status}); the "
            "repository doesn't exist or needs credentials: log in with `docker login "
            f"{endpoint.credentials_host}` (forklift-boot reads Docker's config.json)"
        )

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
        service = printable(parts.netloc)
        token_at = f"at {service}"
        attempts = self.retry.attempts
        for attempt in range(1, attempts + 1):
            timeout = self._transport.timeout_now(what, at)
            try:
                if credentials is not None and credentials.is_identity_token:
                    # OAuth2 refresh-token grant, as Docker does for an identity token.
                    response = self._transport.session(parts.netloc).post(
                        realm,
                        data={
                            **params,
                            "grant_type": "refresh_token",
                            "refresh_token": credentials.secret,
                            "client_id": "forklift-boot",
                        },
                        timeout=timeout,
                        stream=True,
                        # A redirected POST carries its body, the refresh token, to wherever
                        # the redirect leads: the token service named by the registry only.
                        allow_redirects=False,
                    )
                else:
                    headers = {}
                    if credentials is not None:
                        headers["Authorization"] = credentials.basic_header()
                    # requests drops the Authorization header on a redirect to another host.
                    response = self._transport.session(parts.netloc).get(
                        realm, params=params, headers=headers, timeout=timeout, stream=True
                    )
            except requests.exceptions.RequestException as err:
                if attempt >= attempts:
                    raise RegistryConnectionError(
                        f"couldn't {what} {at}: its token service {service} failed ({reason(err)})"
                    ) from err
                self._transport.wait(self._transport.backoff(attempt), token_at, what, "token")
                continue
            status = response.status_code
            if status == 429 or 500 <= status <= 599:
                response.close()
                if attempt >= attempts:
                    raise RegistryUnavailableError(
                        f"couldn't {what} {at}: its token service "
                        f"{service} answered HTTP {status}; try again later"
                    )
                delay = parse_retry_after(response.headers.get("Retry-After"), time.time())
                if delay is None or delay > self.retry.max_retry_after:
                    delay = self._transport.backoff(attempt)
                self._transport.wait(delay, token_at, what, f"token service HTTP {status}")
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
                f"couldn't {what} {at}: its token service {service} answered HTTP {status}"
            )
        with response:
            data = read_body(
                response, _TOKEN_LIMIT, f"get a token to {what}", service, self.min_rate
            )
        try:
            document = load_json(data)
        except (ValueError, RecursionError) as err:
            raise RegistryError(
                f"couldn't {what} {at}: its token service's answer is not JSON"
            ) from err
        if not isinstance(document, dict):
            document = None
        token = document.get("token") or document.get("access_token") if document else None
        if not isinstance(token, str) or not token or not token.isprintable() or " " in token:
            raise RegistryError(f"couldn't {what} {at}: its token service gave no usable token")
        return token


def _api_url(endpoint: Endpoint, repository: str, path: str) -> str:
    """``/v2/REPOSITORY/PATH`` on the endpoint, or the API's root ``/v2/`` without a path."""
    return f"{endpoint.base_url}/v2/{repository}/{path}" if path else f"{endpoint.base_url}/v2/"


def _is_registry(url: str, endpoint: Endpoint) -> bool:
    """Whether ``url`` is on the endpoint's own host and port (a scheme's default port implied),
    and not a downgrade from HTTPS to HTTP: the rule requests follows for redirects."""
    theirs, ours = urlsplit(url), urlsplit(endpoint.base_url)
    if ours.scheme == "https" and theirs.scheme != "https":
        return False
    try:
        if (ours.scheme, theirs.scheme) == ("http", "https") and ours.port in (None, 80):
            return theirs.hostname == ours.hostname and theirs.port in (None, 443)
        return (theirs.hostname, theirs.port or _PORTS.get(theirs.scheme)) == (
            ours.hostname,
            ours.port or _PORTS.get(ours.scheme),
        )
    except ValueError:  # a port that is not a number
        return False


_PORTS = {"http": 80, "https": 443}


def _foreign_challenge(
    endpoint: Endpoint, url: str, status: int, what: str, at: str
) -> RegistryAccessError:
    """A 401 or 403 from another host than the registry: never answered with its credentials."""
    other = printable(urlsplit(url).netloc)
    answer = "asks for credentials" if status == 401 else "refused access"
    return RegistryAccessError(
        f"couldn't {what} {at}: it sent us to {other}, which {answer} (HTTP {status}); "
        f"forklift-boot gives {endpoint.credentials_host}'s credentials only to "
        f"{endpoint.host} and the token service it names: ask the registry's operator to "
        "fix where it redirects"
    )
