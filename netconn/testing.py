"""Conformance checks for byte streams: the contract every netconn stream keeps.

Any pair of connected byte streams can be checked: two ``Connection`` objects
over TCP or TLS, the two ends of a WebSocket or of a QUIC stream. The caller
supplies a factory that opens a fresh connected pair per check::

    from netconn.testing import check_byte_stream

    async def test_tcp_conforms() -> None:
        await check_byte_stream(make_tcp_pair)

Every check runs in both directions (first end to second, then second to
first), so a client and a server role are both exercised. A broken contract
raises ``AssertionError`` saying what went wrong. The checks:

* ordering: full-duplex bytes arrive complete and in order, and ``receive``
  keeps to ``at_least`` / ``at_most``;
* half-close: after ``send(..., is_complete=True)`` the peer reads every byte
  then end of stream (``b""``, again on every later call) and can still answer;
  sending again raises a ``NetconnError``;
* graceful cancel: ``cancel()`` delivers what was sent before it, then end of
  stream; sending afterwards raises a ``NetconnError``;
* receive cancellation: cancelling a waiting ``receive`` loses no bytes;
* busy: a second concurrent ``send`` (or ``receive``) raises :class:`~netconn.Busy`;
* back-pressure: a fast sender to a reader that does not read holds at most
  ``bound`` bytes in the process (``buffered_bytes`` of both ends), and the
  data still arrives intact when the reader catches up.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, suppress
from typing import Protocol

from .errors import Busy, NetconnError

__all__ = [
    "ByteStream",
    "PairFactory",
    "check_back_pressure",
    "check_busy",
    "check_byte_stream",
    "check_graceful_cancel",
    "check_half_close",
    "check_ordering",
    "check_receive_cancellation",
]

DEFAULT_BOUND = 4 << 20
"""Bytes both ends together may hold in the process under back-pressure."""


class ByteStream(Protocol):
    """What the checks use of one end of a byte stream (``Connection`` fits)."""

    async def send(self, data: bytes, *, is_complete: bool | None = ...) -> None: ...

    async def receive(self, at_least: int = ..., at_most: int = ...) -> bytes: ...

    async def cancel(self) -> None: ...

    @property
    def buffered_bytes(self) -> tuple[int, int]:
        """(bytes waiting to be sent, bytes received and not read) held in the process."""
        ...


PairFactory = Callable[[], AbstractAsyncContextManager[tuple[ByteStream, ByteStream]]]
"""Opens a fresh connected pair; closing the context releases both ends."""


def _payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def _read_to_eof(stream: ByteStream, at_most: int = 65536) -> bytes:
    chunks = bytearray()
    while data := await stream.receive(1, at_most):
        assert len(data) <= at_most, f"receive returned {len(data)} bytes, at_most was {at_most}"
        chunks += data
    return bytes(chunks)


async def _wait_for(predicate: Callable[[], bool], what: str, seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            for _ in iter(int, 1):  # until the predicate holds or time runs out
                if predicate():
                    return
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"timed out waiting until {what}") from None


async def _both_directions(
    make_pair: PairFactory,
    check: Callable[[ByteStream, ByteStream], object],
    seconds: float,
) -> None:
    for reverse in (False, True):
        async with asyncio.timeout(seconds), make_pair() as (first, second):
            sender, receiver = (second, first) if reverse else (first, second)
            result = check(sender, receiver)
            if asyncio.iscoroutine(result):
                await result


async def check_ordering(
    make_pair: PairFactory, *, size: int = 4 << 20, seconds: float = 30.0
) -> None:
    """Both ends send ``size`` bytes at once; each receives them intact and in order."""

    async def pump(stream: ByteStream, data: bytes, seed: int) -> None:
        sizes = random.Random(seed)
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            step = sizes.choice((1, 7, 1000, 65536, 300_000))
            await stream.send(bytes(view[offset : offset + step]))
            offset += step
        await stream.send(b"", is_complete=True)

    async def drain(stream: ByteStream, seed: int) -> str:
        sizes = random.Random(seed)
        digest = hashlib.sha256()
        while True:
            at_most = sizes.choice((1, 3, 4096, 65536, 1 << 20))
            at_least = sizes.randint(0, at_most)
            data = await stream.receive(at_least, at_most)
            assert len(data) <= at_most, f"got {len(data)} bytes, at_most was {at_most}"
            if not data and at_least > 0:
                return digest.hexdigest()
            assert data or at_least == 0, "receive returned nothing before end of stream"
            digest.update(data)

    async def run(a: ByteStream, b: ByteStream) -> None:
        to_b, to_a = _payload(size, 1), _payload(size // 2, 2)
        async with asyncio.TaskGroup() as group:
            group.create_task(pump(a, to_b, 3))
            group.create_task(pump(b, to_a, 4))
            got_b = group.create_task(drain(b, 5))
            got_a = group.create_task(drain(a, 6))
        assert got_b.result() == hashlib.sha256(to_b).hexdigest(), "bytes differ a -> b"
        assert got_a.result() == hashlib.sha256(to_a).hexdigest(), "bytes differ b -> a"

    await _both_directions(make_pair, run, seconds)


async def check_half_close(make_pair: PairFactory, *, seconds: float = 30.0) -> None:
    """After one end finishes sending, the other reads to EOF and can still answer."""

    async def run(a: ByteStream, b: ByteStream) -> None:
        request = _payload(300_000, 7)
        await a.send(request, is_complete=True)
        assert await _read_to_eof(b) == request, "bytes before end of stream differ"
        assert await b.receive(1, 10) == b"", "end of stream is not repeated"
        try:
            await a.send(b"more")
        except NetconnError:
            pass
        else:
            raise AssertionError("send after is_complete=True did not raise")
        answer = _payload(200_000, 8)
        await b.send(answer, is_complete=True)
        assert await _read_to_eof(a) == answer, "the answer after a half-close differs"

    await _both_directions(make_pair, run, seconds)


async def check_graceful_cancel(make_pair: PairFactory, *, seconds: float = 30.0) -> None:
    """``cancel()`` delivers everything sent before it, then end of stream."""

    async def run(a: ByteStream, b: ByteStream) -> None:
        data = _payload(3 << 20, 9)
        reader = asyncio.create_task(_read_to_eof(b))
        await a.send(data)
        await a.cancel()
        got = await reader
        assert len(got) == len(data), f"cancel() lost {len(data) - len(got)} bytes"
        assert got == data, "bytes before cancel() differ"
        try:
            await a.send(b"late")
        except NetconnError:
            pass
        else:
            raise AssertionError("send after cancel() did not raise")

    await _both_directions(make_pair, run, seconds)


async def check_receive_cancellation(make_pair: PairFactory, *, seconds: float = 30.0) -> None:
    """A ``receive`` cancelled while it waits for more loses none of what arrived."""

    async def run(a: ByteStream, b: ByteStream) -> None:
        waiting = asyncio.create_task(b.receive(20, 20))
        await a.send(b"0123456789")
        await _wait_for(lambda: b.buffered_bytes[1] >= 10, "the first bytes arrived", seconds)
        for _ in range(3):
            await asyncio.sleep(0)
        assert not waiting.done(), "receive(at_least=20) returned after 10 bytes"
        waiting.cancel()
        with suppress(asyncio.CancelledError):
            await waiting
        await a.send(b"abcdefghij")
        assert await b.receive(20, 20) == b"0123456789abcdefghij", "a cancelled receive lost bytes"

    await _both_directions(make_pair, run, seconds)


async def check_busy(
    make_pair: PairFactory, *, size: int = 16 << 20, seconds: float = 30.0
) -> None:
    """A second concurrent ``send`` or ``receive`` on one end raises ``Busy``."""

    async def run(a: ByteStream, b: ByteStream) -> None:
        receiving = asyncio.create_task(b.receive(1, 65536))  # nothing sent yet: it waits
        for _ in range(3):
            await asyncio.sleep(0)
        assert not receiving.done(), "receive returned before anything was sent"
        try:
            await b.receive(1, 1)
        except Busy:
            pass
        else:
            raise AssertionError("a concurrent receive did not raise Busy")
        data = _payload(size, 10)
        sending = asyncio.create_task(a.send(data))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not sending.done(), f"a send of {size} bytes to a reader that does not read returned"
        try:
            await a.send(b"x")
        except Busy:
            pass
        else:
            raise AssertionError("a concurrent send did not raise Busy")
        got = bytearray(await receiving)
        while len(got) < size:
            got += await b.receive(1, 1 << 20)
        assert got == data, "bytes differ after the Busy errors"
        await sending

    await _both_directions(make_pair, run, seconds)


async def check_back_pressure(
    make_pair: PairFactory,
    *,
    bound: int = DEFAULT_BOUND,
    size: int = 48 << 20,
    seconds: float = 60.0,
) -> int:
    """A fast sender to a stalled, then slow, reader keeps at most ``bound`` bytes held.

    ``size`` must exceed what the kernel's socket buffers can absorb, so that
    the sender really has to wait. Returns the most bytes seen held at once.
    """
    peaks: list[int] = []

    async def run(a: ByteStream, b: ByteStream) -> None:
        data = _payload(size, 11)
        peak = 0

        def sample() -> None:
            nonlocal peak
            held = a.buffered_bytes[0] + b.buffered_bytes[1]
            peak = max(peak, held)
            assert held <= bound, f"{held} bytes held in the process, over the bound of {bound}"

        sending = asyncio.create_task(a.send(data, is_complete=True))
        try:
            await _wait_for(lambda: b.buffered_bytes[1] > 0, "bytes arrived", seconds)
            # The reader stalls: the sender fills every buffer it can.
            for _ in range(50):
                sample()
                await asyncio.sleep(0.01)
            assert not sending.done(), "the send finished although the reader read nothing"
            digest = hashlib.sha256()
            received = 0
            # Then reads slowly, in small pieces, and finally at full speed.
            while chunk := await b.receive(1, 4096 if received < (1 << 20) else 1 << 20):
                digest.update(chunk)
                received += len(chunk)
                sample()
            await sending
        finally:
            sending.cancel()
        assert received == size, f"received {received} of {size} bytes"
        assert digest.digest() == hashlib.sha256(data).digest(), "bytes differ"
        peaks.append(peak)

    await _both_directions(make_pair, run, seconds)
    return max(peaks)


async def check_byte_stream(
    make_pair: PairFactory,
    *,
    bound: int = DEFAULT_BOUND,
    seconds: float = 60.0,
) -> None:
    """Run every check above against pairs from ``make_pair``."""
    await check_ordering(make_pair, seconds=seconds)
    await check_half_close(make_pair, seconds=seconds)
    await check_graceful_cancel(make_pair, seconds=seconds)
    await check_receive_cancellation(make_pair, seconds=seconds)
    await check_busy(make_pair, seconds=seconds)
    await check_back_pressure(make_pair, bound=bound, seconds=seconds)
