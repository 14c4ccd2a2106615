"""A bounded receive buffer that a transport feeds and a reader drains."""

from __future__ import annotations

import asyncio
from typing import Protocol

from .errors import Busy, NetconnError

__all__ = ["ReceiveBuffer"]


class FlowControlled(Protocol):
    """The producer a :class:`ReceiveBuffer` pauses and resumes."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class ReceiveBuffer:
    """Bytes received and not yet read, with pause/resume hooks at a high and a low mark.

    Data leaves the buffer only when :meth:`take` returns, so cancelling a
    waiting reader loses nothing.
    """

    __slots__ = ("_buffer", "_eof", "_error", "_limit", "_low", "_owner", "_paused", "_waiter")

    def __init__(
        self,
        limit: int,
        owner: FlowControlled,
    ) -> None:
        self._buffer = bytearray()
        self._limit = limit
        self._low = limit // 4
        self._owner = owner  # not two bound methods per connection
        self._paused = False
        self._eof = False
        self._error: NetconnError | None = None
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        return len(self._buffer)

    @property
    def at_eof(self) -> bool:
        """Whether the peer finished sending and every byte was read."""
        return self._eof and not self._buffer

    @property
    def eof_received(self) -> bool:
        """Whether the peer finished sending (bytes may still be buffered)."""
        return self._eof

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes; pause the producer above the limit."""
        self._buffer += data
        if not self._paused and len(self._buffer) > self._limit:
            self._paused = True
            self._owner.pause_reading()
        waiter = self._waiter  # _wake(), inline: this runs for every read
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def feed_eof(self) -> None:
        """Record that the peer will send nothing more."""
        self._eof = True
        self._wake()

    def set_error(self, error: NetconnError) -> None:
        """Fail readers with ``error`` once the buffered bytes are read."""
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, at_least: int) -> None:
        """Wait until ``at_least`` bytes are buffered, or EOF or an error arrived."""
        if self._waiter is not None:
            raise Busy("another task is already receiving on this connection")
        while len(self._buffer) < at_least and not self._eof and self._error is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def take(self, at_most: int) -> bytes:
        """Remove and return up to ``at_most`` buffered bytes (no waiting).

        Raises the stored error when nothing is left to read.
        """
        buffer = self._buffer
        if not buffer and self._error is not None:
            raise self._error
        if len(buffer) <= at_most:
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(memoryview(buffer)[:at_most])
            del buffer[:at_most]
        if self._paused and len(buffer) <= self._low:
            self._paused = False
            self._owner.resume_reading()
        return data

    async def receive(self, at_least: int, at_most: int) -> bytes:
        """Wait for ``at_least`` bytes (fewer only at EOF), return at most ``at_most``."""
        if self._waiter is not None:
            raise Busy("another task is already receiving on this connection")
        # wait(), inline: one coroutine less per read.
        while len(self._buffer) < at_least and not self._eof and self._error is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.take(at_most)
