"""The raw baselines on asyncio: streams for TCP, streams with ``ssl`` for TLS,
datagram endpoints for UDP."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

from .api import (
    ConnectOptions,
    DatagramHandler,
    Datagrams,
    Env,
    Stream,
    StreamHandler,
    Unsupported,
)

__all__ = ["AsyncioStreams", "AsyncioUDP"]

_HOST = "127.0.0.1"
_QUEUE = 1024  # datagrams held unread, as netconn's UDP default


class _StreamAdapter:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def send(self, data: bytes, end: bool = False) -> None:
        self._writer.write(data)
        if end and self._writer.can_write_eof():
            self._writer.write_eof()
        await self._writer.drain()

    async def recv(self, at_most: int) -> bytes:
        return await self._reader.read(at_most)

    async def recv_exactly(self, size: int) -> bytes:
        try:
            return await self._reader.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            raise EOFError(f"stream ended after {len(exc.partial)} of {size} bytes") from exc


class _StreamSession:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._stream = _StreamAdapter(reader, writer)

    async def stream(self) -> Stream:
        return self._stream

    def datagrams(self) -> Datagrams:
        raise Unsupported("a byte stream has no datagrams")

    @property
    def resumed(self) -> bool:
        return False

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()


class AsyncioStreams:
    """``asyncio.open_connection`` / ``asyncio.start_server``, with ``ssl`` when ``tls``."""

    def __init__(self, *, tls: bool) -> None:
        self.name = "asyncio"
        self._tls = tls
        self._client_context: ssl.SSLContext | None = None

    def check(self) -> None:
        return None

    @asynccontextmanager
    async def serve(
        self, env: Env, on_stream: StreamHandler, on_datagram: DatagramHandler
    ) -> AsyncIterator[int]:
        context: ssl.SSLContext | None = None
        if self._tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(env.cert, env.key)

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await on_stream(_StreamAdapter(reader, writer))
            except (OSError, EOFError, ssl.SSLError):
                pass  # the client went away; it reports its own failure
            finally:
                writer.close()

        server = await asyncio.start_server(handle, _HOST, 0, ssl=context, backlog=1024)
        try:
            yield int(server.sockets[0].getsockname()[1])
        finally:
            server.close()

    async def connect(self, env: Env, port: int, options: ConnectOptions) -> _StreamSession:
        if options.resume:
            raise Unsupported("asyncio streams have no API to offer a TLS session for resumption")
        context = None
        if self._tls:
            if self._client_context is None:
                self._client_context = ssl.create_default_context(cafile=env.ca)
            context = self._client_context
        reader, writer = await asyncio.open_connection(
            _HOST, port, ssl=context, server_hostname="localhost" if context else None
        )
        return _StreamSession(reader, writer)


class _ClientProtocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: collections.deque[bytes] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if len(self.queue) < _QUEUE:
            self.queue.append(data)
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class _UDPFlow:
    """A connected UDP socket: ``send`` is ``sendto`` (asyncio has no datagram back-pressure
    to wait on), ``recv`` takes from a bounded queue."""

    def __init__(self, protocol: _ClientProtocol) -> None:
        self._protocol = protocol

    async def send(self, data: bytes, end: bool = False) -> None:
        assert self._protocol.transport is not None
        self._protocol.transport.sendto(data)

    async def recv(self, at_most: int = 0) -> bytes:
        protocol = self._protocol
        while not protocol.queue:
            protocol.waiter = asyncio.get_running_loop().create_future()
            await protocol.waiter
        return protocol.queue.popleft()

    async def recv_exactly(self, size: int) -> bytes:
        data = await self.recv()
        if len(data) != size:
            raise RuntimeError(f"expected a {size}-byte datagram, got {len(data)}")
        return data


class _UDPSession:
    def __init__(self, protocol: _ClientProtocol) -> None:
        self._protocol = protocol
        self._flow = _UDPFlow(protocol)

    async def stream(self) -> Stream:
        return self._flow

    def datagrams(self) -> Datagrams:
        return self._flow

    @property
    def resumed(self) -> bool:
        return False

    async def close(self) -> None:
        if self._protocol.transport is not None:
            self._protocol.transport.close()


class _ServerProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: DatagramHandler) -> None:
        self._on_datagram = on_datagram
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        reply = self._on_datagram(data)
        if reply is not None and self._transport is not None:
            self._transport.sendto(reply, addr)


class AsyncioUDP:
    """``loop.create_datagram_endpoint`` on both sides."""

    name = "asyncio"

    def check(self) -> None:
        return None

    @asynccontextmanager
    async def serve(
        self, env: Env, on_stream: StreamHandler, on_datagram: DatagramHandler
    ) -> AsyncIterator[int]:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _ServerProtocol(on_datagram), local_addr=(_HOST, 0)
        )
        try:
            yield int(transport.get_extra_info("sockname")[1])
        finally:
            transport.close()

    async def connect(self, env: Env, port: int, options: ConnectOptions) -> _UDPSession:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(
            _ClientProtocol, remote_addr=(_HOST, port)
        )
        return _UDPSession(protocol)
