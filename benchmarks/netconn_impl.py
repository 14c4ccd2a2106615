"""netconn's side of every comparison: one adapter per stack, on the public API only.

WebSocket and QUIC are looked up on the ``netconn`` module at run time, so a
build without them reports "not available in this build" instead of a number.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import netconn as nc

from .api import (
    ConnectOptions,
    DatagramHandler,
    Datagrams,
    Env,
    Stream,
    StreamHandler,
    Unavailable,
    Unsupported,
)

__all__ = ["NetconnQUIC", "NetconnStream", "NetconnUDP", "NetconnWebSocket"]

_HOST = "127.0.0.1"
_SERVER_NAME = "localhost"
_ALPN = ["netconn-bench"]
_DATAGRAM_FRAME = 65536


def _endpoint(port: int) -> nc.Endpoint:
    return nc.Endpoint.host_port(_HOST, port)


class _ByteStream:
    """A connection (TCP, TLS) or a QUIC stream: both have ``send``/``receive``."""

    def __init__(self, target: Any) -> None:
        self._target = target

    async def send(self, data: bytes, end: bool = False) -> None:
        await self._target.send(data, is_complete=end)

    async def recv(self, at_most: int) -> bytes:
        data: bytes = await self._target.receive(1, at_most)
        return data

    async def recv_exactly(self, size: int) -> bytes:
        try:
            data: bytes = await self._target.receive_exactly(size)
        except nc.EndOfStream as exc:
            raise EOFError(str(exc)) from exc
        return data


class _MessageStream:
    """A message connection (UDP, WebSocket): one message per call."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def send(self, data: bytes, end: bool = False) -> None:
        await self._conn.send(data)

    async def recv(self, at_most: int = 0) -> bytes:
        try:
            message = await self._conn.receive_message()
        except nc.ConnectionClosed:
            return b""
        if message.metadata.get("opcode") == "close":
            return b""
        content: bytes = message.content
        return content

    async def recv_exactly(self, size: int) -> bytes:
        data = await self.recv()
        if len(data) != size:
            raise EOFError(f"expected a {size}-byte message, got {len(data)}")
        return data

    async def recv_datagram(self) -> bytes:
        return await self.recv()


class _Datagrams:
    def __init__(self, stream: _MessageStream) -> None:
        self._stream = stream

    async def send(self, data: bytes) -> None:
        await self._stream.send(data)

    async def recv(self) -> bytes:
        return await self._stream.recv()


class _Session:
    """A netconn connection; QUIC sessions open a new stream per ``stream()``."""

    def __init__(self, conn: nc.Connection[Any], *, messages: bool, multiplexed: bool) -> None:
        self._conn = conn
        self._messages = messages
        self._multiplexed = multiplexed

    async def stream(self) -> Stream:
        if self._multiplexed:
            quic: Any = self._conn  # Connection[QUIC] only in builds that have QUIC
            return _ByteStream(await quic.open_stream())
        if self._messages:
            return _MessageStream(self._conn)
        return _ByteStream(self._conn)

    def datagrams(self) -> Datagrams:
        if self._multiplexed:
            return _QUICDatagrams(self._conn)
        if self._messages:
            return _Datagrams(_MessageStream(self._conn))
        raise Unsupported("a byte stream has no datagrams")

    @property
    def resumed(self) -> bool:
        info = self._conn.tls_info or {}
        return bool(info.get("session_reused") or info.get("session_resumed"))

    async def close(self) -> None:
        await self._conn.cancel()


class _QUICDatagrams:
    def __init__(self, conn: Any) -> None:
        self._datagrams = conn.datagrams

    async def send(self, data: bytes) -> None:
        await self._datagrams.send(data)

    async def recv(self) -> bytes:
        data: bytes = await self._datagrams.receive()
        return data


async def _connect(stack: nc.Stack, port: int) -> nc.Connection[Any]:
    conn: nc.Connection[Any] = nc.Connection(_endpoint(port), stack)
    try:
        await conn.wait_ready(timeout=30)
    except BaseException:
        conn.force_cancel()
        raise
    return conn


@asynccontextmanager
async def _listen(
    stack: nc.Stack, handler: Callable[[nc.Connection[Any]], Any]
) -> AsyncIterator[int]:
    listener: nc.Listener[Any] = nc.Listener(stack, host=_HOST, port=0, backlog=1024)
    async with listener:
        task = asyncio.get_running_loop().create_task(listener.run(handler))
        try:
            yield listener.port
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, nc.NetconnError):
                await task


async def _serve_stream(on_stream: StreamHandler, stream: Stream) -> None:
    with contextlib.suppress(nc.NetconnError, EOFError):
        await on_stream(stream)


class NetconnStream:
    """netconn over ``TCP()`` or ``TLS(TCP())``."""

    name = "netconn"

    def __init__(self, *, tls: bool) -> None:
        self._tls = tls
        self._client: dict[bool, nc.Stack] = {}

    def check(self) -> None:
        return None

    def _client_stack(self, env: Env, resume: bool) -> nc.Stack:
        # One options object per process: TLS builds its SSLContext once per object.
        stack = self._client.get(resume)
        if stack is None:
            tcp = nc.TCP(no_delay=True)
            if self._tls:
                cache = nc.TLSSessionCache() if resume else None
                stack = nc.TLS(tcp, ca_file=env.ca, server_name=_SERVER_NAME, session_cache=cache)
            else:
                stack = tcp
            self._client[resume] = stack
        return stack

    @asynccontextmanager
    async def serve(
        self, env: Env, on_stream: StreamHandler, on_datagram: DatagramHandler
    ) -> AsyncIterator[int]:
        tcp = nc.TCP(no_delay=True)
        stack: nc.Stack = nc.TLS(tcp, certificate=(env.cert, env.key)) if self._tls else tcp

        async def handle(conn: nc.Connection[Any]) -> None:
            await _serve_stream(on_stream, _ByteStream(conn))

        async with _listen(stack, handle) as port:
            yield port

    async def connect(self, env: Env, port: int, options: ConnectOptions) -> _Session:
        if options.resume and not self._tls:
            raise Unsupported("TCP has no sessions to resume")
        if options.early_data:
            raise Unsupported("TLS over TCP sends no early data in netconn")
        conn = await _connect(self._client_stack(env, options.resume), port)
        return _Session(conn, messages=False, multiplexed=False)


class NetconnUDP:
    """netconn over ``UDP()``: a connected flow; the listener splits flows."""

    name = "netconn"

    def check(self) -> None:
        return None

    @asynccontextmanager
    async def serve(
        self, env: Env, on_stream: StreamHandler, on_datagram: DatagramHandler
    ) -> AsyncIterator[int]:
        async def handle(conn: nc.Connection[Any]) -> None:
            with contextlib.suppress(nc.ConnectionClosed):
                async for message in conn.messages():
                    reply = on_datagram(message.content)
                    if reply is not None:
                        await conn.send(reply)

        async with _listen(nc.UDP(), handle) as port:
            yield port

    async def connect(self, env: Env, port: int, options: ConnectOptions) -> _Session:
        conn = await _connect(nc.UDP(), port)
        return _Session(conn, messages=True, multiplexed=False)


def _require(name: str) -> Any:
    stack = getattr(nc, name, None)
    if stack is None:
        raise Unavailable(f"netconn.{name} is not available in this build")
    return stack


class NetconnWebSocket:
    """netconn over ``WebSocket(TCP())``, compression off (as in the baseline)."""

    name = "netconn"

    def check(self) -> None:
        _require("WebSocket")

    def _stack(self) -> nc.Stack:
        stack: nc.Stack = _require("WebSocket")(
            nc.TCP(no_delay=True), compression=False, ping_interval=None
        )
        return stack

    @asynccontextmanager
    async def serve(
        self, env: Env, on_stream: StreamHandler, on_datagram: DatagramHandler
    ) -> AsyncIterator[int]:
        async def handle(conn: nc.Connection[Any]) -> None:
            await _serve_stream(on_stream, _MessageStream(conn))

        async with _listen(self._stack(), handle) as port:
            yield port

    async def connect(self, env: Env, port: int, options: ConnectOptions) -> _Session:
        if options.resume or options.early_data:
            raise Unsupported("WebSocket over TCP has no session resumption")
        conn = await _connect(self._stack(), port)
        return _Session(conn, messages=True, multiplexed=False)


class NetconnQUIC:
    """netconn over ``QUIC(...)``, on its default engine or on ``engine``."""

    def __init__(self, engine: str | None = None) -> None:
        self.name = "netconn" if engine is None else f"netconn-{engine}"
        self._engine = engine
        self._client: dict[tuple[bool, bool], nc.Stack] = {}

    def check(self) -> None:
        quic = _require("QUIC")
        if self._engine is not None:
            names = {f.name for f in dataclasses.fields(quic)}
            if "engine" not in names:
                raise Unavailable("netconn.QUIC has no engine option in this build")
            __import__(self._engine)

    def _options(self, env: Env, **extra: Any) -> nc.Stack:
        if self._engine is not None:
            extra["engine"] = self._engine
        if env.datagram_frames:
            extra["max_datagram_frame_size"] = _DATAGRAM_FRAME
        stack: nc.Stack = _require("QUIC")(alpn=_ALPN, **extra)
        return stack

    @asynccontextmanager
    async def serve(
        self, env: Env, on_stream: StreamHandler, on_datagram: DatagramHandler
    ) -> AsyncIterator[int]:
        stack = self._options(env, certificate=(env.cert, env.key))

        async def datagrams(conn: Any) -> None:
            with contextlib.suppress(nc.NetconnError):
                while True:
                    reply = on_datagram(await conn.datagrams.receive())
                    if reply is not None:
                        await conn.datagrams.send(reply)

        async def handle(conn: Any) -> None:
            async with asyncio.TaskGroup() as group:
                if env.datagram_frames:
                    group.create_task(datagrams(conn))
                with contextlib.suppress(nc.NetconnError):
                    async for stream in conn.inbound_streams():
                        group.create_task(_serve_stream(on_stream, _ByteStream(stream)))

        async with _listen(stack, handle) as port:
            yield port

    def _client_stack(self, env: Env, options: ConnectOptions) -> nc.Stack:
        key = (options.resume, options.early_data)
        stack = self._client.get(key)
        if stack is None:
            extra: dict[str, Any] = {"ca_file": env.ca, "server_name": _SERVER_NAME}
            if options.resume:
                extra["ticket_store"] = _require("MemoryTicketStore")()
            if options.early_data:
                extra["early_data"] = True
            stack = self._options(env, **extra)
            self._client[key] = stack
        return stack

    async def connect(self, env: Env, port: int, options: ConnectOptions) -> _Session:
        if options.early_data and self._engine == "qh3":
            raise Unsupported("netconn sends 0-RTT data only with QUIC(engine='aioquic')")
        conn = await _connect(self._client_stack(env, options), port)
        return _Session(conn, messages=False, multiplexed=True)
