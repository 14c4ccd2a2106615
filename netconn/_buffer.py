"""A bounded receive buffer that a transport feeds and a reader drains."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from ._handoff import hand
from .errors import Busy, NetconnError

Buffer = bytes | bytearray | memoryview

__all__ = ["ReceiveBuffer"]


class FlowControlled(Protocol):
    """The producer a :class:`ReceiveBuffer` pauses and resumes."""

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class _NoProducer:
    """The producer of a buffer whose transport is gone: nothing to pause or resume."""

    __slots__ = ()

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


_NO_PRODUCER = _NoProducer()

_SMALL = 4096  # reads below this join a bytearray: no object per tiny read


class ReceiveBuffer:
    """Bytes received and not yet read, with pause/resume hooks at a high and a low mark.

    Each read is kept as it came, one ``bytes`` object (small reads share a
    ``bytearray``): a receive that takes a whole read gets that object, not
    a copy of it. Data leaves the buffer only when :meth:`take` returns, so
    cancelling a waiting reader loses nothing.
    """

    __slots__ = (
        "_chunks",
        "_eof",
        "_error",
        "_limit",
        "_listener",
        "_loop",
        "_offset",
        "_owner",
        "_paused",
        "_size",
        "_waiter",
    )

    def __init__(
        self,
        limit: int,
        owner: FlowControlled,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # Unread reads, the first of them from _offset on; a read leaves as
        # soon as it is consumed, so the buffer holds only what is unread. A
        # list, not a deque: a deque's first block costs an idle connection
        # half a KiB, and at most a few hundred reads fit under the limit.
        self._chunks: list[bytes | bytearray] = []
        self._offset = 0
        self._size = 0
        self._limit = limit  # resumes at a quarter of it
        self._owner = owner  # not two bound methods per connection
        self._paused = False
        self._eof = False
        self._error: NetconnError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._listener: Callable[[Buffer | None], bool] | None = None
        # The readers' loop, learnt at the first wait when not given: asking
        # asyncio costs a getpid() system call per ask on Python 3.11.
        self._loop = loop

    def __len__(self) -> int:
        return self._size

    @property
    def at_eof(self) -> bool:
        """Whether the peer finished sending and every byte was read."""
        return self._eof and not self._size

    @property
    def eof_received(self) -> bool:
        """Whether the peer finished sending (bytes may still be buffered)."""
        return self._eof

    def feed(self, data: Buffer) -> None:
        """Append received bytes; pause the producer above the limit.

        ``data`` is copied unless it is ``bytes`` (a transport's own read).
        With a listener that left bytes here (it has no room), pause at once:
        the kernel holds the rest, not this buffer.
        """
        listener = self._listener
        if listener is not None and not self._size and listener(data):
            return  # the listener took them as they came
        size = len(data)
        if not size:
            return
        chunks = self._chunks
        if size >= _SMALL or not chunks:
            # One object, which a receive of the whole read hands out as it is.
            chunks.append(bytes(data))
        else:
            last = chunks[-1]
            if len(last) < _SMALL:
                if type(last) is bytes:
                    last = chunks[-1] = bytearray(last)
                last += data
            else:
                chunks.append(bytearray(data))
        self._size = total = self._size + size
        # _wake(), inline: this runs for every read. A waiting reader goes on
        # now, from the transport's callback, not a loop turn later.
        if listener is not None:
            if not self._paused:
                self._paused = True
                self._owner.pause_reading()
            listener(None)
        elif total > self._limit and not self._paused:
            self._paused = True
            self._owner.pause_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            hand(waiter, None, self._loop)  # type: ignore[arg-type]  # set by the wait

    def pause(self) -> None:
        """Pause the producer now (a layer above holds enough); the next :meth:`take` resumes it."""
        if not self._paused:
            self._paused = True
            self._owner.pause_reading()

    def detach(self) -> None:
        """The producer is gone: drop the reference to it (a cycle with its owner
        that only the garbage collector would otherwise free)."""
        self._owner = _NO_PRODUCER

    def end(self, error: NetconnError | None) -> None:
        """The transport is gone: :meth:`feed_eof` (``error`` None) or :meth:`set_error`,
        then :meth:`detach`, in one call."""
        if error is None:
            self._eof = True
        elif self._error is None:
            self._error = error
        # _wake(), without its call.
        if self._listener is not None:
            self._listener(None)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._owner = _NO_PRODUCER

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
        while self._size < at_least and not self._eof and self._error is None:
            self._waiter = self._running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def take(self, at_most: int, at_least: int = 1) -> bytes:
        """Remove and return up to ``at_most`` buffered bytes (no waiting).

        Stops at the end of a read once it has ``at_least`` bytes (or all
        there are): a whole read comes back as it is, without a copy.
        Raises the stored error when nothing is left to read.
        """
        size = self._size
        if not size:
            if self._error is not None:
                raise self._error
            if self._paused:
                self._paused = False
                self._owner.resume_reading()
            return b""
        chunks = self._chunks
        if size <= at_most and len(chunks) == 1 and not self._offset:
            # All there is, one read, taken whole: the common small receive.
            first = chunks.pop()
            self._size = 0
            if self._paused:
                self._paused = False
                self._owner.resume_reading()
            return first if type(first) is bytes else bytes(first)
        first = chunks[0]
        offset = self._offset
        available = len(first) - offset
        if available >= at_least or available >= at_most or len(chunks) == 1:
            if available <= at_most:
                data = bytes(first) if not offset else bytes(memoryview(first)[offset:])
                del chunks[0]
                offset = 0
            else:
                data = bytes(memoryview(first)[offset : offset + at_most])
                offset += at_most
        else:
            # Several reads make up the request: one copy into one object.
            parts: list[Buffer] = []
            need = at_most
            while need and chunks:
                piece = memoryview(chunks[0])[offset:]
                if len(piece) > need:
                    parts.append(piece[:need])
                    offset += need
                    need = 0
                else:
                    parts.append(piece)
                    need -= len(piece)
                    del chunks[0]
                    offset = 0
            data = b"".join(parts)
        self._size -= len(data)
        self._offset = offset
        if self._paused and self._size <= self._limit >> 2:
            self._paused = False
            self._owner.resume_reading()
        return data

    async def receive(self, at_least: int, at_most: int) -> bytes:
        """Wait for ``at_least`` bytes (fewer only at EOF), return at most ``at_most``."""
        if self._waiter is not None:
            raise Busy("another task is already receiving on this connection")
        # wait(), inline: one coroutine less per read.
        while self._size < at_least and not self._eof and self._error is None:
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        if self._size <= at_most and len(chunks) == 1 and not self._offset and not self._paused:
            # take()'s common case without its call: all there is, one read, taken whole.
            self._size = 0
            first = chunks.pop()
            return first if type(first) is bytes else bytes(first)
        return self.take(at_most, at_least)
