"""One HTTP attempt at a time: per-thread sessions, timeouts, and the waits between attempts."""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC

import requests

from forklift_boot import __version__
from forklift_boot.errors import RegistryError, RegistryUnreachableError, printable
from forklift_boot.stores.registry.endpoints import is_loopback_host

__all__ = [
    "TIMEOUT",
    "TRANSIENT_ERRORS",
    "USER_AGENT",
    "Attempts",
    "Deadline",
    "MinimumRate",
    "RegistryAccessError",
    "RegistryConnectionError",
    "RegistryUnavailableError",
    "RetryPolicy",
    "Transport",
    "is_retry_status",
    "parse_retry_after",
    "printable",
    "reason",
]

log = logging.getLogger(__name__)

USER_AGENT = f"forklift-boot/{__version__}"
# (connect, read) in seconds; a read timeout is a stalled stream, resumed like a cut.
TIMEOUT = (30.0, 60.0)
_HTTP_RETRY_STATUSES = frozenset({408, 425, 429})
# What a dropped, refused or stalled connection raises, before or while a body is read:
# worth another attempt (or a resume), unlike TLS failures and malformed requests.
TRANSIENT_ERRORS: tuple[type[requests.exceptions.RequestException], ...] = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


class RegistryAccessError(RegistryError):
    """The registry refused our credentials, or needs some (HTTP 401/403)."""


class RegistryConnectionError(RegistryUnreachableError):
    """The registry (or its token service) can't be reached: refused, timed out, TLS."""


class RegistryUnavailableError(RegistryUnreachableError):
    """The registry (or its token service) answers only "not now" (429, 5xx), more often or
    for longer than the retry policy waits: as good as unreachable for this run."""


class Deadline:
    """One bound on every request of a run, from its first: once ``seconds`` have passed, no
    request is sent, and none waits past it (load-img's read-through must not stall a boot)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._ends_at: float | None = None

    def remaining(self) -> float:
        """Seconds left; the clock starts at the first call."""
        now = self._clock()
        if self._ends_at is None:
            self._ends_at = now + self.seconds
        return self._ends_at - now


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per request (and per blob without progress), and how long to wait between."""

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0
    # A Retry-After longer than this is not waited for: the error says when to come back.
    # A boot or a CI step can't sit out a registry's five minutes, nor several.
    max_retry_after: float = 60.0
    # All the waits of one request together: the last one that would overrun it is not taken.
    max_total_wait: float = 120.0
    # A mirror that fails is left for the next endpoint sooner.
    mirror_attempts: int = 2

    def backoff(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Exponential backoff with jitter: half the capped delay plus a random half."""
        delay = min(self.max_delay, self.base_delay * 2.0 ** max(attempt - 1, 0))
        return delay / 2 + rand() * delay / 2


@dataclass(frozen=True)
class MinimumRate:
    """The slowest body worth waiting for: fewer than ``min_bytes`` arriving in ``window``
    seconds ends the transfer. The read timeout alone never fires on a registry that sends
    a byte every few seconds. ``min_bytes`` 0 turns the check off."""

    min_bytes: int = 64 << 10
    window: float = 60.0

    def describe(self) -> str:
        amount = (
            f"{self.min_bytes >> 10} KiB"
            if self.min_bytes % 1024 == 0
            else f"{self.min_bytes} bytes"
        )
        return f"{amount} in {self.window:g} s"


@dataclass
class Attempts:
    """One request's attempts so far, and the seconds spent waiting between them."""

    limit: int
    number: int = 0
    waited: float = 0.0

    @property
    def last(self) -> bool:
        return self.number >= self.limit


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


def is_retry_status(status: int) -> bool:
    """A status that says "not now" (408, 425, 429 and 5xx): the same request may succeed later."""
    return status in _HTTP_RETRY_STATUSES or 500 <= status <= 599


def reason(err: BaseException) -> str:
    """A short, secret-free reason: the exception's class and the innermost cause's message."""
    inner: BaseException = err
    while inner.__context__ is not None and inner.__context__ is not inner:
        inner = inner.__context__
    text = str(inner) or type(inner).__name__
    # urllib3 messages repeat the pool's repr; keep the end, which says what happened.
    if "Caused by" in text:
        text = text.rsplit("Caused by", 1)[1].strip(" ()'\"")
    return printable(text[:200])


class Transport:
    """Sessions and the waits between attempts, shared by every request of a client."""

    def __init__(
        self,
        retry: RetryPolicy,
        *,
        timeout: tuple[float, float] = TIMEOUT,
        deadline: Deadline | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.retry = retry
        self.timeout = timeout  # (connect, read): a read timeout also bounds the first byte
        self.deadline = deadline
        self._sleep = sleep
        self._rand = rand
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()

    def session(self, host: str) -> requests.Session:
        """One session per thread (requests' sessions are not thread-safe); loopback ones
        ignore proxy variables, as a registry on 127.0.0.1 is never behind a proxy."""
        key = "loopback" if is_loopback_host(host) else "remote"
        sessions: dict[str, requests.Session] = getattr(self._local, "sessions", {})
        self._local.sessions = sessions
        if key not in sessions:
            session = requests.Session()
            session.headers["User-Agent"] = USER_AGENT
            # Bodies as sent: digests are of those bytes, and an encoded body would be read
            # through urllib3 1.26's read(n), which waits for all n (see bodies._reader).
            session.headers["Accept-Encoding"] = "identity"
            session.trust_env = key == "remote"
            sessions[key] = session
            with self._lock:
                self._sessions.append(session)
        return sessions[key]

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    def backoff(self, attempt: int) -> float:
        return self.retry.backoff(attempt, self._rand)

    def timeout_now(self, what: str, at: str) -> tuple[float, float]:
        """The (connect, read) timeouts of the next request, cut to what the deadline leaves;
        RegistryConnectionError once it has passed."""
        if self.deadline is None:
            return self.timeout
        remaining = self.deadline.remaining()
        if remaining <= 0:
            raise RegistryConnectionError(
                f"couldn't {what} {at}: registries had {self.deadline.seconds:g} s to answer "
                "in this run, and that time is up"
            )
        return (min(self.timeout[0], remaining), min(self.timeout[1], remaining))

    def pause(self, attempt: int) -> None:
        """Sleeps the backoff delay after the ``attempt``-th failure."""
        self._sleep(self.backoff(attempt))

    def wait(self, delay: float, at: str, what: str, problem: str) -> None:
        log.warning("couldn't %s %s (%s); trying again in %.1f s", what, at, problem, delay)
        self._sleep(delay)

    def send(
        self,
        host: str,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        body: bytes | Iterable[bytes] | None,
        tries: Attempts,
        what: str,
        at: str,
        push: bool,
    ) -> requests.Response | None:
        """One attempt of a request to ``host``'s registry, its body streaming: the response
        whatever its status, or None after waiting out a dropped connection when attempts
        are left. TLS failures, the last dropped connection and malformed requests raise."""
        timeout = self.timeout_now(what, at)
        try:
            return self.session(host).request(
                method,
                url,
                headers=headers,
                params=params,
                data=body,
                stream=True,
                timeout=timeout,
                # A redirected upload would need its body again: uploads never follow.
                allow_redirects=method in ("GET", "HEAD"),
            )
        except requests.exceptions.SSLError as err:
            raise RegistryConnectionError(
                f"couldn't {what} {at}: TLS failed ({reason(err)}); check "
                "the registry's certificate and the system's CA certificates"
                + (" (or --plain-http for a registry that speaks plain HTTP)" if push else "")
            ) from err
        except TRANSIENT_ERRORS as err:
            delay = self.backoff(tries.number)
            if tries.last or not self._affords(tries, delay):
                raise RegistryConnectionError(
                    f"couldn't {what} {at}: {reason(err)} ({tries.number} "
                    "attempts); check the network and the registry's address"
                ) from err
            self._wait_within(tries, delay, at, what, reason(err))
            return None
        except requests.exceptions.RequestException as err:
            raise RegistryError(f"couldn't {what} {at}: {reason(err)}") from err

    def wait_to_retry(
        self, response: requests.Response, tries: Attempts, what: str, at: str
    ) -> None:
        """Closes a "not now" answer and waits what its ``Retry-After`` asks (or the backoff);
        raises when attempts are used up, or the registry asks for a longer wait than the
        policy allows, alone or with the waits before it."""
        status = response.status_code
        retry_after = parse_retry_after(response.headers.get("Retry-After"), time.time())
        response.close()
        problem = f"HTTP {status}" + (", too many requests" if status == 429 else "")
        if retry_after is not None and retry_after > self.retry.max_retry_after:
            raise RegistryUnavailableError(
                f"couldn't {what} {at}: {problem}, and it asks to wait "
                f"{retry_after:.0f} s; try again later or raise --retry-wait (Docker Hub: log "
                "in for a higher rate limit, or use --registry-mirror)"
            )
        if tries.last:
            raise RegistryUnavailableError(
                f"couldn't {what} {at}: {problem} {tries.number} times; try again later"
            )
        delay = retry_after if retry_after is not None else self.backoff(tries.number)
        if not self._affords(tries, delay):
            raise RegistryUnavailableError(
                f"couldn't {what} {at}: {problem} {tries.number} times, and waiting "
                f"{delay:.0f} s more would take it past {self.retry.max_total_wait:g} s of "
                "waiting; try again later or raise --retry-wait"
            )
        self._wait_within(tries, delay, at, what, problem)

    def _affords(self, tries: Attempts, delay: float) -> bool:
        if self.deadline is not None and delay >= self.deadline.remaining():
            return False
        return tries.waited + delay <= self.retry.max_total_wait

    def _wait_within(self, tries: Attempts, delay: float, at: str, what: str, problem: str) -> None:
        tries.waited += delay
        self.wait(delay, at, what, problem)
