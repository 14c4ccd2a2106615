"""Shared pieces of the tests that count work: loop turns, tasks made, TCP handshakes, memory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from conftest import timeout

import netconn as nc

__all__ = [
    "Turns",
    "asyncio_echo_server",
    "echo_handshakes",
    "tasks_made",
    "tcp_handshake",
    "traced_per_connection",
]


class Turns:
    """Counts event-loop turns: a callback that schedules itself again each turn."""

    def __init__(self) -> None:
        self.count = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


@contextlib.contextmanager
def tasks_made(loop: asyncio.AbstractEventLoop) -> Iterator[list[str]]:
    """The qualified names of the coroutines of every task made on ``loop`` in the block."""
    made: list[str] = []
    factory = loop.get_task_factory()

    def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        made.append(coro.__qualname__)
        if factory is not None:
            return factory(loop, coro, **kwargs)
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(counting)
    try:
        yield made
    finally:
        loop.set_task_factory(factory)


async def tcp_handshake(
    endpoint: nc.Endpoint, stack: nc.TCP, ready_timeout: float | None = None
) -> None:
    """Connect, echo a byte, close."""
    conn = nc.Connection(endpoint, stack)
    await conn.wait_ready(ready_timeout)
    await conn.send(b"x")
    assert await conn.receive_exactly(1) == b"x"
    await conn.cancel()


async def traced_per_connection(
    endpoint: nc.Endpoint, stack: nc.TCP, ready_timeout: float | None = None, count: int = 40
) -> tuple[float, float]:
    """Bytes and blocks netconn's own code allocates per idle connection made to a
    netconn listener in this process, averaged over its client and server ends.

    Deterministic for one Python version: tracemalloc counts allocations, not RSS.
    """
    import tracemalloc

    warm = nc.Connection(endpoint, stack)
    await warm.wait_ready(ready_timeout)
    conns = []
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for _ in range(count):
            conn = nc.Connection(endpoint, stack)
            await conn.wait_ready(ready_timeout)
            conns.append(conn)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    own = [tracemalloc.Filter(True, f"{nc.__path__[0]}/*")]
    diff = after.filter_traces(own).compare_to(before.filter_traces(own), "filename")
    for conn in [warm, *conns]:
        conn.force_cancel()
    ends = count * 2  # the listener's ends are counted too
    return sum(stat.size_diff for stat in diff) / ends, sum(stat.count_diff for stat in diff) / ends


@contextlib.asynccontextmanager
async def asyncio_echo_server() -> AsyncIterator[nc.Endpoint]:
    """An asyncio-streams echo server on loopback: only netconn's client is counted."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(100):
            writer.write(data)
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server:
        yield nc.Endpoint.host_port("127.0.0.1", server.sockets[0].getsockname()[1])


@contextlib.asynccontextmanager
async def echo_handshakes() -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A TCP echo listener run by ``Listener.run``; yields one handshake against it:
    connect, echo a byte, close (both with ``TCP(no_delay=True)``)."""

    async def echo(conn: nc.Connection[nc.TCP]) -> None:
        while data := await conn.receive(1, 100):
            await conn.send(data)

    listener = nc.Listener(nc.TCP(no_delay=True), host="127.0.0.1")
    async with listener:
        task = asyncio.create_task(listener.run(echo))
        endpoint = nc.Endpoint.host_port("127.0.0.1", listener.port)
        stack = nc.TCP(no_delay=True)

        async def handshake() -> None:
            await tcp_handshake(endpoint, stack, timeout(30))

        try:
            yield handshake
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
