"""forklift_boot.archive.gzip_encoders: every encoder on this machine round-trips through Python's gzip,
a child that dies raises instead of hanging, close() leaves no child, and the choice falls
back to zlib."""

from __future__ import annotations

import gzip
import os
import random
import signal
import threading
import zlib
from collections.abc import Iterator
from types import FrameType, ModuleType

import psutil
import pytest

from forklift_boot.archive.gzip_encoders import (
    LIBRARY_BLOCK_SIZE,
    MAX_WORKERS,
    PREFERENCE,
    GzipEncoder,
    GzipEncoderError,
    PipeGzip,
    available_encoders,
    open_gzip_encoder,
)
from forklift_boot.errors import CacheError

AVAILABLE = [choice.name for choice in available_encoders()]
PROGRAMS = [name for name in AVAILABLE if name in ("igzip", "pigz")]
MiB = 1 << 20
# Block boundaries of the threaded encoders (1 MiB, zlib's too), and inputs of several blocks.
SIZES = (
    0,
    1,
    LIBRARY_BLOCK_SIZE,
    LIBRARY_BLOCK_SIZE + 1,
    4 * LIBRARY_BLOCK_SIZE,
    12 * LIBRARY_BLOCK_SIZE + 12345,
)


def random_bytes(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def text_bytes(size: int) -> bytes:
    """Compressible: numbered lines, as in a text file or a tar of them."""
    lines = b"".join(b"line %08d of a compressible layer file\n" % i for i in range(size // 40 + 1))
    return lines[:size]


def compress(encoder: GzipEncoder, data: bytes, chunk: int = MiB) -> bytes:
    out = bytearray()
    try:
        for offset in range(0, len(data), chunk):
            for part in encoder.write(data[offset : offset + chunk]):
                out += part
        for part in encoder.finish():
            out += part
    finally:
        encoder.close()
    return bytes(out)


@pytest.fixture
def deadline() -> Iterator[None]:
    """Turns a hang into a failure: SIGALRM interrupts a blocking read, write or select."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise TimeoutError("the gzip encoder hung")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(30)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def gzip_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("gzip")]


# Round trips


@pytest.mark.parametrize("name", AVAILABLE)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.usefixtures("deadline")
def test_round_trips_random_and_compressible_data(name: str, size: int) -> None:
    for data in (random_bytes(size, seed=size), text_bytes(size)):
        encoded = compress(open_gzip_encoder(1, 2, encoder=name), data)
        assert encoded[:2] == b"\x1f\x8b"
        assert gzip.decompress(encoded) == data


@pytest.mark.parametrize("name", AVAILABLE)
@pytest.mark.usefixtures("deadline")
def test_odd_writes_give_the_same_stream_as_whole_blocks(name: str) -> None:
    data = text_bytes(5 * MiB) + random_bytes(2 * MiB + 7, seed=1)
    first = compress(open_gzip_encoder(1, 2, encoder=name), data, chunk=MiB)
    second = compress(open_gzip_encoder(1, 2, encoder=name), data, chunk=100_003)
    # Deterministic: the stream depends on the bytes, not on how they were handed over.
    assert first == second
    assert gzip.decompress(second) == data
    # Level 1 of every encoder still compresses text well below half its size.
    text = text_bytes(4 * MiB)
    assert len(compress(open_gzip_encoder(1, 2, encoder=name), text)) < len(text) // 2


def test_memoryview_input_is_accepted() -> None:
    data = text_bytes(MiB + 3)
    for name in AVAILABLE:
        encoder = open_gzip_encoder(1, 2, encoder=name)
        out = bytearray()
        try:
            for part in encoder.write(memoryview(data)):
                out += part
            for part in encoder.finish():
                out += part
        finally:
            encoder.close()
        assert gzip.decompress(bytes(out)) == data, name


@pytest.mark.parametrize("name", AVAILABLE)
@pytest.mark.usefixtures("deadline")
def test_a_buffer_reused_by_the_caller_after_write_does_not_change_the_output(name: str) -> None:
    original = text_bytes(3 * MiB)
    buffer = bytearray(original)
    encoder = open_gzip_encoder(1, 2, encoder=name)
    out = bytearray()
    try:
        for part in encoder.write(buffer):
            out += part
        buffer[:] = bytes(len(buffer))  # as a reader that refills its buffer would
        for part in encoder.finish():
            out += part
    finally:
        encoder.close()
    assert gzip.decompress(bytes(out)) == original


@pytest.mark.usefixtures("deadline")
def test_one_write_much_larger_than_the_pipes_does_not_deadlock() -> None:
    # cat gives back all it reads: the output fills the pipe long before the input is written,
    # so write() must read while it writes. cat is everywhere, igzip and pigz may not be.
    data = random_bytes(24 * MiB, seed=6)
    encoder = PipeGzip("cat", ("cat",))
    out = bytearray()
    try:
        for part in encoder.write(data):
            out += part
        for part in encoder.finish():
            out += part
    finally:
        encoder.close()
    assert out == data


@pytest.mark.parametrize("name", PROGRAMS)
@pytest.mark.usefixtures("deadline")
def test_one_large_write_to_a_program_round_trips(name: str) -> None:
    data = random_bytes(24 * MiB, seed=7)
    assert gzip.decompress(compress(open_gzip_encoder(1, 2, encoder=name), data, len(data))) == data


# A child that fails or dies


@pytest.mark.usefixtures("deadline")
def test_a_child_that_exits_mid_stream_raises_with_its_last_words() -> None:
    script = "head -c 100000 >/dev/null; echo 'igzip: out of cheese' >&2; exit 3"
    encoder = PipeGzip("fake-gzip", ("sh", "-c", script))
    with pytest.raises(GzipEncoderError) as caught:
        compress(encoder, random_bytes(8 * MiB, seed=2))
    message = str(caught.value)
    assert "fake-gzip" in message
    assert "exit status 3" in message
    assert "out of cheese" in message
    assert "\n" not in message
    assert isinstance(caught.value, CacheError)  # the CLI reports it in one line, exit 1


@pytest.mark.usefixtures("deadline")
def test_a_child_killed_mid_stream_raises() -> None:
    encoder = PipeGzip("fake-gzip", ("sh", "-c", "head -c 100000 >/dev/null; kill -9 $$"))
    with pytest.raises(GzipEncoderError, match="killed by signal 9"):
        compress(encoder, random_bytes(8 * MiB, seed=3))


@pytest.mark.usefixtures("deadline")
def test_a_child_that_fails_after_all_its_input_raises_at_finish() -> None:
    encoder = PipeGzip("fake-gzip", ("sh", "-c", "cat; exit 1"))
    with pytest.raises(GzipEncoderError, match="fake-gzip failed .exit status 1"):
        compress(encoder, b"some bytes")


@pytest.mark.parametrize("name", PROGRAMS)
@pytest.mark.usefixtures("deadline")
def test_a_real_encoder_killed_mid_stream_raises(name: str) -> None:
    encoder = open_gzip_encoder(1, 2, encoder=name)
    assert isinstance(encoder, PipeGzip)
    data = random_bytes(4 * MiB, seed=4)

    def write_on() -> None:
        for _ in range(16):
            list(encoder.write(data))
        list(encoder.finish())

    try:
        list(encoder.write(data))
        os.kill(encoder.pid, signal.SIGKILL)
        with pytest.raises(GzipEncoderError, match=f"{name} .*killed by signal 9"):
            write_on()
    finally:
        encoder.close()
    assert not psutil.pid_exists(encoder.pid)


# close() mid-stream


@pytest.mark.parametrize("name", PROGRAMS)
@pytest.mark.usefixtures("deadline")
def test_close_mid_stream_leaves_no_child(name: str) -> None:
    encoder = open_gzip_encoder(1, 2, encoder=name)
    assert isinstance(encoder, PipeGzip)
    assert psutil.Process(encoder.pid).ppid() == os.getpid()
    list(encoder.write(random_bytes(3 * MiB, seed=5)))
    encoder.close()
    # Killed and reaped: not even a zombie is left.
    assert not psutil.pid_exists(encoder.pid)
    encoder.close()  # twice is harmless


@pytest.mark.usefixtures("deadline")
def test_close_of_a_child_that_ignores_its_input_does_not_hang() -> None:
    encoder = PipeGzip("sleeper", ("sleep", "60"))
    pid = encoder.pid
    encoder.close()
    assert not psutil.pid_exists(pid)


@pytest.mark.parametrize("name", AVAILABLE)
@pytest.mark.usefixtures("deadline")
def test_close_mid_stream_leaves_no_thread(name: str) -> None:
    before = gzip_threads()
    encoder = open_gzip_encoder(1, 2, encoder=name)
    for _ in encoder.write(text_bytes(6 * MiB)):
        break  # the caller stops reading, as when writing the blob fails
    encoder.close()
    assert gzip_threads() == before


# Choosing


def nothing(name: str) -> None:
    return None


def test_without_programs_or_libraries_zlib_is_the_choice() -> None:
    assert [c.name for c in available_encoders(which=nothing, load_module=nothing)] == ["zlib"]
    encoder = open_gzip_encoder(1, 2, which=nothing, load_module=nothing)
    assert encoder.name == "zlib"
    data = text_bytes(5 * MiB)
    encoded = compress(encoder, data)
    assert gzip.decompress(encoded) == data
    # One zlib level-1 member per 1 MiB block (bounded memory: ZlibGzip's docstring).
    members = []
    for offset in range(0, len(data), MiB):
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
        block = data[offset : offset + MiB]
        members.append(compressor.compress(block) + compressor.flush())
    expected = b"".join(members)
    assert encoded == expected


def test_preference_order_follows_what_is_found() -> None:
    def every_program(name: str) -> str:
        return f"/usr/bin/{name}"

    def zlib_for_every_library(name: str) -> ModuleType:
        return zlib  # zlib's compressobj is the interface both libraries copy

    names = [c.name for c in available_encoders(every_program, zlib_for_every_library)]
    assert names == list(PREFERENCE)
    assert [c.name for c in available_encoders(every_program, nothing)] == ["igzip", "pigz", "zlib"]
    assert [c.name for c in available_encoders(nothing, zlib_for_every_library)] == [
        "isal",
        "zlib-ng",
        "zlib",
    ]
    assert open_gzip_encoder(1, 2, which=nothing, load_module=zlib_for_every_library).name == "isal"


def test_a_missing_program_is_not_chosen_by_name() -> None:
    with pytest.raises(ValueError, match="igzip is not available"):
        open_gzip_encoder(1, 2, encoder="igzip", which=nothing, load_module=nothing)


@pytest.mark.usefixtures("deadline")
def test_threads_stay_bounded_whatever_the_cores() -> None:
    before = len(gzip_threads())
    encoder = open_gzip_encoder(1, 64, which=nothing, load_module=nothing)
    peak = 0
    try:
        data = text_bytes(MiB)
        for _ in range(48):
            list(encoder.write(data))
            peak = max(peak, len(gzip_threads()) - before)
        list(encoder.finish())
    finally:
        encoder.close()
    assert 1 <= peak <= MAX_WORKERS
