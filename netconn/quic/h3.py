"""HTTP/3 over a netconn QUIC connection, on aioquic's H3 layer.

How this works: aioquic's ``H3Connection`` is sans-I/O, but it drives a
``QuicConnection`` directly (it asks it for stream IDs and hands it bytes).
:class:`_QuicShim` stands in for that engine and maps each call onto
netconn's own streams: the three unidirectional streams HTTP/3 opens for
itself (control, QPACK encoder and decoder) are opened beforehand and handed
out by ID, writes go to a per-stream queue that one task drains with
``stream.send`` (so netconn's back-pressure holds), and every byte read from
a stream is fed back to ``H3Connection.handle_event``. Senders await
:meth:`_QuicShim.drain` after queueing, which keeps each queue short.

:class:`H3Client` issues GET requests; :func:`serve_h3` is a static file
server. Both need the connection to have negotiated ALPN ``h3``.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, cast

from aioquic.h3.connection import H3Connection
from aioquic.h3.connection import ProtocolError as H3ProtocolError
from aioquic.h3.events import DataReceived, H3Event, HeadersReceived
from aioquic.quic.events import StreamDataReceived

from ..errors import ConnectionClosed, InvalidState, NetconnError, ProtocolError, StreamReset
from .hq import Download, _open_for_reading, _open_for_writing, resolve_under

if TYPE_CHECKING:
    from aioquic.quic.connection import QuicConnection

    from ..connection import Connection
    from ..stacks.quic import QUIC
    from ._channel import QUICStream

__all__ = ["H3_ALPN", "H3Client", "H3Response", "serve_h3"]

H3_ALPN = "h3"
"""The ALPN token of HTTP/3 (RFC 9114)."""

_CHUNK = 64 * 1024
_H3_INTERNAL_ERROR = 0x102
_H3_REQUEST_CANCELLED = 0x10C


@dataclass(frozen=True)
class _Configuration:
    is_client: bool


@dataclass
class _Outbox:
    stream: QUICStream
    queue: deque[tuple[bytes, bool]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    error: BaseException | None = None


class _QuicShim:
    """The part of aioquic's ``QuicConnection`` that ``H3Connection`` uses, over netconn streams."""

    _quic_logger = None

    def __init__(self, connection: Connection[QUIC], is_client: bool) -> None:
        self.configuration = _Configuration(is_client)
        self._connection = connection
        self._ready_uni: deque[QUICStream] = deque()
        self._streams: dict[int, QUICStream] = {}
        self._outboxes: dict[int, _Outbox] = {}
        self._writers: set[asyncio.Task[None]] = set()
        self.close_requested: tuple[int, str] | None = None

    @property
    def _remote_max_datagram_frame_size(self) -> int | None:
        # H3 checks the peer's SETTINGS against its transport parameters (RFC 9297).
        engine: Any = self._connection._quic_channel().quic
        return cast(int | None, engine._remote_max_datagram_frame_size)

    def adopt(self, stream: QUICStream) -> None:
        """Make ``stream`` known by its ID."""
        self._streams[stream.id] = stream

    def forget(self, stream_id: int) -> None:
        """Drop a finished request stream, so long connections do not accumulate them."""
        self._streams.pop(stream_id, None)

    async def reserve_uni(self, count: int) -> None:
        """Open ``count`` unidirectional streams for ``get_next_available_stream_id``."""
        for _ in range(count):
            stream = await self._connection.open_stream(directionality="unidirectional")
            self.adopt(stream)
            self._ready_uni.append(stream)

    # What H3Connection calls

    def get_next_available_stream_id(self, is_unidirectional: bool = False) -> int:
        if not is_unidirectional or not self._ready_uni:
            # Request streams are opened by H3Client itself, before it calls H3.
            raise ProtocolError("HTTP/3 asked for a stream that was not reserved")
        return self._ready_uni.popleft().id

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        outbox = self._outboxes.get(stream_id)
        if outbox is None:
            outbox = _Outbox(self._streams[stream_id])
            self._outboxes[stream_id] = outbox
            task = asyncio.get_running_loop().create_task(self._write(outbox))
            self._writers.add(task)
            task.add_done_callback(self._writers.discard)
        outbox.queue.append((bytes(data), end_stream))
        outbox.drained.clear()
        outbox.wake.set()

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.reset(error_code)

    def close(self, error_code: int = 0, reason_phrase: str = "", **_: Any) -> None:
        self.close_requested = (error_code, reason_phrase)

    def send_datagram_frame(self, data: bytes) -> None:
        raise ProtocolError("HTTP/3 datagrams are not enabled")

    # Writers

    async def _write(self, outbox: _Outbox) -> None:
        try:
            while True:
                while outbox.queue:
                    data, end = outbox.queue.popleft()
                    await outbox.stream.send(data, is_complete=end)
                    if end:
                        outbox.drained.set()
                        self._outboxes.pop(outbox.stream.id, None)
                        return
                outbox.drained.set()
                outbox.wake.clear()
                await outbox.wake.wait()
        except NetconnError as exc:
            outbox.error = exc
            outbox.drained.set()

    async def drain(self, stream_id: int) -> None:
        """Wait until what was queued for ``stream_id`` was handed to the stream.

        Raises the stream's send error, if sending failed.
        """
        outbox = self._outboxes.get(stream_id)
        if outbox is None:
            return
        await outbox.drained.wait()
        if outbox.error is not None:
            raise outbox.error

    def shutdown(self) -> None:
        """Stop the writer tasks."""
        for task in list(self._writers):
            task.cancel()


class _Readable(Protocol):
    id: int

    @property
    def receive_complete(self) -> bool: ...

    async def receive(self, at_least: int = 1, at_most: int = 65536) -> bytes: ...


class _H3Session:
    """Shared by client and server: an H3Connection fed from netconn's streams."""

    def __init__(self, connection: Connection[QUIC], is_client: bool) -> None:
        alpn = connection.negotiated_alpn
        if alpn is None and list(connection.stack.alpn) == [H3_ALPN]:
            alpn = H3_ALPN  # sending 0-RTT: the handshake (and ALPN) is still under way
        if alpn != H3_ALPN:
            raise ProtocolError(f"HTTP/3 needs ALPN h3, not {alpn!r}")
        self.connection = connection
        self.shim = _QuicShim(connection, is_client)
        self.h3: H3Connection | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.error: NetconnError | None = None
        self.inbound_ended = asyncio.Event()
        self.on_events: Callable[[list[H3Event]], None] = lambda events: None

    async def start(self) -> None:
        await self.shim.reserve_uni(3)
        # The shim provides every QuicConnection member H3Connection touches.
        self.h3 = H3Connection(cast("QuicConnection", self.shim))
        self.spawn(self._accept_inbound())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _accept_inbound(self) -> None:
        try:
            async for stream in self.connection.inbound_streams():
                self.shim.adopt(stream)
                self.spawn(self.read(stream))
        except NetconnError as exc:
            self.fail(exc)
        finally:
            self.inbound_ended.set()
            self.on_events([])

    async def read(
        self, stream: _Readable, before_receive: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Feed every byte of ``stream`` to the H3 layer until the stream ends."""
        assert self.h3 is not None
        try:
            while True:
                if before_receive is not None:
                    await before_receive()
                data = await stream.receive(1, _CHUNK)
                end = stream.receive_complete or not data
                try:
                    events = self.h3.handle_event(StreamDataReceived(data, end, stream.id))
                except H3ProtocolError as exc:
                    self.fail(ProtocolError(f"HTTP/3: {exc}"))
                    return
                if self.shim.close_requested is not None:
                    code, reason = self.shim.close_requested
                    self.fail(ProtocolError(f"HTTP/3 error 0x{code:x}: {reason}"))
                    return
                self.on_events(events)
                if end:
                    return
        except StreamReset as exc:
            self.on_events([_ResetEvent(stream.id, exc.code)])
        except NetconnError as exc:
            self.fail(exc)

    def fail(self, error: NetconnError) -> None:
        if self.error is None:
            self.error = error
        self.on_events([])

    async def close(self) -> None:
        self.shim.shutdown()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@dataclass(frozen=True)
class _ResetEvent(H3Event):
    stream_id: int
    code: int


@dataclass(frozen=True)
class H3Response:
    """A response: status, headers and the body's size and hash (and bytes, if kept)."""

    status: int
    """The ``:status`` code."""
    headers: list[tuple[str, str]]
    """Every header, names lower-case."""
    download: Download
    """Size and SHA-256 of the body."""
    body: bytes | None = None
    """The body, when the request asked to keep it."""


_RESPONSE_BUFFER = 1 << 20  # bytes of one response held before its stream is read again


@dataclass
class _Pending:
    headers: list[tuple[bytes, bytes]] | None = None
    chunks: deque[bytes] = field(default_factory=deque)
    buffered: int = 0
    ended: bool = False
    reset_code: int | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    room: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.room.set()

    def push(self, data: bytes) -> None:
        if data:
            self.chunks.append(data)
            self.buffered += len(data)
            if self.buffered >= _RESPONSE_BUFFER:
                self.room.clear()
        self.changed.set()

    def finish(self) -> None:
        self.ended = True
        self.changed.set()

    async def wait_room(self) -> None:
        await self.room.wait()

    async def pop(self) -> bytes | None:
        """The next body chunk, or ``None`` at the end."""
        while not self.chunks:
            if self.ended:
                return None
            self.changed.clear()
            await self.changed.wait()
        data = self.chunks.popleft()
        self.buffered -= len(data)
        if self.buffered < _RESPONSE_BUFFER:
            self.room.set()
        return data


class H3Client:
    """HTTP/3 requests over a ready ``Connection[QUIC]`` that negotiated ``h3``.

    Use ``async with H3Client(conn) as http:`` then ``await http.get(path)``.
    The client takes over ``conn.inbound_streams()`` (HTTP/3's control and
    QPACK streams arrive there). Each response holds at most about 1 MiB
    unread; beyond that its stream is not read, and QUIC flow control holds
    the server back.
    """

    def __init__(self, connection: Connection[QUIC], authority: str | None = None) -> None:
        self._session = _H3Session(connection, is_client=True)
        self._session.on_events = self._dispatch
        self._authority = authority
        self._pending: dict[int, _Pending] = {}

    async def __aenter__(self) -> Self:
        await self._session.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._session.close()

    def _dispatch(self, events: list[H3Event]) -> None:
        for event in events:
            pending = self._pending.get(getattr(event, "stream_id", -1))
            if pending is None:
                continue
            if isinstance(event, HeadersReceived) and pending.headers is None:
                pending.headers = list(event.headers)
                pending.push(b"")
                if event.stream_ended:
                    pending.finish()
            elif isinstance(event, DataReceived):
                pending.push(event.data)
                if event.stream_ended:
                    pending.finish()
            elif isinstance(event, _ResetEvent):
                pending.reset_code = event.code
                pending.finish()
        if self._session.error is not None:
            for pending in self._pending.values():
                pending.finish()

    async def get(
        self,
        path: str,
        *,
        target: Path | None = None,
        keep_body: bool = False,
        max_size: int | None = None,
    ) -> H3Response:
        """GET ``path``; return once the response is complete.

        With ``target`` the body is written to that file; ``keep_body``
        keeps it in memory too. Raises :class:`~netconn.ProtocolError` for a
        malformed response or a body over ``max_size``,
        :class:`~netconn.StreamReset` if the server reset the request, and
        the connection's errors. Cancelling stops the request stream.
        """
        session = self._session
        h3 = session.h3
        if h3 is None:
            raise ProtocolError("use H3Client inside 'async with'")
        if session.error is not None:
            raise session.error
        connection = session.connection
        stream = await connection.open_stream()
        session.shim.adopt(stream)
        pending = _Pending()
        self._pending[stream.id] = pending
        authority = self._authority or _authority_of(connection)
        digest = hashlib.sha256()
        size = 0
        kept = bytearray() if keep_body else None
        try:
            h3.send_headers(
                stream.id,
                [
                    (b":method", b"GET"),
                    (b":scheme", b"https"),
                    (b":authority", authority.encode()),
                    (b":path", path.encode()),
                    (b"user-agent", b"netconn"),
                ],
                end_stream=True,
            )
            await session.shim.drain(stream.id)
            session.spawn(session.read(stream, pending.wait_room))
            handle = None if target is None else _open_for_writing(target)
            try:
                while (chunk := await pending.pop()) is not None:
                    digest.update(chunk)
                    size += len(chunk)
                    if max_size is not None and size > max_size:
                        stream.stop_sending(_H3_REQUEST_CANCELLED)
                        raise ProtocolError(f"{path}: body larger than {max_size} bytes")
                    if kept is not None:
                        kept += chunk
                    if handle is not None:
                        handle.write(chunk)
            finally:
                if handle is not None:
                    handle.close()
        except asyncio.CancelledError:
            stream.stop_sending(_H3_REQUEST_CANCELLED)
            raise
        finally:
            self._pending.pop(stream.id, None)
            session.shim.forget(stream.id)
        if session.error is not None:
            raise session.error
        if pending.reset_code is not None:
            raise StreamReset(pending.reset_code)
        if pending.headers is None:
            raise ProtocolError(f"{path}: the response had no headers")
        headers = [(k.decode().lower(), v.decode()) for k, v in pending.headers]
        status_text = dict(headers).get(":status", "")
        if not status_text.isdigit():
            raise ProtocolError(f"{path}: bad :status {status_text!r}")
        download = Download(path, size, digest.hexdigest(), stream.id)
        body = bytes(kept) if kept is not None else None
        return H3Response(int(status_text), headers, download, body)

    async def fetch(
        self, paths: Sequence[str], *, directory: Path | None = None, concurrency: int = 32
    ) -> list[H3Response]:
        """GET every path, up to ``concurrency`` at once; results in ``paths`` order.

        Raises :class:`~netconn.ProtocolError` for a status other than 200.
        """
        gate = asyncio.Semaphore(concurrency)

        async def one(path: str) -> H3Response:
            async with gate:
                target = None if directory is None else directory / os.path.basename(path)
                response = await self.get(path, target=target)
            if response.status != 200:
                raise ProtocolError(f"{path}: status {response.status}")
            return response

        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(p)) for p in paths]
        return [t.result() for t in tasks]


def _authority_of(connection: Connection[QUIC]) -> str:
    endpoint = connection.endpoint
    remote = connection.remote_endpoint
    host = connection.stack.server_name or (
        getattr(endpoint, "host", None) if endpoint is not None else None
    )
    port = remote.port if remote is not None else 443
    return f"{host or 'localhost'}:{port}"


async def serve_h3(
    connection: Connection[QUIC],
    root: Path,
    *,
    on_served: Callable[[str, int], None] | None = None,
) -> None:
    """Serve GET requests for the files under ``root`` on ``connection`` until it ends.

    Answers 200 with the file, 404 for a missing file or a path outside
    ``root``, 405 for other methods. ``on_served(path, bytes sent)`` is
    called after each response. Takes over ``connection.inbound_streams()``.
    Returns when the peer closes the connection; raises
    :class:`~netconn.ProtocolError` if the peer broke HTTP/3's rules.
    """
    session = _H3Session(connection, is_client=False)
    # Holds at most one entry per request stream, which the peer's stream limit bounds.
    requests: deque[tuple[int, list[tuple[bytes, bytes]]]] = deque()
    ended = False
    # One future per wait, woken from dispatch(): no helper task that a
    # cancelled server would leave pending.
    wake: asyncio.Future[None] | None = None

    def dispatch(events: list[H3Event]) -> None:
        nonlocal ended
        for event in events:
            if isinstance(event, HeadersReceived):
                requests.append((event.stream_id, list(event.headers)))
        if session.error is not None or session.inbound_ended.is_set():
            ended = True
        if wake is not None and not wake.done():
            wake.set_result(None)

    session.on_events = dispatch
    await session.start()

    async def respond(stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        h3 = session.h3
        assert h3 is not None
        fields = {k: v for k, v in headers}
        path = fields.get(b":path", b"").decode("utf-8", "replace")
        method = fields.get(b":method", b"")
        file = None
        if method in (b"GET", b"HEAD"):
            file = await asyncio.to_thread(resolve_under, root, path.split("?", 1)[0])
        status = 405 if method not in (b"GET", b"HEAD") else (404 if file is None else 200)
        try:
            if file is None or method == b"HEAD":
                size = 0 if file is None else (await asyncio.to_thread(os.path.getsize, file))
                h3.send_headers(
                    stream_id,
                    [(b":status", str(status).encode()), (b"content-length", str(size).encode())],
                    end_stream=True,
                )
                await session.shim.drain(stream_id)
                return
            size = await asyncio.to_thread(os.path.getsize, file)
            h3.send_headers(
                stream_id, [(b":status", b"200"), (b"content-length", str(size).encode())]
            )
            sent = 0
            with _open_for_reading(file) as handle:
                while True:
                    chunk = handle.read(_CHUNK)
                    h3.send_data(stream_id, chunk, end_stream=not chunk)
                    await session.shim.drain(stream_id)
                    if not chunk:
                        break
                    sent += len(chunk)
            if on_served is not None:
                on_served(path, sent)
        except NetconnError:
            return  # the peer gave up on this request
        finally:
            session.shim.forget(stream_id)

    try:
        while True:
            while requests:
                session.spawn(respond(*requests.popleft()))
            if ended:
                break
            wake = asyncio.get_running_loop().create_future()
            try:
                await wake
            finally:
                wake = None
        # The peer closing the connection is how a server's work normally ends.
        if session.error is not None and not isinstance(
            session.error, ConnectionClosed | InvalidState
        ):
            raise session.error
    finally:
        await session.close()
