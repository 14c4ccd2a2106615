"""Shared pieces of the tests that count work: loop turns, tasks made, TCP handshakes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

from conftest import timeout

import netconn as nc

__all__ = ["Turns", "echo_handshakes", "tasks_made"]


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
            conn = nc.Connection(endpoint, stack)
            await conn.wait_ready(timeout(30))
            await conn.send(b"x")
            assert await conn.receive_exactly(1) == b"x"
            await conn.cancel()

        try:
            yield handshake
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
