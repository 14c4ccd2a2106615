"""Message framers over any byte stream: type-length-value and a plain length prefix.

A byte stream (TCP, TLS, a QUIC stream) has no message boundaries; these
stacks add them. ``TLV`` prefixes each message with a type and a length,
like Apple's ``TLV``; ``LengthPrefix`` with a length only. Integers are
big-endian (network order) and of fixed width.

Framers do no I/O of their own: they read and write the inner
:class:`~netconn.stacks.base.ByteChannel`, so they work on any byte channel,
including one that is not a connection's whole stack (``TLV(...).frame(stream)``).
A frame is never larger than ``max_length``: a larger one from the peer fails
the channel with :class:`MessageTooLarge` before any of its body is buffered,
and a larger one given to ``send`` is refused without sending anything.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ..endpoint import Address
from ..errors import (
    Busy,
    ConnectionClosed,
    EndOfStream,
    MessageTooLarge,
    NetconnError,
)
from .base import AttemptContext, ByteChannel, Channel, Layered, Message, MessageProtocol, Stack
from .tcp import TCP

__all__ = ["TLV", "FramerChannel", "LengthPrefix"]

_CHUNK = 256 * 1024
_JOIN_BELOW = 64 * 1024  # header and body go in one write below this size


def _check_width(name: str, width: int, allowed: tuple[int, ...]) -> None:
    if width not in allowed:
        raise ValueError(f"{name} must be one of {allowed} bytes, got {width}")


def _check_max(max_length: int) -> None:
    if max_length < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")


def _limit(max_length: int, length_width: int) -> int:
    """``max_length``, capped at the largest value the length field can hold."""
    return min(max_length, (1 << (8 * length_width)) - 1)


@dataclass(frozen=True, slots=True)
class TLV(MessageProtocol):
    """Type-length-value messages over a byte stream.

    Send with ``connection.send(data, type=7)``; received messages carry
    ``metadata["type"]``. Plain ``send(data)`` uses ``default_type``.
    """

    inner: Stack = field(default_factory=TCP)
    """The byte stream underneath; default ``TCP()``."""
    type_width: int = 4
    """Bytes in the type field: 1, 2, 4 or 8; default 4 (as Apple's TLV)."""
    length_width: int = 4
    """Bytes in the length field: 1, 2, 4 or 8; default 4."""
    max_length: int = 1 << 20
    """Largest value, in bytes, sent or accepted; default 1 MiB (less when the
    length field cannot hold it)."""
    default_type: int = 0
    """Type used by a ``send`` that names none; default 0."""

    def __post_init__(self) -> None:
        _check_width("type_width", self.type_width, (1, 2, 4, 8))
        _check_width("length_width", self.length_width, (1, 2, 4, 8))
        _check_max(self.max_length)
        if not 0 <= self.default_type < 1 << (8 * self.type_width):
            raise ValueError(f"default_type {self.default_type} does not fit the type field")

    @property
    def inner_stack(self) -> Stack:
        return self.inner

    def frame(self, channel: ByteChannel, ctx: AttemptContext | None = None) -> FramerChannel:
        """TLV messages over ``channel`` (any byte channel, e.g. a QUIC stream)."""
        return FramerChannel(
            channel,
            self.type_width,
            self.length_width,
            _limit(self.max_length, self.length_width),
            self.default_type,
            ctx,
        )

    async def open_channel(self, ctx: AttemptContext, address: Address) -> FramerChannel:
        return self.frame(_byte_channel(await self.inner.open_channel(ctx, address)), ctx)

    async def accept_channel(self, ctx: AttemptContext, inner: Channel) -> FramerChannel:
        return self.frame(_byte_channel(await self.inner.accept_channel(ctx, inner)), ctx)


@dataclass(frozen=True, slots=True)
class LengthPrefix(MessageProtocol):
    """Messages over a byte stream, each preceded by its length."""

    inner: Stack = field(default_factory=TCP)
    """The byte stream underneath; default ``TCP()``."""
    width: int = 4
    """Bytes in the length field: 1, 2, 4 or 8; default 4."""
    max_length: int = 1 << 20
    """Largest message, in bytes, sent or accepted; default 1 MiB (less when the
    length field cannot hold it)."""

    def __post_init__(self) -> None:
        _check_width("width", self.width, (1, 2, 4, 8))
        _check_max(self.max_length)

    @property
    def inner_stack(self) -> Stack:
        return self.inner

    def frame(self, channel: ByteChannel, ctx: AttemptContext | None = None) -> FramerChannel:
        """Length-prefixed messages over ``channel`` (any byte channel)."""
        return FramerChannel(channel, 0, self.width, _limit(self.max_length, self.width), 0, ctx)

    async def open_channel(self, ctx: AttemptContext, address: Address) -> FramerChannel:
        return self.frame(_byte_channel(await self.inner.open_channel(ctx, address)), ctx)

    async def accept_channel(self, ctx: AttemptContext, inner: Channel) -> FramerChannel:
        return self.frame(_byte_channel(await self.inner.accept_channel(ctx, inner)), ctx)


def _byte_channel(channel: Channel) -> ByteChannel:
    if not (hasattr(channel, "receive") and hasattr(channel, "send")):
        raise TypeError("a framer needs a byte stream underneath (TCP, TLS, a QUIC stream)")
    return channel  # type: ignore[return-value]


class FramerChannel(Layered[ByteChannel]):
    """Frames over a byte channel: ``[type][length][value]`` (no type for a length prefix).

    A receive that is cancelled part-way keeps what it read, so the next
    receive resumes the same frame: the stream never loses its framing.
    """

    def __init__(
        self,
        inner: ByteChannel,
        type_width: int,
        length_width: int,
        max_length: int,
        default_type: int,
        ctx: AttemptContext | None,
    ) -> None:
        self._inner = inner
        self._type_width = type_width
        self._length_width = length_width
        self._header_size = type_width + length_width
        self._max_length = max_length
        self._default_type = default_type
        self._ctx = ctx
        self._sending = False
        self._receiving = False
        self._error: NetconnError | None = None
        # The frame being received: its header, then its body so far.
        self._header = bytearray()
        self._type = 0
        self._length: int | None = None
        self._body = bytearray()

    @property
    def maximum_message_size(self) -> int:
        return self._max_length

    @property
    def buffered_bytes(self) -> int:
        """Bytes of a partly received frame held here (at most ``max_length`` + header)."""
        return len(self._header) + len(self._body)

    async def send_message(
        self, data: bytes | bytearray | memoryview, is_complete: bool, type: int | None = None
    ) -> None:
        """Send ``data`` as one frame (of ``type``, for TLV).

        Raises :class:`MessageTooLarge` (nothing sent) above ``max_length``,
        ``ValueError`` for a type that does not fit or ``is_complete=False``
        (frames are sent whole), :class:`Busy` while another send runs.
        If cancelled part-way the channel is aborted (its framing would be lost).
        """
        if not is_complete:
            raise ValueError("framed messages are sent whole (is_complete=False is not supported)")
        view = memoryview(data).cast("B")
        if len(view) > self._max_length:
            raise MessageTooLarge(len(view), self._max_length, "frame")
        if self._error is not None:
            raise self._error
        header = b""
        if self._type_width:
            kind = self._default_type if type is None else type
            if not 0 <= kind < 1 << (8 * self._type_width):
                raise ValueError(f"type {kind} does not fit in {self._type_width} bytes")
            header = kind.to_bytes(self._type_width, "big")
        elif type is not None:
            raise ValueError("a length-prefix framer has no message type")
        header += len(view).to_bytes(self._length_width, "big")
        if self._sending:
            raise Busy("another task is already sending on this connection")
        self._sending = True
        try:
            if len(view) < _JOIN_BELOW:
                await self._inner.send(header + view, False)
            else:
                await self._inner.send(header, False)
                await self._inner.send(view, False)
        except asyncio.CancelledError:
            # Part of the frame may be out: the stream's framing is lost.
            self._fail(ConnectionClosed("a send was cancelled part-way through a frame"))
            raise
        finally:
            self._sending = False

    async def receive_message(self) -> Message:
        """The next whole frame; ``metadata["type"]`` holds a TLV frame's type.

        Raises :class:`ConnectionClosed` when the stream ended between frames,
        :class:`EndOfStream` when it ended inside one, and
        :class:`MessageTooLarge` (failing the channel: its framing is lost)
        for a frame longer than ``max_length``.
        """
        if self._receiving:
            raise Busy("another task is already receiving on this connection")
        if self._error is not None:
            raise self._error
        self._receiving = True
        try:
            while self._length is None:
                missing = self._header_size - len(self._header)
                data = await self._inner.receive(1, missing)
                if not data:
                    if not self._header:
                        raise ConnectionClosed("the peer ended the stream")
                    raise self._fail(EndOfStream(bytes(self._header), self._header_size))
                self._header += data
                if len(self._header) == self._header_size:
                    self._parse_header()
            while len(self._body) < self._length:
                want = min(self._length - len(self._body), _CHUNK)
                data = await self._inner.receive(1, want)
                if not data:
                    raise self._fail(EndOfStream(bytes(self._body), self._length))
                self._body += data
            body = bytes(self._body)
            metadata: dict[str, Any] = {"type": self._type} if self._type_width else {}
            self._header.clear()
            self._body = bytearray()
            self._length = None
            return Message(body, True, metadata)
        finally:
            self._receiving = False

    def _parse_header(self) -> None:
        header = bytes(self._header)
        self._type = int.from_bytes(header[: self._type_width], "big")
        length = int.from_bytes(header[self._type_width :], "big")
        if length > self._max_length:
            raise self._fail(MessageTooLarge(length, self._max_length, "received frame"))
        self._length = length

    def _fail(self, error: NetconnError) -> NetconnError:
        # The stream's framing is lost: nothing after this can be trusted.
        self._error = error
        self._inner.abort()
        if self._ctx is not None:
            self._ctx.on_lost(error)
        return error

    async def close(self) -> None:
        """Close the byte stream underneath gracefully."""
        await self._inner.close()

    def abort(self) -> None:
        self._inner.abort()
