"""WebSocket (RFC 6455) over any byte stream, on the sans-I/O core of ``websockets``.

How this works: ``websockets``' ``ClientProtocol`` / ``ServerProtocol`` own
every protocol rule (handshake, framing, masking, permessage-deflate, the close
handshake). This module is the thin glue: it feeds the protocol what the inner
channel received, writes what the protocol wants sent, and turns its frame
events into whole messages.

Reading goes on while the application is busy (so pings are answered and
pongs seen). Over TCP, frames are parsed in the transport's callback as the
bytes arrive, straight from the read (no task, no loop turn, no copy in
between); over TLS a background task reads the inner channel. Reading stops
while the unread messages hold ``Parameters.receive_buffer`` bytes or 256 KiB,
whichever is less, so the receive side holds at most that, plus what one read
(at most 256 KiB) decodes to, plus one partly received message (at most
``max_message_size``). ``websockets`` buffers nothing itself on the way out:
``send`` returns once the inner channel took the frame under its own send
bound (over TCP ``Parameters.send_buffer`` or 256 KiB, whichever is less); a
large frame goes out as its header and its payload, not joined.

What we add on top of the library: reassembly of fragments into messages,
fail-fast UTF-8 validation of text messages (RFC 6455 §8.1: the library leaves
it to the I/O layer), keepalive pings with a timeout, and the mapping of every
outcome to :mod:`netconn.errors`.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import http
import logging
import os
import secrets
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from websockets.client import ClientProtocol
from websockets.exceptions import (
    InvalidHandshake,
    InvalidStatus,
    PayloadTooBig,
    WebSocketException,
)
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol
from websockets.protocol import State as WSState
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.typing import Origin, Subprotocol
from websockets.uri import WebSocketURI

try:
    from websockets.speedups import apply_mask
except ImportError:  # the library built without its C extension
    from websockets.utils import apply_mask

from .._buffer import ReceiveBuffer
from .._handoff import hand
from .._turn import Turn
from ..endpoint import Address
from ..errors import (
    ApplicationClosed,
    Busy,
    ConnectionClosed,
    ConnectionTimeout,
    HandshakeRejected,
    InvalidState,
    MessageTooLarge,
    NetconnError,
    ProtocolError,
)
from .base import AttemptContext, ByteChannel, Channel, Layered, Message, MessageProtocol, Stack
from .tcp import TCP, TCPChannel
from .tls import TLS

__all__ = [
    "CloseCode",
    "HandshakeRequest",
    "WebSocket",
    "WebSocketChannel",
    "WebSocketHandshake",
]

logger = logging.getLogger("netconn.websocket")

_READ_CHUNK = 256 * 1024  # one read's worth is what may land past the receive bound
_APART = 64 * 1024  # payloads from this size leave apart from their frame header
_KEEP = 64 * 1024  # a parser buffer up to this size is kept between small reads
_SMALL_BLOCK = 4096  # a drained parser buffer below this size is given up at once
_SMALL_READS = 16  # a larger one is given up after this many small reads in a row
_LEAD = 4096  # payload bytes that go with the header, so it is no TCP segment of its own
_SLICE = 1024  # reads up to this size are copied from a slice of the parser's block
_LENGTH_16 = struct.Struct("!BBH")
_LENGTH_64 = struct.Struct("!BBQ")
_OK_CLOSE_CODES = frozenset({1000, 1001})
_ERROR_STATUSES = frozenset(int(s) for s in http.HTTPStatus if s >= 400)


@dataclass(frozen=True, slots=True)
class HandshakeRequest:
    """What a server's ``check_request`` hook sees of a client's upgrade request."""

    path: str
    """The request target, e.g. ``/chat?room=1``."""
    headers: list[tuple[str, str]]
    """The request's header lines, in order."""

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass(frozen=True, slots=True)
class WebSocketHandshake:
    """The opening handshake, once it succeeded."""

    path: str
    """The request target."""
    request_headers: list[tuple[str, str]]
    """The client's header lines."""
    response_headers: list[tuple[str, str]]
    """The server's header lines."""
    subprotocol: str | None
    """The subprotocol both sides agreed on, if any."""
    extensions: list[str]
    """Negotiated extensions, e.g. ``["permessage-deflate"]``."""


@dataclass(frozen=True, slots=True)
class WebSocket(MessageProtocol):
    """WebSocket options. ``WebSocket()`` runs over ``TCP()``; ``WebSocket(TLS())`` is ``wss``.

    Each ``send`` is one message: ``bytes`` go as a binary message, ``str`` as
    a text message. Received messages carry ``metadata["opcode"]`` (``"text"``,
    ``"binary"`` or ``"close"``; a close also has ``close_code`` and
    ``close_reason``).
    """

    inner: Stack = field(default_factory=TCP)
    """The byte stream underneath: ``TCP()`` (default) or ``TLS(TCP())``."""
    path: str = "/"
    """Client: the request target, with any query (``/chat?room=1``); default ``/``."""
    subprotocols: Sequence[str] = ()
    """Subprotocols to offer (client) or accept (server), in preference order."""
    headers: Sequence[tuple[str, str]] = ()
    """Client: extra request headers; server: extra response headers."""
    origin: str | None = None
    """Client: the ``Origin`` header to send; default none."""
    compression: bool = True
    """Offer (client) or accept (server) permessage-deflate (RFC 7692); default on."""
    max_message_size: int | None = 1 << 20
    """Largest message accepted, in bytes, after decompression; a larger one
    closes the connection with 1009. ``None``: no limit. Default 1 MiB."""
    ping_interval: float | None = 20.0
    """Seconds between keepalive pings; ``None`` sends none. Default 20."""
    ping_timeout: float | None = 20.0
    """Seconds to wait for a pong before the connection is marked not viable
    and failed; ``None`` waits forever. Default 20."""
    open_timeout: float = 10.0
    """Seconds the opening handshake may take (server: and each handshake under
    it, e.g. TLS); default 10."""
    close_timeout: float = 10.0
    """Seconds the close handshake may take before the transport is aborted; default 10."""
    check_request: Callable[[HandshakeRequest], int | None] | None = None
    """Server: return an HTTP status (e.g. 403) to reject a request, or ``None``
    to accept it. Default: accept every request."""

    def __post_init__(self) -> None:
        if self.max_message_size is not None and self.max_message_size < 1:
            raise ValueError("max_message_size must be positive")
        if not self.path.startswith("/"):
            raise ValueError(f"path must start with '/', got {self.path!r}")

    @property
    def inner_stack(self) -> Stack:
        return self.inner

    @property
    def secure(self) -> bool:
        """Whether a TLS layer sits underneath (``wss``)."""
        return any(isinstance(layer, TLS) for layer in self.layers()[1:])

    async def open_channel(self, ctx: AttemptContext, address: Address) -> WebSocketChannel:
        inner = _byte_channel(await self.inner.open_channel(ctx, address))
        host = address.host
        if ctx.endpoint is not None and ctx.endpoint.host:
            host = ctx.endpoint.host
        resource, _, query = self.path.partition("?")
        uri = WebSocketURI(self.secure, host, address.port, resource, query)
        protocol = _ClientProtocol(
            uri,
            origin=None if self.origin is None else Origin(self.origin),
            extensions=[ClientPerMessageDeflateFactory()] if self.compression else None,
            subprotocols=[Subprotocol(s) for s in self.subprotocols] or None,
            max_size=self.max_message_size,
            logger=logger,
        )
        channel = WebSocketChannel(self, inner, protocol, ctx)
        return await self._handshake(channel, inner, channel.client_handshake)

    async def accept_channel(self, ctx: AttemptContext, inner: Channel) -> WebSocketChannel:
        # open_timeout bounds the layers underneath too (a TLS handshake), so a
        # client that connects and stays silent cannot hold a slot for ever.
        # Plain TCP underneath has nothing to negotiate: no timeout to set up.
        if type(self.inner).accept_channel is Stack.accept_channel:
            stream = _byte_channel(inner)
        else:
            try:
                async with asyncio.timeout(self.open_timeout):
                    stream = _byte_channel(await self.inner.accept_channel(ctx, inner))
            except TimeoutError as exc:
                inner.abort()
                raise ConnectionTimeout(f"no handshake after {self.open_timeout} s") from exc
        protocol = _ServerProtocol(
            extensions=[ServerPerMessageDeflateFactory()] if self.compression else None,
            subprotocols=[Subprotocol(s) for s in self.subprotocols] or None,
            max_size=self.max_message_size,
            logger=logger,
        )
        channel = WebSocketChannel(self, stream, protocol, ctx)
        return await self._handshake(channel, stream, channel.server_handshake)

    async def _handshake(
        self,
        channel: WebSocketChannel,
        inner: ByteChannel,
        handshake: Callable[[], Awaitable[None]],
    ) -> WebSocketChannel:
        """Run one side's opening handshake within ``open_timeout``; abort ``inner`` if it fails."""
        try:
            async with asyncio.timeout(self.open_timeout):
                await handshake()
        except TimeoutError as exc:
            inner.abort()
            raise ConnectionTimeout(f"no WebSocket handshake after {self.open_timeout} s") from exc
        except BaseException:
            inner.abort()
            raise
        channel.start()
        return channel


class _Reader(StreamReader):
    """The library's byte reader (the parser's input), on one block that keeps its size.

    The library's own reader cuts what it read off the front of its
    bytearray: after each large frame the block shrinks to a new small one
    and then grows back, and on a bulk receiver the regrown memory comes as
    fresh pages (page faults) and copies. Here the block is a ring: unread
    bytes start at ``_start`` and may wrap around its end, so nothing moves
    until it has to grow. A large block is given up after a run of small
    reads, so a connection that once received a large message does not
    keep it.
    """

    __slots__ = ("_small", "_start", "_unread")

    def __init__(self) -> None:
        super().__init__()
        self._start = 0
        self._unread = 0
        self._small = 0  # small reads in a row into a large empty block

    def _peek(self, n: int) -> bytes:
        start = self._start
        buffer = self.buffer
        end = start + n
        if end <= len(buffer):
            # A slice of the block is cheaper than a view for a frame header
            # or a small payload; a large payload is copied once, from a view.
            return bytes(buffer[start:end]) if n <= _SLICE else bytes(memoryview(buffer)[start:end])
        with memoryview(buffer) as view:
            return b"".join((view[start:], view[: end - len(view)]))

    def _take(self, n: int) -> bytes:
        data = self._peek(n)
        self._unread -= n
        if self._unread:
            self._start = (self._start + n) % len(self.buffer)
        else:
            self._start = 0
            if len(self.buffer) < _SMALL_BLOCK:
                self.buffer = bytearray()  # an idle connection keeps none
        return data

    # bytes, not bytearray: the library only reads them, and a payload then
    # becomes a message without another copy.
    def read_line(  # type: ignore[override]
        self, m: int, too_long_exc_type: type[Exception] = RuntimeError
    ) -> Generator[None, None, bytes]:
        while True:
            start, unread, buffer = self._start, self._unread, self.buffer
            if start + unread <= len(buffer):
                # Searched in place, not in a copy of everything unread per line.
                found = buffer.find(b"\n", start, start + unread)
                newline = found - start if found >= 0 else -1
            else:
                newline = self._peek(unread).find(b"\n")
            length = newline + 1 if newline >= 0 else unread
            if length > m:
                raise too_long_exc_type(f"read {length} bytes, expected no more than {m} bytes")
            if newline >= 0:
                return self._take(length)
            if self.eof:
                raise EOFError(f"stream ends after {length} bytes, before end of line")
            yield

    def read_exact(self, n: int) -> Generator[None, None, bytes]:  # type: ignore[override]
        while self._unread < n:
            if self.eof:
                raise EOFError(f"stream ends after {self._unread} bytes, expected {n} bytes")
            yield
        return self._take(n)

    def read_to_eof(  # type: ignore[override]
        self, m: int, too_long_exc_type: type[Exception] = RuntimeError
    ) -> Generator[None, None, bytes]:
        while not self.eof:
            if self._unread > m:
                raise too_long_exc_type(
                    f"read {self._unread} bytes, expected no more than {m} bytes"
                )
            yield
        return self._take(self._unread)

    def at_eof(self) -> Generator[None, None, bool]:
        while not self._unread:
            if self.eof:
                return True
            yield
        return False

    def feed_data(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof:
            raise EOFError("stream ended")
        size = len(data)
        unread = self._unread
        if not unread:
            if len(self.buffer) > _KEEP and size * 8 < len(self.buffer):
                self._small += 1
                if self._small > _SMALL_READS:
                    self.buffer = bytearray()
            else:
                self._small = 0
        if unread + size > len(self.buffer):
            # Grow, with room to spare: frames straddle reads at varying offsets.
            block = bytearray((unread + size) * 5 // 4)
            if unread:
                block[:unread] = self._peek(unread)
            self.buffer = block
            self._start = 0
        buffer = self.buffer
        end = (self._start + unread) % len(buffer)
        first = len(buffer) - end
        if size <= first:
            buffer[end : end + size] = data  # same length: in place, no resize
        else:
            with memoryview(data) as piece:
                buffer[end:] = piece[:first]
                buffer[: size - first] = piece[first:]
        self._unread = unread + size

    def discard(self) -> None:
        self._start = self._unread = 0


def _use_reader(protocol: Protocol) -> None:
    # The parser starts in the library's constructor, on its own reader:
    # restart it on ours before any byte arrived.
    protocol.reader = _Reader()
    protocol.parser = protocol.parse()
    next(protocol.parser)


class _ClientProtocol(ClientProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _use_reader(self)

    def recv_frame(self, frame: Frame) -> None:
        _forget_unfinished_message(self, frame)
        super().recv_frame(frame)

    def send_frame(self, frame: Frame) -> None:
        if not _send_apart(self, frame, mask=True):
            super().send_frame(frame)


class _ServerProtocol(ServerProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _use_reader(self)

    def recv_frame(self, frame: Frame) -> None:
        _forget_unfinished_message(self, frame)
        super().recv_frame(frame)

    def send_frame(self, frame: Frame) -> None:
        if not _send_apart(self, frame, mask=False):
            super().send_frame(frame)


def _send_apart(protocol: Protocol, frame: Frame, *, mask: bool) -> bool:
    """Queue a large frame as its header and its payload, not joined into a third buffer.

    The library's serializer copies the payload (masked or not) into a new
    frame-sized buffer: for a large frame that is a fresh allocation, and
    page faults, per message. Here an unmasked payload goes out as it is and
    a masked one is the library's masking output. Frames an extension
    rewrites (compression), small ones and mutable buffers go the library's way.
    """
    data = frame.data
    if type(data) is not bytes or len(data) < _APART or protocol.extensions:
        return False
    frame.check()
    if protocol.debug:
        protocol.logger.debug("> %s", frame)
    length = len(data)
    head = (0x80 if frame.fin else 0) | frame.opcode
    masked = 0x80 if mask else 0
    if length < 65536:
        header = _LENGTH_16.pack(head, masked | 126, length)
    else:
        header = _LENGTH_64.pack(head, masked | 127, length)
    if mask:
        key = secrets.token_bytes(4)
        header += key
        data = apply_mask(data, key)
    writes = cast(list[bytes | memoryview], protocol.writes)
    writes.append(header + data[:_LEAD])
    writes.append(memoryview(data)[_LEAD:])
    return True


def _forget_unfinished_message(protocol: Protocol, frame: Frame) -> None:
    # RFC 6455 §5.4 lets control frames, a close too, arrive between the
    # fragments of a message; the library fails that with 1002. A close there
    # simply ends the connection: the unfinished message is dropped.
    if frame.opcode is Opcode.CLOSE:
        protocol.current_size = None


def _byte_channel(channel: Channel) -> ByteChannel:
    if not (hasattr(channel, "receive") and hasattr(channel, "send")):
        raise TypeError("WebSocket needs a byte stream underneath (TCP or TLS)")
    return channel  # type: ignore[return-value]


class WebSocketChannel(Layered[ByteChannel]):
    """A running WebSocket: the protocol core, its inner byte channel, and how it reads."""

    # Slots: an instance dict of this many attributes would cost an idle connection 1.5 KiB.
    __slots__ = (
        "_buffer",
        "_client",
        "_close_code",
        "_close_reason",
        "_close_timer",
        "_closing",
        "_ctx",
        "_decoder",
        "_ended",
        "_eof",
        "_error",
        "_finished",
        "_finished_waiter",
        "_first",
        "_flush_turn",
        "_fragmenting",
        "_inner",
        "_keepalive",
        "_loop",
        "_options",
        "_parts",
        "_paused",
        "_pending_events",
        "_pings",
        "_protocol",
        "_queued",
        "_reader",
        "_receive_limit",
        "_replier",
        "_reported",
        "_rest",
        "_room_waiter",
        "_sending",
        "_server",
        "_started",
        "_text",
        "_waiter",
        "opening_handshake",
    )

    def __init__(
        self,
        options: WebSocket,
        inner: ByteChannel,
        protocol: ClientProtocol | ServerProtocol,
        ctx: AttemptContext,
    ) -> None:
        self._options = options
        self._inner = inner
        self._protocol: Protocol = protocol
        self._client = protocol if isinstance(protocol, ClientProtocol) else None
        self._server = protocol if isinstance(protocol, ServerProtocol) else None
        self._ctx = ctx
        # Parsing stops once one read's worth of messages waits: on a loop that
        # reads many times per turn (uvloop) more would be parsed before the
        # application takes any, each a fresh payload-sized allocation.
        self._receive_limit = min(ctx.parameters.receive_buffer, _READ_CHUNK)
        # One flush writes at a time; the others wait for their turn, in order.
        self._flush_turn = Turn()
        self._loop: asyncio.AbstractEventLoop | None = None  # known from start()
        self._sending = False
        self._fragmenting: bool | None = None  # None: no message open; else "is text"
        # Reassembly of the message being received.
        self._parts: list[bytes] | None = None  # made for a message in several frames
        self._text: bool = False
        self._decoder: codecs.IncrementalDecoder | None = None
        # Received messages not yet read, and their total size: the first one,
        # then a deque made only when more than one waits (it costs 700 bytes).
        self._first: Message | None = None
        self._rest: deque[Message] | None = None
        self._queued = 0
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False  # the queue is full: read nothing until it drains
        self._pings: dict[bytes, asyncio.Future[bool]] | None = None
        self._close_timer: asyncio.TimerHandle | None = None
        # Where received bytes come from: the inner TCP channel's buffer, read
        # as they arrive; else (TLS) a task that awaits the inner channel.
        self._buffer: ReceiveBuffer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._room_waiter: asyncio.Future[None] | None = None  # the reader task waits for room
        self._replier: asyncio.Task[None] | None = None  # writes what received frames call for
        self._keepalive: asyncio.Task[None] | None = None
        self._pending_events: Sequence[Any] = ()
        self._error: NetconnError | None = None  # a failure seen on our side
        self._started = False
        self._eof = False  # the inner channel ended
        self._ended = False  # nothing more to read: closed, ended or failed
        self._finished = False
        self._finished_waiter: asyncio.Future[None] | None = None
        self._reported = False
        self._closing = False
        self._close_code = 1000
        self._close_reason = ""
        self.opening_handshake: WebSocketHandshake | None = None
        """The opening handshake, once it succeeded."""

    # Channel

    @property
    def subprotocol(self) -> str | None:
        """The negotiated subprotocol, if any."""
        return self._protocol.subprotocol

    @property
    def maximum_message_size(self) -> int:
        # Outgoing messages are not limited by this side; the peer enforces its own.
        return 1 << 62

    @property
    def buffered_bytes(self) -> int:
        """Bytes of received messages not yet read."""
        return self._queued + sum(len(p) for p in self._parts or ())

    # Opening handshake

    async def client_handshake(self) -> None:
        """Send the upgrade request and wait for the response.

        Raises :class:`HandshakeRejected` for a non-101 status,
        :class:`ProtocolError` for an invalid response.
        """
        assert self._client is not None
        request = self._client.connect()
        for name, value in self._options.headers:
            request.headers[name] = value
        self._client.send_request(request)
        await self._flush()
        response: Response | None = None
        while response is None:
            await self._pull("during the WebSocket handshake")
            events = self._protocol.events_received()
            for i, event in enumerate(events):
                if isinstance(event, Response):
                    response = event
                    self._pending_events = events[i + 1 :]
                    break
            if response is None and self._protocol.handshake_exc is not None:
                break
        exc = self._protocol.handshake_exc
        if exc is not None:
            await self._flush_quietly()
            raise _handshake_error(exc, response) from exc
        assert response is not None
        self.opening_handshake = WebSocketHandshake(
            path=request.path,
            request_headers=list(request.headers.raw_items()),
            response_headers=list(response.headers.raw_items()),
            subprotocol=self._protocol.subprotocol,
            extensions=[e.name for e in self._protocol.extensions],
        )

    async def server_handshake(self) -> None:
        """Wait for the upgrade request and answer it (101, or the hook's status).

        Raises :class:`ProtocolError` for a request that is not a valid
        upgrade, :class:`HandshakeRejected` when the hook rejected it.
        """
        assert self._server is not None
        request: Request | None = None
        while request is None:
            await self._pull("during the WebSocket handshake")
            for event in self._protocol.events_received():
                if isinstance(event, Request):
                    request = event
            if request is None and self._protocol.handshake_exc is not None:
                await self._flush_quietly()
                exc = self._protocol.handshake_exc
                raise ProtocolError(f"invalid WebSocket upgrade request: {exc}") from exc
        status: int | None = None
        cause: BaseException | None = None
        hook = self._options.check_request
        if hook is not None:
            try:
                status = hook(HandshakeRequest(request.path, list(request.headers.raw_items())))
            except Exception as exc:
                logger.exception("check_request raised")
                status = 500
                cause = exc
        if status is not None and status not in _ERROR_STATUSES:
            logger.error("check_request returned %r, not an HTTP error status", status)
            status = 500
        if status is None:
            response = self._server.accept(request)
        else:
            phrase = http.HTTPStatus(status).phrase
            response = self._server.reject(status, f"{phrase}\n")
        if response.status_code == 101:
            for name, value in self._options.headers:
                response.headers[name] = value
        self._server.send_response(response)
        await self._flush_quietly()
        if response.status_code != 101:
            if status is not None:
                error: NetconnError = HandshakeRejected(
                    response.status_code, response.reason_phrase, list(response.headers.raw_items())
                )
                if cause is not None:
                    error.__cause__ = cause
                raise error
            failure = self._protocol.handshake_exc
            raise ProtocolError(f"WebSocket handshake failed: {failure}") from failure
        self.opening_handshake = WebSocketHandshake(
            path=request.path,
            request_headers=list(request.headers.raw_items()),
            response_headers=list(response.headers.raw_items()),
            subprotocol=self._protocol.subprotocol,
            extensions=[e.name for e in self._protocol.extensions],
        )

    async def _pull(self, when: str) -> None:
        data = await self._inner.receive(1, _READ_CHUNK)
        if data:
            self._protocol.receive_data(data)
        else:
            self._protocol.receive_eof()
            if self._protocol.handshake_exc is None and self._protocol.state is WSState.CONNECTING:
                raise ConnectionClosed(f"the peer closed the connection {when}")

    def start(self) -> None:
        """Start reading (and the keepalive, if configured) once the handshake is done."""
        loop = self._loop = asyncio.get_running_loop()
        self._started = True
        inner = self._inner
        if isinstance(inner, TCPChannel):
            # Frames are parsed in the transport's callback, as they arrive: a
            # message reaches a waiting receive_message in one loop turn.
            self._buffer = inner.receive_buffer
            # uvloop writes frames from the objects themselves: with up to a
            # megabyte of them waiting, each large message is fresh memory.
            inner.limit_sending(_READ_CHUNK)
            events, self._pending_events = self._pending_events, ()
            self._handle(events)
            self._buffer.listen(self._readable)
            self._readable()  # bytes that came right after the handshake
            self._settle()
        else:
            self._reader = loop.create_task(self._read_loop(), name="websocket reader")
        if self._options.ping_interval is not None:
            self._keepalive = loop.create_task(self._keepalive_loop(), name="websocket keepalive")

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        # Known from start(): asking asyncio costs a getpid() per ask on Python 3.11.
        loop = self._loop
        return asyncio.get_running_loop() if loop is None else loop

    # Writing: one flush at a time keeps frames in the order the protocol produced them.

    async def _flush(self) -> None:
        turn = self._flush_turn
        if turn.held:
            await turn.wait()
        turn.held = True
        try:
            inner = self._inner
            for data in self._protocol.data_to_send():
                if data:
                    await inner.send(data, False)
                else:
                    await inner.send(b"", True)  # the protocol's end of stream
        except asyncio.CancelledError:
            # Part of a frame may be out: the stream cannot be resumed.
            self._inner.abort()
            raise
        finally:
            turn.release()

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(NetconnError):
            await self._flush()

    # Reading

    def _feed(self, data: bytes) -> None:
        """Run received bytes (``b""``: the end of the stream) through the protocol."""
        protocol = self._protocol
        if data:
            protocol.receive_data(data)
            self._handle(protocol.events_received())
        else:
            self._eof = True
            protocol.receive_eof()
        if self._eof or protocol.state is WSState.CLOSED:
            self._ended = True
        elif self._close_timer is None and protocol.close_expected():
            # We sent a close frame (or failed): the peer has close_timeout
            # seconds to finish before we abort.
            self._close_timer = self._running_loop().call_later(
                self._options.close_timeout, self._inner.abort
            )

    def _fail_reading(self, exc: Exception) -> None:
        if isinstance(exc, NetconnError):
            self._fail_locally(exc, send_close=False)
        else:  # a bug must not leave readers hanging
            logger.error("WebSocket reader failed", exc_info=exc)
            bug = ProtocolError(f"WebSocket reader failed: {exc!r}")
            bug.__cause__ = exc
            self._fail_locally(bug, send_close=False)
        self._ended = True

    def _readable(self, data: bytes | bytearray | memoryview | None = None) -> bool:
        """Parse what the inner TCP channel received; called from its transport's callbacks.

        ``data`` is a read as it arrived, offered while nothing is buffered:
        parsed at once when there is room (returns true), else left to the
        buffer. Without it, parse what the buffer holds.
        """
        buffer = self._buffer
        if buffer is None or self._ended or self._paused:
            return False
        try:
            if data:
                # The protocol copies it into its own buffer, so the transport
                # may reuse its read buffer.
                self._feed(cast(bytes, data))
            while not self._paused and not self._ended:
                data = buffer.take(_READ_CHUNK)  # raises the channel's error once drained
                if not data and not buffer.at_eof:
                    break
                self._feed(data)
        except Exception as exc:
            self._fail_reading(exc)
        if self._ended:
            buffer.listen(None)
        self._settle()
        # Everything parsed and settled: a waiting receiver goes on now, from
        # the transport's callback, not a loop turn later.
        waiter = self._waiter
        if waiter is not None and self._first is not None and not waiter.done():
            hand(waiter, None, waiter.get_loop())
        return True

    def _settle(self) -> None:
        """After received frames: send what they call for, or finish once reading ended."""
        if self._protocol.writes:
            # Replies (a pong, our close frame) and the end of our stream go
            # out in order with what send_message writes, through _flush.
            if self._replier is None:
                self._replier = self._running_loop().create_task(self._reply())
        elif self._ended and self._replier is None:
            self._finish()

    async def _reply(self) -> None:
        try:
            while self._protocol.writes:
                await self._flush()
        except NetconnError as error:
            if not self._eof:  # after the peer's end of stream, a failed write is no news
                self._fail_reading(error)
                if self._buffer is not None:
                    self._buffer.listen(None)
        finally:
            self._replier = None
        if self._ended:
            self._finish()

    async def _read_loop(self) -> None:
        """Read an inner channel that offers no buffer to listen on (TLS)."""
        try:
            # Frames that came with the handshake response, and any reply the
            # protocol produced for them (a close frame, if they were invalid).
            events, self._pending_events = self._pending_events, ()
            self._handle(events)
            await self._flush()
            while not self._ended:
                if self._paused:
                    self._room_waiter = asyncio.get_running_loop().create_future()
                    try:
                        await self._room_waiter
                    finally:
                        self._room_waiter = None
                    continue
                data = await self._inner.receive(1, _READ_CHUNK)
                self._feed(data)
                if data:
                    await self._flush()
                else:
                    await self._flush_quietly()  # our end of stream, if still possible
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._fail_reading(exc)
        self._finish()

    def _resume_reading(self) -> None:
        self._paused = False
        if self._buffer is not None:
            self._readable()
        elif self._room_waiter is not None and not self._room_waiter.done():
            self._room_waiter.set_result(None)

    def _handle(self, events: Sequence[Any]) -> None:
        for frame in events:
            opcode = frame.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                self._text = opcode is Opcode.TEXT
                self._decoder = codecs.getincrementaldecoder("utf-8")() if self._text else None
                self._parts = None
                self._add_fragment(frame.data, frame.fin)
            elif opcode is Opcode.CONT:
                self._add_fragment(frame.data, frame.fin)
            elif opcode is Opcode.PONG:
                self._pong(bytes(frame.data))
            elif opcode is Opcode.CLOSE:
                self._parts = None  # an unfinished message ends here
                self._decoder = None
                close = self._protocol.close_rcvd
                if close is not None:
                    metadata = {
                        "opcode": "close",
                        "close_code": int(close.code),
                        "close_reason": close.reason,
                    }
                    self._deliver(Message(b"", True, metadata))
            if self._error is not None:
                return  # failed (e.g. invalid UTF-8): ignore the rest

    def _add_fragment(self, data: bytes | bytearray | memoryview, fin: bool) -> None:
        chunk = bytes(data)
        if self._decoder is not None:
            try:
                self._decoder.decode(chunk, final=fin)
            except UnicodeDecodeError as exc:
                # RFC 6455 §8.1: fail as soon as the bytes cannot be UTF-8.
                self._fail_locally(
                    ProtocolError(f"invalid UTF-8 in a text message: {exc.reason}"),
                    code=CloseCode.INVALID_DATA,
                    reason="invalid UTF-8",
                )
                return
        if not fin or self._parts is not None:
            if self._parts is None:
                self._parts = []
            self._parts.append(chunk)
            if not fin:
                return
            chunk = b"".join(self._parts)
            self._parts = None
        self._decoder = None
        self._deliver(Message(chunk, True, {"opcode": "text" if self._text else "binary"}))

    def _deliver(self, message: Message) -> None:
        if self._closing:
            return  # cancelled: nobody reads any more
        if self._first is None:
            self._first = message
        else:
            if self._rest is None:
                self._rest = deque()
            self._rest.append(message)
        self._queued += len(message.content)
        if self._queued >= self._receive_limit:
            self._paused = True
            if self._buffer is not None:
                self._buffer.pause()  # the next read stays in the kernel, not copied here
        if self._buffer is None:
            self._wake()  # else _readable() wakes the receiver once the read is parsed

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def receive_message(self) -> Message:
        """The next whole message; a peer's close arrives as a message with opcode ``close``.

        After the queue is drained raises :class:`ApplicationClosed` (the peer
        closed, with its code and reason), :class:`ProtocolError` or
        :class:`MessageTooLarge` (we closed with 1002/1007 or 1009),
        :class:`ConnectionTimeout` (keepalive), or :class:`ConnectionClosed`.
        Cancelling a waiting receive loses no message.
        """
        if self._waiter is not None:
            raise Busy("another task is already receiving on this connection")
        while self._first is None:
            if self._finished:
                self._report()
                raise self._final_error()
            loop = self._loop  # _running_loop(), inline: this runs for every wait
            if loop is None:
                loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        message = self._first
        rest = self._rest
        self._first = rest.popleft() if rest else None
        self._queued -= len(message.content)
        if self._paused and (self._queued < self._receive_limit // 4 or self._first is None):
            self._resume_reading()
        if self._finished and self._first is None:
            self._report()
        return message

    # Outcome

    def _fail_locally(
        self, error: NetconnError, *, code: int = 1011, reason: str = "", send_close: bool = True
    ) -> None:
        if self._error is None:
            self._error = error
        if send_close and self._protocol.state is WSState.OPEN:
            self._protocol.fail(code, reason)

    def _final_error(self) -> NetconnError:
        protocol = self._protocol
        exc = protocol.parser_exc
        if self._error is not None and (exc is None or isinstance(exc, EOFError)):
            return self._error  # our own failure (UTF-8, keepalive, transport)
        if isinstance(exc, PayloadTooBig):
            limit = self._options.max_message_size or 0
            return MessageTooLarge(exc.size or exc.max_size + 1, limit)
        if isinstance(exc, WebSocketException | UnicodeDecodeError):
            sent = protocol.close_sent
            code = f" (closed with {int(sent.code)})" if sent is not None else ""
            return ProtocolError(f"WebSocket protocol error: {exc}{code}")
        received = protocol.close_rcvd
        if received is not None and protocol.close_rcvd_then_sent is not False:
            return ApplicationClosed(int(received.code), received.reason, by_peer=True)
        sent = protocol.close_sent
        if sent is not None:
            return ApplicationClosed(int(sent.code), sent.reason, by_peer=False)
        return ConnectionClosed("the connection closed without a WebSocket close frame (1006)")

    def _lost_error(self) -> NetconnError | None:
        """What the connection is told when the WebSocket ended (``None``: a clean close)."""
        error = self._final_error()
        if isinstance(error, ApplicationClosed) and error.code in _OK_CLOSE_CODES:
            return None
        if self._closing:
            return None
        return error

    def _finish(self) -> None:
        if self._finished:
            return
        self._finished = True
        self._ended = True
        if self._buffer is not None:
            self._buffer.listen(None)
        if self._finished_waiter is not None and not self._finished_waiter.done():
            self._finished_waiter.set_result(None)
        if self._keepalive is not None:
            self._keepalive.cancel()
        if self._close_timer is not None:
            self._close_timer.cancel()
        for waiter in (self._pings or {}).values():
            if not waiter.done():
                waiter.set_result(False)
        self._wake()
        if self._first is None:
            self._report()
        # Data that arrived before the failure stays readable; the connection
        # is told once it was read (or at once, if there was none).

    def _report(self) -> None:
        if self._reported:
            return
        self._reported = True
        self._ctx.on_lost(self._lost_error())

    # Sending

    async def send_message(
        self, data: bytes | bytearray | memoryview | str, is_complete: bool
    ) -> None:
        """Send ``data`` as one message: ``str`` as text, bytes as binary.

        With ``is_complete=False`` it sends a fragment; later calls continue
        the same message until one has ``is_complete=True``. Returns once the
        inner channel took the frame under its send bound. Raises
        :class:`ConnectionClosed` (or the error that ended the connection)
        once the WebSocket is closing. Cancelled while the frame is being
        written, it aborts the connection (a partial frame cannot be taken back).
        """
        if self._sending:
            raise Busy("another task is already sending on this connection")
        text = isinstance(data, str)
        payload: bytes | bytearray | memoryview = data.encode() if isinstance(data, str) else data
        if self._fragmenting is not None and self._fragmenting != text:
            raise InvalidState("a fragmented message continues with the same type (text or bytes)")
        self._check_sendable()
        self._sending = True
        try:
            if self._fragmenting is not None:
                self._protocol.send_continuation(payload, fin=is_complete)
            elif text:
                self._protocol.send_text(payload, fin=is_complete)
            else:
                self._protocol.send_binary(payload, fin=is_complete)
            self._fragmenting = None if is_complete else text
            await self._flush()
        finally:
            self._sending = False

    def _check_sendable(self) -> None:
        if self._protocol.state is not WSState.OPEN:
            if self._finished:
                raise self._final_error()
            raise ConnectionClosed("the WebSocket is closing")

    async def ping(self, payload: bytes = b"") -> float:
        """Send a ping and return the round-trip time in seconds once its pong arrives."""
        self._check_sendable()
        loop = asyncio.get_running_loop()
        payload = payload or os.urandom(4)
        if self._pings is None:
            self._pings = {}
        waiter = self._pings.setdefault(payload, loop.create_future())
        started = loop.time()
        self._protocol.send_ping(payload)
        await self._flush()
        if not await asyncio.shield(waiter):
            raise self._final_error()
        return loop.time() - started

    def _pong(self, payload: bytes) -> None:
        # A pong answers its ping and every ping sent before it (RFC 6455 §5.5.3
        # allows answering only the latest).
        if self._pings is None or payload not in self._pings:
            return
        for key in list(self._pings):
            waiter = self._pings.pop(key)
            if not waiter.done():
                waiter.set_result(True)
            if key == payload:
                break
        self._ctx.on_viability(True)

    async def _keepalive_loop(self) -> None:
        interval = self._options.ping_interval
        timeout = self._options.ping_timeout
        assert interval is not None
        while True:
            await asyncio.sleep(interval)
            if self._protocol.state is not WSState.OPEN:
                return
            try:
                async with asyncio.timeout(timeout):
                    await self.ping()
            except TimeoutError:
                # No pong: packets no longer flow. Say so, then give up.
                self._ctx.on_viability(False)
                self._fail_locally(
                    ConnectionTimeout(f"no pong within {timeout} s of a keepalive ping"),
                    send_close=False,
                )
                self._inner.abort()
                if self._reader is not None:
                    self._reader.cancel()
                if self._replier is not None:
                    self._replier.cancel()
                self._finish()
                return
            except NetconnError:
                return  # the reader sees the same failure

    # Closing

    def set_close(self, code: int, reason: str = "") -> None:
        """Use ``code`` and ``reason`` in the close frame that :meth:`close` sends."""
        check_close(code, reason)
        self._close_code = code
        self._close_reason = reason

    async def close(self) -> None:
        """Run the close handshake (our close frame, the peer's, then end of stream).

        Unread messages are dropped. After ``close_timeout`` the transport is aborted.
        """
        self._closing = True
        self._first = self._rest = None
        self._queued = 0
        if self._paused:
            self._resume_reading()
        try:
            async with asyncio.timeout(self._options.close_timeout):
                if self._protocol.state is WSState.OPEN:
                    self._protocol.send_close(self._close_code, self._close_reason)
                    await self._flush()
                if self._started and not self._finished:
                    # Until the peer's close frame and end of stream were read.
                    self._finished_waiter = self._running_loop().create_future()
                    await self._finished_waiter
                await self._inner.close()
        except (TimeoutError, NetconnError):
            self.abort()
        except asyncio.CancelledError:
            self.abort()
            raise
        finally:
            if self._keepalive is not None:
                self._keepalive.cancel()

    def abort(self) -> None:
        self._closing = True
        for task in (self._reader, self._replier, self._keepalive):
            if task is not None:
                task.cancel()
        self._inner.abort()
        if not self._finished:
            self._fail_locally(ConnectionClosed("the connection was aborted"), send_close=False)
            self._finish()


def check_close(code: int, reason: str) -> None:
    """Raise ``ValueError`` unless ``code`` and ``reason`` may go in a close frame."""
    # RFC 6455 §7.4: 1005, 1006 and 1015 are never sent; 1016-2999 are reserved.
    if not (code == 1000 or 1001 <= code <= 1014 or 3000 <= code <= 4999) or code in (1005, 1006):
        raise ValueError(f"close code {code} may not be sent")
    if len(reason.encode()) > 123:
        raise ValueError("a close reason is at most 123 bytes of UTF-8")


def _handshake_error(exc: Exception, response: Response | None) -> NetconnError:
    if isinstance(exc, InvalidStatus):
        r = exc.response
        return HandshakeRejected(
            r.status_code, r.reason_phrase, list(r.headers.raw_items()), bytes(r.body or b"")
        )
    if isinstance(exc, InvalidHandshake):
        return ProtocolError(f"invalid WebSocket handshake response: {exc}")
    return ProtocolError(f"WebSocket handshake failed: {exc!r}")
