"""read_ahead: a load archive's chunks from a thread of their own, in order, errors and all."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from forklift_boot.archive.load_archive import read_ahead


def test_every_chunk_arrives_in_order() -> None:
    chunks = [bytes([n]) * (n + 1) for n in range(50)]
    assert list(read_ahead(iter(chunks), depth=3)) == chunks


def test_the_chunks_are_produced_on_another_thread_at_most_depth_ahead() -> None:
    produced: list[int] = []
    threads: set[str] = set()
    consumer_may_go = threading.Event()

    def chunks() -> Iterator[bytes]:
        for n in range(20):
            threads.add(threading.current_thread().name)
            produced.append(n)
            yield b"x"

    stream = read_ahead(chunks(), depth=2)
    assert next(stream) == b"x"
    consumer_may_go.wait(0.3)  # the producer runs ahead while we hold the first chunk
    # One chunk taken, two queued, one more produced and waiting for room: never all 20.
    assert len(produced) <= 4
    assert list(stream) == [b"x"] * 19
    assert threads == {"load-archive-read-ahead"}


class Damaged(Exception):
    pass


def test_an_error_in_the_chunks_is_raised_to_the_consumer_after_the_chunks_before_it() -> None:
    def chunks() -> Iterator[bytes]:
        yield b"a"
        yield b"b"
        raise Damaged("blob sha256:00 is damaged")

    got = []
    with pytest.raises(Damaged, match="is damaged"):
        for chunk in read_ahead(chunks(), depth=8):
            got.append(chunk)
    assert got == [b"a", b"b"]


def test_a_consumer_that_stops_early_closes_the_chunks_and_ends_the_thread() -> None:
    closed = threading.Event()

    def chunks() -> Iterator[bytes]:
        try:
            while True:
                yield b"y"
        finally:
            closed.set()

    before = threading.active_count()
    stream = read_ahead(chunks(), depth=2)
    assert next(stream) == b"y"
    stream.close()  # what requests does when the daemon hangs up mid-upload
    assert closed.wait(5)
    assert threading.active_count() == before
