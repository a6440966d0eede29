"""A served connection's reading side, with a deadline for each request's head: a client that
trickles its request line and header fields a byte at a time can't hold a thread for long."""

from __future__ import annotations

import io
import socket
import time
from typing import Any

__all__ = ["HeadReader"]


class HeadReader(io.RawIOBase):
    """The bytes of ``connection``: while a deadline is set, every read waits only until then
    (TimeoutError after it), else up to ``idle_timeout`` per read as before.

    A socket timeout bounds each read, not their sum; a deadline bounds the sum.
    """

    def __init__(self, connection: socket.socket, idle_timeout: float) -> None:
        super().__init__()
        self._connection = connection
        self._idle_timeout = idle_timeout
        self._deadline: float | None = None
        self._armed: float | None = None  # seconds the deadline will give, from the next byte

    def start_head(self, seconds: float, *, now: bool) -> None:
        """A request's head must arrive within ``seconds``: from now, or (``now`` False, a
        keep-alive connection waiting for its next request) from its first byte."""
        if now:
            self._deadline, self._armed = time.monotonic() + seconds, None
        else:
            self._deadline, self._armed = None, seconds

    def end_head(self) -> None:
        """The head is read: the body and the next request's wait have the idle timeout."""
        self._deadline = self._armed = None
        self._connection.settimeout(self._idle_timeout)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        timeout = self._idle_timeout
        if self._deadline is not None:
            timeout = min(timeout, self._deadline - time.monotonic())
            if timeout <= 0:
                raise TimeoutError("the request's head didn't arrive in time")
        self._connection.settimeout(timeout)
        count = self._connection.recv_into(buffer)
        if count and self._armed is not None:
            self._deadline, self._armed = time.monotonic() + self._armed, None
        return count
