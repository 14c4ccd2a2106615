"""Loopback pairs for the core tests: a listener, a client, and the server's side of it."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal, TypeAlias, TypeVar

import pytest
from conftest import Certs, timeout

import netconn as nc

__all__ = [
    "STREAMS",
    "StreamKind",
    "StreamPair",
    "client_stack",
    "free_port",
    "oriented",
    "record_states",
    "server_stack",
    "stream_pair",
    "transfer",
    "wait_until",
]

StreamKind: TypeAlias = Literal["tcp", "tls"]
STREAMS: tuple[StreamKind, ...] = ("tcp", "tls")
StreamPair: TypeAlias = tuple[nc.Connection[nc.StreamProtocol], nc.Connection[nc.StreamProtocol]]
_T = TypeVar("_T")


def server_stack(kind: StreamKind, certs: Certs) -> nc.StreamProtocol:
    """``TCP()`` or a ``TLS`` server with the test certificate."""
    if kind == "tcp":
        return nc.TCP()
    return nc.TLS(certificate=(certs.cert, certs.key))


def client_stack(kind: StreamKind, certs: Certs) -> nc.StreamProtocol:
    """``TCP()`` or a ``TLS`` client trusting the test CA."""
    if kind == "tcp":
        return nc.TCP()
    return nc.TLS(ca_file=certs.ca)


@asynccontextmanager
async def stream_pair(
    client: nc.StreamProtocol,
    server: nc.StreamProtocol,
    *,
    host: str = "127.0.0.1",
    parameters: nc.Parameters | None = None,
) -> AsyncIterator[StreamPair]:
    """A ready client connection and the listener's connection for it.

    Both are aborted on exit (after the test's own graceful closes, if any).
    """
    async with nc.Listener(server, host=host, parameters=parameters) as listener:
        conn = nc.Connection(nc.Endpoint.host_port(host, listener.port), client, parameters)
        try:
            async with asyncio.timeout(timeout(10)):
                await conn.wait_ready()
                accepted = await listener.accept()
            assert accepted is not None
            try:
                yield conn, accepted
            finally:
                accepted.force_cancel()
        finally:
            conn.force_cancel()


@asynccontextmanager
async def running(
    listener: nc.Listener[Any], handler: Callable[[nc.Connection[Any]], Awaitable[None]]
) -> AsyncIterator[None]:
    """``listener.run(handler)`` in a task for the block; cancelled (and must end so) after."""
    task = asyncio.create_task(listener.run(handler))
    try:
        yield
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def oriented(pair: StreamPair, role: str) -> StreamPair:
    """``(subject, peer)``: the side under test first, as client or as server."""
    client, server = pair
    return (client, server) if role == "client" else (server, client)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_until(predicate: Callable[[], _T], seconds: float = 5.0) -> _T:
    """Poll ``predicate`` until it returns something true; fail after ``seconds`` (scaled)."""
    async with asyncio.timeout(timeout(seconds)):
        for _ in iter(int, 1):
            value = predicate()
            if value:
                return value
            await asyncio.sleep(0.005)
    raise AssertionError("unreachable")


def record_states(conn: nc.Connection[nc.Stack]) -> list[str]:
    """A list that fills with the names of ``conn``'s states as they change."""
    names: list[str] = []
    conn.on_state_update(lambda _conn, state: names.append(type(state).__name__))
    return names


async def transfer(
    sender: nc.Connection[nc.StreamProtocol],
    receiver: nc.Connection[nc.StreamProtocol],
    total: int,
    chunk: int = 1 << 20,
) -> None:
    """Send ``total`` bytes (distinct 1 MiB blocks) and check the receiver's hash and count."""
    block = bytearray(random.Random(total).randbytes(chunk))

    async def send() -> str:
        digest = hashlib.sha256()
        for index in range(0, total, chunk):
            block[:8] = index.to_bytes(8, "big")
            piece = block[: min(chunk, total - index)]
            digest.update(piece)
            await sender.send(piece)
        await sender.send(b"", is_complete=True)
        return digest.hexdigest()

    async def receive() -> tuple[int, str]:
        digest = hashlib.sha256()
        count = 0
        while data := await receiver.receive(1, chunk):
            digest.update(data)
            count += len(data)
        return count, digest.hexdigest()

    async with asyncio.TaskGroup() as group:
        sent = group.create_task(send())
        received = group.create_task(receive())
    assert received.result() == (total, sent.result())
