"""One writer at a time, in the order they came: a lock without coroutines of its own.

``asyncio.Lock`` runs an ``acquire`` coroutine even when nobody holds it. A
flush runs once per send, so the channels that serialise their writes (TLS,
WebSocket) test and set :attr:`Turn.held` themselves and only wait through
:meth:`Turn.wait` when another flush is in flight.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Turn"]


class Turn:
    """Who may write now: ``held`` while one does; the others wait in order."""

    __slots__ = ("_waiters", "held")

    def __init__(self) -> None:
        self.held = False
        # Made by the first wait: most connections never contend.
        self._waiters: deque[asyncio.Future[None]] | None = None

    async def wait(self) -> None:
        """Wait for a held turn to come to the caller, who then holds it."""
        waiter = asyncio.get_running_loop().create_future()
        waiters = self._waiters
        if waiters is None:
            waiters = self._waiters = deque()
        waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # our turn came: pass it on
            elif waiter in waiters:
                waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Hand the turn to the next waiter (it stays held for it), or free it."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.held = False
