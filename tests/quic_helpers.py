"""Helpers shared by the QUIC tests: options, listeners, connected pairs, a UDP relay."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
from conftest import Certs, timeout

import netconn as nc

__all__ = [
    "ALPN",
    "ENGINES",
    "quic_engine",
    "refused_on_qh3",
    "Relay",
    "client_options",
    "connected_pair",
    "endpoint",
    "serving",
    "server_options",
]

ALPN = ["netconn-test"]

ENGINES = ("aioquic", "qh3")
"""Every QUIC engine; the suite runs against each (qh3 must be installed: no skipping)."""
engine: nc.QUICEngine = "aioquic"
"""The engine :func:`server_options` and :func:`client_options` use in the running test."""


@pytest.fixture(params=ENGINES)
def quic_engine(request: pytest.FixtureRequest) -> Iterator[nc.QUICEngine]:
    """Run the test once per engine (conftest.py registers this module's fixtures)."""
    global engine
    engine = request.param
    try:
        yield engine
    finally:
        engine = "aioquic"


Handler = Callable[[nc.Connection[nc.QUIC]], Awaitable[None]]


def refused_on_qh3(**options: Any) -> bool:
    """On the qh3 engine, check that ``options`` are refused when built, naming the
    option and the engine, and return True (the test has nothing more to run)."""
    if engine != "qh3":
        return False
    name = next(iter(options))
    with pytest.raises(ValueError, match=f"{name}=.*engine='qh3'"):
        nc.QUIC(alpn=ALPN, engine="qh3", **options)
    return True


def server_options(certs: Certs, **kwargs: Any) -> nc.QUIC:
    """Server options with the test certificate, changed by ``kwargs``."""
    return replace(nc.QUIC(alpn=ALPN, certificate=(certs.cert, certs.key), engine=engine), **kwargs)


def client_options(certs: Certs, **kwargs: Any) -> nc.QUIC:
    """Client options trusting the test CA, changed by ``kwargs``."""
    return replace(
        nc.QUIC(alpn=ALPN, server_name="localhost", ca_file=certs.ca, engine=engine), **kwargs
    )


def endpoint(listener: nc.Listener[Any]) -> nc.Endpoint:
    return nc.Endpoint.host_port("127.0.0.1", listener.port)


@asynccontextmanager
async def serving(
    options: nc.QUIC, handler: Handler, parameters: nc.Parameters | None = None
) -> AsyncIterator[nc.Listener[nc.QUIC]]:
    """A listener on 127.0.0.1 running ``handler`` for every connection."""
    async with nc.Listener(options, host="127.0.0.1", parameters=parameters) as listener:
        task = asyncio.create_task(listener.run(handler))
        try:
            yield listener
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


@asynccontextmanager
async def connected_pair(
    certs: Certs,
    *,
    server: dict[str, Any] | None = None,
    client: dict[str, Any] | None = None,
    parameters: nc.Parameters | None = None,
    via: Relay | None = None,
) -> AsyncIterator[tuple[nc.Connection[nc.QUIC], nc.Connection[nc.QUIC]]]:
    """A ready (client, server) pair of connections over loopback (through ``via``)."""
    options = server_options(certs, **(server or {}))
    async with nc.Listener(options, host="127.0.0.1", parameters=parameters) as listener:
        target = endpoint(listener)
        if via is not None:
            target = await via.start(listener.port)
        conn = nc.Connection(target, client_options(certs, **(client or {})), parameters)
        async with conn:
            accepted = await asyncio.wait_for(listener.accept(), timeout(10))
            assert accepted is not None
            yield conn, accepted


def roles(
    pair: tuple[nc.Connection[nc.QUIC], nc.Connection[nc.QUIC]], role: str
) -> tuple[nc.Connection[nc.QUIC], nc.Connection[nc.QUIC]]:
    """(acting side, other side): the client acts for ``"client"``, else the server."""
    client, server = pair
    return (client, server) if role == "client" else (server, client)


class Relay:
    """A UDP relay on loopback between one client and one server.

    ``blackhole`` drops everything both ways; ``rebind()`` makes the relay
    talk to the server from a new port, as a NAT rebinding would.
    """

    def __init__(self, *, server_delay: float = 0.0) -> None:
        self.server_delay = server_delay
        """Seconds every packet from the server is held back."""
        self.blackhole = False
        self._front: socket.socket | None = None
        self._back: socket.socket | None = None
        self._client: Any = None
        self._server: tuple[str, int] = ("127.0.0.1", 0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.rebinds = 0

    async def start(self, server_port: int) -> nc.Endpoint:
        """Relay to ``server_port``; return the endpoint clients should use."""
        self._loop = asyncio.get_running_loop()
        self._server = ("127.0.0.1", server_port)
        front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        front.bind(("127.0.0.1", 0))
        front.setblocking(False)
        self._front = front
        self._loop.add_reader(front.fileno(), self._from_client)
        self._open_back()
        return nc.Endpoint.host_port("127.0.0.1", front.getsockname()[1])

    def _open_back(self) -> None:
        assert self._loop is not None
        back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        back.bind(("127.0.0.1", 0))
        back.setblocking(False)
        self._back = back
        self._loop.add_reader(back.fileno(), self._from_server, back)

    def rebind(self) -> None:
        """Talk to the server from a new source port from now on."""
        assert self._loop is not None and self._back is not None
        old = self._back
        self._loop.remove_reader(old.fileno())
        old.close()
        self._open_back()
        self.rebinds += 1

    def _from_client(self) -> None:
        assert self._front is not None and self._back is not None
        while True:
            try:
                data, addr = self._front.recvfrom(65535)
            except BlockingIOError:
                return
            self._client = addr
            if not self.blackhole:
                self._back.sendto(data, self._server)

    def _from_server(self, back: socket.socket) -> None:
        assert self._front is not None
        while True:
            try:
                data, _ = back.recvfrom(65535)
            except (BlockingIOError, OSError):
                return
            if not self.blackhole and self._client is not None:
                if self.server_delay:
                    assert self._loop is not None
                    self._loop.call_later(self.server_delay, self._to_client, data)
                else:
                    self._front.sendto(data, self._client)

    def _to_client(self, data: bytes) -> None:
        if self._front is not None and self._front.fileno() >= 0:
            self._front.sendto(data, self._client)

    def close(self) -> None:
        assert self._loop is not None
        for sock in (self._front, self._back):
            if sock is not None:
                self._loop.remove_reader(sock.fileno())
                sock.close()
