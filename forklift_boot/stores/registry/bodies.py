"""Response bodies read as they arrive, through fixed buffers, keeping what came before a cut."""

from __future__ import annotations

import http.client
import threading
import time
import weakref
from collections.abc import Callable, Iterator

import requests
import urllib3

from forklift_boot.cache import BUFFER_SIZE
from forklift_boot.cache.json_limits import load_json
from forklift_boot.errors import RegistryError, printable
from forklift_boot.stores.registry.transport import (
    TRANSIENT_ERRORS,
    MinimumRate,
    reason,
)

__all__ = [
    "RateGuard",
    "TransferCutError",
    "TransferTooSlowError",
    "body_chunks",
    "chunks",
    "read_body",
    "registry_error",
]

# An error body is read for its code and message, never more than this.
_ERROR_BODY_LIMIT = 64 << 10


class TransferTooSlowError(RegistryError):
    """A body arrived slower than the minimum rate: a stalled or trickling registry."""


class RateGuard:
    """Ends a body that arrives slower than ``rate``: counts the bytes of each window of
    ``rate.window`` seconds and raises when one ends with fewer than ``rate.min_bytes``.
    A read blocks for at most the read timeout, so a trickle ends within a window and a
    read timeout."""

    def __init__(
        self,
        rate: MinimumRate,
        what: str,
        host: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.what = what
        self.host = host
        self._clock = clock
        self._start = clock()
        self._bytes = 0
        self.total = 0

    def arrived(self, count: int) -> None:
        self._bytes += count
        self.total += count
        if self.rate.min_bytes <= 0:
            return
        now = self._clock()
        if now - self._start < self.rate.window:
            return
        if self._bytes < self.rate.min_bytes:
            raise TransferTooSlowError(
                f"couldn't {self.what} from {self.host}: {self._bytes} bytes arrived in the "
                f"last {now - self._start:.0f} s, less than the minimum of "
                f"{self.rate.describe()} ({self.total} bytes in all); the registry or the "
                "network is too slow or stalled: try again later, or lower --min-rate"
            )
        self._start, self._bytes = now, 0


def chunks(
    response: requests.Response, skip: int, guard: RateGuard | None = None
) -> Iterator[bytes]:
    """The body in chunks of at most BUFFER_SIZE, after dropping ``skip`` leading bytes."""
    for chunk in body_chunks(response, guard):
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        yield chunk[skip:] if skip else chunk
        skip = 0


def body_chunks(response: requests.Response, guard: RateGuard | None = None) -> Iterator[bytes]:
    """The body as it arrives, at most BUFFER_SIZE at a time. Unlike ``iter_content``, the
    bytes that arrived before a cut are yielded before the error: urllib3 2's ``read(n)``
    drops them with its IncompleteRead, and a resume would fetch them again. A cut raises
    requests' ChunkedEncodingError; urllib3 1.26 ends a short body quietly instead. A
    ``guard`` ends a body that arrives too slowly (TransferTooSlowError)."""
    read_some = _reader(response)
    try:
        while True:
            chunk = read_some(BUFFER_SIZE)
            if not chunk:
                return
            if guard is not None:
                guard.arrived(len(chunk))
            yield chunk
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as err:
        raise requests.exceptions.ChunkedEncodingError(reason(err)) from err


def _reader(response: requests.Response) -> Callable[[int], bytes]:
    """A read that returns what has arrived, up to n bytes, without waiting for all n."""
    raw = response.raw
    read1 = getattr(raw, "read1", None)  # urllib3 2
    if read1 is not None:
        return lambda n: bytes(read1(n, decode_content=True))
    # urllib3 1.26 (Debian bookworm's) has no read1, and its read(n) waits for n bytes: a
    # registry that trickles would hold it for hours, out of the rate guard's sight. The
    # http.client response under it has read1; with no content coding there is nothing
    # for urllib3 to decode on the way.
    fp = getattr(raw, "_fp", None)
    coding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if isinstance(fp, http.client.HTTPResponse) and coding == "identity":
        return fp.read1
    return lambda n: bytes(raw.read(n, decode_content=True))


class TransferCutError(RegistryError):
    """The connection dropped while a body was read."""


def read_body(
    response: requests.Response, limit: int, what: str, host: str, rate: MinimumRate
) -> bytes:
    """A small body in memory, at most ``limit`` bytes; TransferCutError if it was cut,
    TransferTooSlowError if it arrived slower than ``rate``."""
    data = bytearray()
    try:
        for chunk in body_chunks(response, RateGuard(rate, what, host)):
            data += chunk
            if len(data) > limit:
                raise RegistryError(f"couldn't {what} from {host}: it is larger than {limit} bytes")
    except TRANSIENT_ERRORS as err:
        raise TransferCutError(f"couldn't {what} from {host}: {reason(err)}") from err
    length = response.headers.get("Content-Length")
    if length and length.isdigit() and int(length) != len(data):
        # urllib3 1.26 ends a short body quietly.
        raise TransferCutError(
            f"couldn't {what} from {host}: the connection closed after {len(data)} of "
            f"{length} bytes"
        )
    return bytes(data)


def _error_body(response: requests.Response, rate: MinimumRate) -> object:
    """The JSON of an error answer, read no further than its first 64 KiB and no slower than
    ``rate``; None when there is none."""
    data = bytearray()
    try:
        for chunk in body_chunks(response, RateGuard(rate, "read an error", "")):
            data += chunk
            if len(data) > _ERROR_BODY_LIMIT:
                return None
        return load_json(bytes(data))
    except (RegistryError, ValueError, RecursionError):
        return None
    except TRANSIENT_ERRORS:
        return None


def registry_error(response: requests.Response, rate: MinimumRate) -> tuple[str, str]:
    """The code (``MANIFEST_BLOB_UNKNOWN``) and a detail for a message (`` (MANIFEST_UNKNOWN:
    manifest unknown)``) from the registry's JSON error body, control characters escaped;
    empty strings if it has none. The body is read once per response."""
    with _ERRORS_LOCK:
        known = _ERRORS.get(response)
    if known is None:
        known = _registry_error(response, rate)
        with _ERRORS_LOCK:
            _ERRORS[response] = known
    return known


_ERRORS: weakref.WeakKeyDictionary[requests.Response, tuple[str, str]] = weakref.WeakKeyDictionary()
_ERRORS_LOCK = threading.Lock()


def _registry_error(response: requests.Response, rate: MinimumRate) -> tuple[str, str]:
    try:
        first = _error_body(response, rate)["errors"][0]  # type: ignore[index]
        code, message = first.get("code", ""), first.get("message", "")
    except (KeyError, IndexError, TypeError, AttributeError):
        return "", ""
    return printable(str(code)), printable(f" ({code}: {str(message)[:120]})")
