"""Helpers shared by the QUIC tests: options, listeners, connected pairs, relays."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any

import pytest
from conftest import Certs, timeout
from loopback import running

import netconn as nc
from netconn.lab.relay import UDPRelay

__all__ = [
    "ALPN",
    "ENGINES",
    "quic_engine",
    "refused_on_qh3",
    "blackhole",
    "relay",
    "relay_to",
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
    async with (
        nc.Listener(options, host="127.0.0.1", parameters=parameters) as listener,
        running(listener, handler),
    ):
        yield listener


@asynccontextmanager
async def connected_pair(
    certs: Certs,
    *,
    server: dict[str, Any] | None = None,
    client: dict[str, Any] | None = None,
    parameters: nc.Parameters | None = None,
    via: UDPRelay | None = None,
) -> AsyncIterator[tuple[nc.Connection[nc.QUIC], nc.Connection[nc.QUIC]]]:
    """A ready (client, server) pair of connections over loopback (through ``via``)."""
    options = server_options(certs, **(server or {}))
    async with nc.Listener(options, host="127.0.0.1", parameters=parameters) as listener:
        target = endpoint(listener)
        if via is not None:
            target = await relay_to(via, listener.port)
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


def relay(*, server_delay: float = 0.0) -> UDPRelay:
    """A loopback relay for :func:`relay_to`, holding each server datagram ``server_delay`` s."""
    made = UDPRelay(("127.0.0.1", 0))
    made.to_client.delay = server_delay
    return made


async def relay_to(via: UDPRelay, server_port: int) -> nc.Endpoint:
    """Start ``via`` towards ``server_port``; return the endpoint clients should use."""
    via.upstream = ("127.0.0.1", server_port)
    await via.start()
    return nc.Endpoint.host_port(*via.address)


def blackhole(via: UDPRelay, on: bool) -> None:
    """Drop everything both ways through ``via`` (or stop dropping)."""
    via.to_upstream.blackhole = via.to_client.blackhole = on
