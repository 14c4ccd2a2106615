"""A bounded receive buffer that a transport feeds and a reader drains."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from .errors import Busy, NetconnError

Buffer = bytes | bytearray | memoryview

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

    __slots__ = (
        "_buffer",
        "_eof",
        "_error",
        "_limit",
        "_listener",
        "_low",
        "_owner",
        "_paused",
        "_waiter",
    )

    def __init__(self, limit: int, owner: FlowControlled) -> None:
        self._buffer = bytearray()
        self._limit = limit
        self._low = limit // 4
        self._owner = owner  # not two bound methods per connection
        self._paused = False
        self._eof = False
        self._error: NetconnError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._listener: Callable[[Buffer | None], bool] | None = None

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

    def feed(self, data: Buffer) -> None:
        """Append received bytes; pause the producer above the limit.

        With a listener that left bytes here (it has no room), pause at once:
        the kernel holds the rest, not this buffer.
        """
        if not self._buffer and self._listener is not None and self._listener(data):
            return  # the listener took them as they came
        self._buffer += data
        listener = self._listener
        if not self._paused and (listener is not None or len(self._buffer) > self._limit):
            self._paused = True
            self._owner.pause_reading()
        # _wake(), inline: this runs for every read.
        if listener is not None:
            listener(None)
        waiter = self._waiter
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

    def listen(self, listener: Callable[[Buffer | None], bool] | None) -> None:
        """Call ``listener`` at once, from the transport's callbacks (``None``: stop).

        While nothing is buffered, each read is offered as it arrives: the
        listener returns true once it took (copied) it all, false to leave it
        buffered. Otherwise it is called with ``None`` when bytes, the end or
        an error are waiting, and reads them with :meth:`take`. A layer that
        parses what arrives without a task of its own (WebSocket) saves a loop
        turn and a copy per read this way.
        """
        self._listener = listener

    def _wake(self) -> None:
        if self._listener is not None:
            self._listener(None)
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
            # A new bytearray rather than clear(): shrinking a large one in place
            # is a realloc (mremap) that the next read grows again, page by page.
            self._buffer = buffer = bytearray()
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
