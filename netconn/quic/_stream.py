"""QUIC streams and datagrams as the application sees them.

A :class:`QUICStream` holds what arrived until the application reads it and
asks its channel (:mod:`netconn.quic._channel`) to queue what it sends; the
channel feeds it events and enforces the bounds.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Literal, overload

from ..errors import (
    Busy,
    EndOfStream,
    InvalidState,
    MessageTooLarge,
    NetconnError,
    StreamReset,
)
from ..state import Cancelled, Failed, Ready, State

if TYPE_CHECKING:
    from ._channel import QUICChannel

__all__ = [
    "DatagramsNotEnabled",
    "DeliveryReceipt",
    "Directionality",
    "QUICDatagrams",
    "QUICStream",
]

Directionality = Literal["bidirectional", "unidirectional"]
"""Whether a stream carries data both ways or only from its opener."""

_SEND_CHUNK = 256 * 1024  # bytes handed to the engine per step of a large send
_SMALL = 4096  # received pieces below this share a bytearray: no object per tiny frame


class DatagramsNotEnabled(InvalidState):
    """The peer did not enable QUIC DATAGRAM frames (or this side did not)."""


class DeliveryReceipt:
    """Resolves once the peer has acknowledged every byte of one ``send``.

    ``await receipt`` returns when acknowledged; it raises
    :class:`~netconn.StreamReset` or the connection's error if the bytes can
    no longer be delivered.
    """

    def __init__(self, future: asyncio.Future[None], end: int) -> None:
        self._future = future
        self.end_offset = end
        """The stream offset that must be acknowledged."""

    @property
    def acknowledged(self) -> bool:
        """Whether the peer acknowledged the bytes."""
        return (
            self._future.done()
            and not self._future.cancelled()
            and self._future.exception() is None
        )

    def __await__(self) -> Any:
        return asyncio.shield(self._future).__await__()


class QUICStream:
    """One QUIC stream, with the byte-stream API of a connection.

    ``send``/``receive``/``receive_exactly`` behave as on a TCP connection;
    ``reset`` and ``stop_sending`` abort one direction with an application
    error code, which the peer sees as :class:`~netconn.StreamReset`.
    """

    def __init__(self, channel: QUICChannel, stream_id: int) -> None:
        self._channel = channel
        self.id = stream_id
        """The QUIC stream ID."""
        local = (stream_id & 1) == (0 if channel.is_client else 1)
        self.is_local = local
        """Whether this side opened the stream."""
        self.directionality: Directionality = "unidirectional" if stream_id & 2 else "bidirectional"
        """Bidirectional, or unidirectional (from the opener to the other side)."""
        self.can_send = not (self.directionality == "unidirectional" and not local)
        self.can_receive = not (self.directionality == "unidirectional" and local)
        # Received and unread: the engine's pieces as they came (no copy, and
        # each leaves once read; small ones that queue up share a bytearray),
        # the first of them from _offset on.
        self._chunks: list[bytes | bytearray] = []
        self._offset = 0
        self._size = 0
        self._eof = not self.can_receive
        self._receive_error: NetconnError | None = None
        self._receive_waiter: asyncio.Future[None] | None = None
        self._send_closed = not self.can_send
        self._send_error: NetconnError | None = None
        self._send_waiter: asyncio.Future[None] | None = None
        self._sending = False
        self._receipts: list[tuple[int, asyncio.Future[None]]] = []  # few, oldest first
        self._priority = 0
        self._reset_code: int | None = None
        self._stopped_code: int | None = None

    def __repr__(self) -> str:
        return f"<QUICStream {self.id} {self.directionality} {self.state}>"

    # State

    @property
    def state(self) -> State:
        """``Ready`` while a direction is open; ``Failed(error)`` after a reset by the
        peer or the connection's end; ``Cancelled`` once both directions ended here."""
        channel_error = self._channel.error
        if channel_error is not None and not (self._send_closed and self._eof):
            return Failed(channel_error)
        for error in (self._receive_error, self._send_error):
            if isinstance(error, StreamReset) and error.by_peer:
                return Failed(error)
        if self._send_closed and (self._eof or self._receive_error is not None):
            return Cancelled()
        return Ready()

    @property
    def send_state(self) -> Literal["open", "finished", "reset"]:
        """The sending direction: open, ended with FIN, or reset (by us or a STOP_SENDING)."""
        if self._send_error is not None or self._reset_code is not None:
            return "reset"
        return "finished" if self._send_closed else "open"

    @property
    def receive_state(self) -> Literal["open", "finished", "reset"]:
        """The receiving direction: open, ended (FIN seen), or reset by the peer."""
        if isinstance(self._receive_error, StreamReset) and self._receive_error.by_peer:
            return "reset"
        return "finished" if self._eof else "open"

    @property
    def receive_complete(self) -> bool:
        """Whether the peer ended its direction and every byte was read."""
        return self._eof and not self._size

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and not yet read."""
        return self._size

    @property
    def queued_bytes(self) -> int:
        """Bytes given to ``send`` that the peer has not acknowledged yet."""
        return self._channel._queued(self)

    @property
    def priority(self) -> int:
        """Send priority: streams with a higher value send first; default 0."""
        return self._priority

    @priority.setter
    def priority(self, value: int) -> None:
        self._priority = int(value)
        self._channel._reprioritise(self)

    # Sending

    @overload
    async def send(
        self,
        data: bytes | bytearray | memoryview,
        *,
        is_complete: bool = False,
        receipt: Literal[False] = False,
    ) -> None: ...

    @overload
    async def send(
        self,
        data: bytes | bytearray | memoryview,
        *,
        is_complete: bool = False,
        receipt: Literal[True],
    ) -> DeliveryReceipt: ...

    async def send(
        self,
        data: bytes | bytearray | memoryview,
        *,
        is_complete: bool = False,
        receipt: bool = False,
    ) -> DeliveryReceipt | None:
        """Queue ``data``; return once it is all queued under the send bounds.

        ``is_complete=True`` ends the direction (FIN) after ``data``. With
        ``receipt=True`` returns a :class:`DeliveryReceipt` to await the
        peer's acknowledgement. Raises :class:`StreamReset` if the peer sent
        STOP_SENDING, :class:`InvalidState` after FIN or reset, :class:`Busy`
        if another task is sending. If cancelled part-way, a prefix of
        ``data`` was queued and will be delivered.
        """
        if self._sending:
            raise Busy("another task is already sending on this stream")
        self._check_send()
        view = memoryview(data).cast("B")
        channel = self._channel
        if receipt:
            channel._check_receipts_supported()
        self._sending = True
        try:
            offset, total = 0, len(view)
            while True:
                await channel._wait_send_room(self)
                self._check_send()
                end = min(total, offset + _SEND_CHUNK)
                last = end == total
                channel._write(self, bytes(view[offset:end]), is_complete and last)
                offset = end
                if last:
                    break
            if is_complete:
                self._send_closed = True
                self._check_done()
            if receipt:
                return channel._receipt(self)
            return None
        finally:
            self._sending = False

    def _check_send(self) -> None:
        if not self.can_send:
            raise InvalidState(f"stream {self.id} is receive-only")
        if self._send_error is not None:
            raise self._send_error
        self._channel._check_open()
        if self._send_closed:
            raise InvalidState(f"stream {self.id} already ended its sending direction")

    def reset(self, code: int = 0) -> None:
        """Abort sending with application error ``code`` (RESET_STREAM). Never blocks.

        Queued bytes are discarded; the peer's reads fail with
        :class:`StreamReset` carrying ``code``.
        """
        if not self.can_send or self._reset_code is not None:
            return
        self._reset_code = code
        self._send_closed = True
        self._send_error = StreamReset(code, by_peer=False, what="reset")
        self._channel._reset(self, code)
        self._check_done()

    def stop_sending(self, code: int = 0) -> None:
        """Ask the peer to stop sending, with application error ``code`` (STOP_SENDING).

        Unread bytes are discarded; later reads raise :class:`StreamReset`.
        """
        if not self.can_receive or self._stopped_code is not None:
            return
        self._stopped_code = code
        self._channel._stop(self, code)
        consumed = self._size
        self._chunks.clear()
        self._offset = self._size = 0
        if consumed:
            self._channel._consumed(self, consumed)
        self._fail_receive(StreamReset(code, by_peer=False, what="stopped"))
        self._check_done()

    async def close(self) -> None:
        """End the sending direction (FIN) if still open. Returns once queued.

        Raises :class:`Busy` while another task is sending on the stream.
        """
        if self._sending:
            raise Busy("another task is sending on this stream; FIN would cut it short")
        if self.can_send and not self._send_closed and self._send_error is None:
            self._channel._check_open()
            self._channel._write(self, b"", True)
            self._send_closed = True
            self._check_done()

    # Receiving

    async def receive(self, at_least: int = 1, at_most: int = 65536) -> bytes:
        """Return between ``at_least`` and ``at_most`` bytes.

        Returns fewer than ``at_least`` only at the end of the stream (``b""``
        once everything was read). Raises :class:`StreamReset` after a
        RESET_STREAM from the peer, the connection's error if it ended.
        Cancelling a waiting receive loses no bytes.
        """
        if not 0 <= at_least <= at_most or at_most < 1:
            raise ValueError(
                f"need 0 <= at_least <= at_most and at_most >= 1, got {at_least}, {at_most}"
            )
        if not self.can_receive:
            raise InvalidState(f"stream {self.id} is send-only")
        if self._receive_waiter is not None:
            raise Busy("another task is already receiving on this stream")
        while self._size < at_least and not self._eof and self._receive_error is None:
            self._receive_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._receive_waiter
            finally:
                self._receive_waiter = None
        if not self._size:
            self._check_done()
            if self._receive_error is not None:
                raise self._receive_error
            return b""
        data = self._take(at_most)
        self._channel._consumed(self, len(data))
        if self._eof and not self._size:
            self._check_done()
        return data

    def _take(self, at_most: int) -> bytes:
        """Remove and return the first ``at_most`` buffered bytes (or all there are)."""
        chunks = self._chunks
        offset = self._offset
        first = chunks[0]
        if len(chunks) == 1 or len(first) - offset >= at_most:
            end = min(len(first), offset + at_most)
            if not offset and end == len(first) and type(first) is bytes:
                data = first  # a whole piece, as it came
            else:
                data = bytes(memoryview(first)[offset:end])
            if end == len(first):
                del chunks[0]
                end = 0
            self._offset = end
        else:
            # One copy of several pieces; the consumed ones leave in one step.
            parts: list[memoryview] = []
            need = at_most
            done = 0
            for chunk in chunks:
                piece = memoryview(chunk)[offset:]
                offset = 0
                if len(piece) > need:
                    parts.append(piece[:need])
                    offset = len(chunk) - len(piece) + need
                    break
                parts.append(piece)
                need -= len(piece)
                done += 1
                if not need:
                    break
            del chunks[:done]
            self._offset = offset
            data = b"".join(parts)
        self._size -= len(data)
        return data

    async def receive_exactly(self, size: int) -> bytes:
        """Return exactly ``size`` bytes.

        Raises :class:`EndOfStream` (with ``partial``) if the stream ends first.
        """
        data = await self.receive(size, size) if size else b""
        if len(data) < size:
            raise EndOfStream(data, size)
        return data

    # Fed by the channel

    def _feed(self, data: bytes, end: bool) -> None:
        if self._stopped_code is not None:
            if data:
                self._channel._consumed(self, len(data))  # nobody will read it
        elif data:
            size = len(data)
            chunks = self._chunks
            last = chunks[-1] if chunks else None
            if size >= _SMALL or last is None or len(last) >= _SMALL:
                chunks.append(data)
            elif type(last) is bytearray:
                last += data
            else:
                joined = bytearray(last)
                joined += data
                chunks[-1] = joined
            self._size += size
        if end:
            self._eof = True
            if not self._size:
                self._check_done()
        waiter = self._receive_waiter  # once per packet: no call when already woken
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail_receive(self, error: NetconnError) -> None:
        if self._receive_error is None:
            self._receive_error = error
        self._wake_receiver()
        self._check_done()

    def _check_done(self) -> None:
        """Once both directions are over for the application, the channel may forget us."""
        received = (
            not self.can_receive
            or self._receive_error is not None
            or (self._eof and not self._size)
        )
        sent = not self.can_send or self._send_closed or self._send_error is not None
        if received and sent:
            self._channel._retire(self)

    def _fail_send(self, error: NetconnError) -> None:
        if self._send_error is None:
            self._send_error = error
        self._wake_sender()
        self._check_done()
        while self._receipts:
            _, future = self._receipts.pop(0)
            if not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: an unawaited receipt must not warn

    def _wake_receiver(self) -> None:
        waiter = self._receive_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_sender(self) -> None:
        waiter = self._send_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class QUICDatagrams:
    """The connection's QUIC DATAGRAM channel (RFC 9221): unreliable, unordered messages."""

    def __init__(self, channel: QUICChannel) -> None:
        self._channel = channel
        self._queue: deque[bytes] | None = None  # made by the first datagram
        self._waiter: asyncio.Future[None] | None = None
        self._room_waiter: asyncio.Future[None] | None = None
        self.dropped = 0
        """Received datagrams dropped because ``QUIC.datagram_queue`` were unread."""

    @property
    def maximum_size(self) -> int:
        """The largest payload :meth:`send` accepts (0 if datagrams are not enabled)."""
        return self._channel.usable_datagram_frame_size

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Queue one datagram; waits while ``QUIC.datagram_queue`` datagrams are unsent.

        Raises :class:`DatagramsNotEnabled` when either side did not enable
        datagrams, :class:`MessageTooLarge` above :attr:`maximum_size`.
        """
        channel = self._channel
        channel._check_open()
        payload = bytes(data)
        maximum = channel.usable_datagram_frame_size
        if maximum == 0:
            who = "this side" if channel.options.max_datagram_frame_size is None else "the peer"
            raise DatagramsNotEnabled(f"{who} did not enable QUIC datagrams")
        if len(payload) > maximum:
            raise MessageTooLarge(len(payload), maximum, "datagram")
        while channel.quic.queued_datagrams >= channel.options.datagram_queue:
            self._room_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._room_waiter
            finally:
                self._room_waiter = None
            channel._check_open()
        channel.quic.send_datagram_frame(payload)
        channel._schedule_transmit()

    async def receive(self) -> bytes:
        """The next datagram; raises the connection's error once it ended."""
        if self._waiter is not None:
            raise Busy("another task is already receiving datagrams")
        while not self._queue:
            self._channel._check_open()
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._queue.popleft()

    @property
    def pending(self) -> int:
        """Received datagrams not yet read."""
        return len(self._queue) if self._queue is not None else 0

    def _feed(self, data: bytes) -> None:
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if len(queue) >= self._channel.options.datagram_queue:
            self.dropped += 1
            return
        queue.append(data)
        self._wake()

    def _wake(self) -> None:
        for waiter in (self._waiter, self._room_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
