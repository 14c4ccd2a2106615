"""The WebSocket baseline: the ``websockets`` library's asyncio client and server."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

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

__all__ = ["WebsocketsLibrary"]

_HOST = "127.0.0.1"
_MAX_SIZE = 1 << 20  # as netconn's WebSocket default


class _Messages:
    def __init__(self, ws: Any) -> None:
        self._ws = ws

    async def send(self, data: bytes, end: bool = False) -> None:
        await self._ws.send(data)

    async def recv(self, at_most: int = 0) -> bytes:
        from websockets.exceptions import ConnectionClosed

        try:
            data: bytes = await self._ws.recv()
        except ConnectionClosed:
            return b""
        return data

    async def recv_exactly(self, size: int) -> bytes:
        data = await self.recv()
        if len(data) != size:
            raise EOFError(f"expected a {size}-byte message, got {len(data)}")
        return data


class _Session:
    def __init__(self, ws: Any) -> None:
        self._ws = ws

    async def stream(self) -> Stream:
        return _Messages(self._ws)

    def datagrams(self) -> Datagrams:
        raise Unsupported("WebSocket has no datagrams")

    @property
    def resumed(self) -> bool:
        return False

    async def close(self) -> None:
        await self._ws.close()


class WebsocketsLibrary:
    """``websockets.asyncio.client.connect`` / ``websockets.asyncio.server.serve``,
    compression and keepalive pings off."""

    name = "websockets"

    def check(self) -> None:
        try:
            import websockets.asyncio.server  # noqa: F401
        except ImportError as exc:
            raise Unavailable(f"the websockets library is not installed: {exc}") from exc

    @asynccontextmanager
    async def serve(
        self, env: Env, on_stream: StreamHandler, on_datagram: DatagramHandler
    ) -> AsyncIterator[int]:
        from websockets.asyncio.server import serve
        from websockets.exceptions import ConnectionClosed

        async def handle(ws: Any) -> None:
            with contextlib.suppress(ConnectionClosed, EOFError):
                await on_stream(_Messages(ws))

        async with serve(
            handle, _HOST, 0, compression=None, ping_interval=None, max_size=_MAX_SIZE
        ) as server:
            yield int(next(iter(server.sockets)).getsockname()[1])

    async def connect(self, env: Env, port: int, options: ConnectOptions) -> _Session:
        from websockets.asyncio.client import connect

        if options.resume or options.early_data:
            raise Unsupported("WebSocket over TCP has no session resumption")
        ws = await connect(
            f"ws://{_HOST}:{port}/", compression=None, ping_interval=None, max_size=_MAX_SIZE
        )
        return _Session(ws)
