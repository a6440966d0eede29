"""Response bodies read as they arrive, through fixed buffers, keeping what came before a cut."""

from __future__ import annotations

from collections.abc import Iterator

import requests
import urllib3

from forklift_boot.cache import BUFFER_SIZE
from forklift_boot.errors import RegistryError
from forklift_boot.stores.registry.transport import TRANSIENT_ERRORS, reason

__all__ = ["TransferCutError", "body_chunks", "chunks", "read_body"]


def chunks(response: requests.Response, skip: int) -> Iterator[bytes]:
    """The body in chunks of at most BUFFER_SIZE, after dropping ``skip`` leading bytes."""
    for chunk in body_chunks(response):
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        yield chunk[skip:] if skip else chunk
        skip = 0


def body_chunks(response: requests.Response) -> Iterator[bytes]:
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
        raise requests.exceptions.ChunkedEncodingError(reason(err)) from err


class TransferCutError(RegistryError):
    """The connection dropped while a body was read."""


def read_body(response: requests.Response, limit: int, what: str, host: str) -> bytes:
    """A small body in memory, at most ``limit`` bytes; TransferCutError if it was cut."""
    data = bytearray()
    try:
        for chunk in body_chunks(response):
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
