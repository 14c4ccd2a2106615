"""``Listener[P]``: accept connections over a stack.

The bottom stack binds and accepts (a TCP accept loop, a UDP demultiplexer,
a QUIC server). Each accepted transport becomes a :class:`Connection` that
finishes the upper layers' handshakes (TLS, WebSocket) on its own; only
connections that reach ``Ready`` are handed out. Accepting pauses while
``backlog`` connections wait to be taken, so a slow application bounds the
server's memory.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

from ._netns import thread_netns
from .connection import Connection
from .endpoint import Address, Endpoint
from .errors import InvalidState, NetconnError, map_os_error
from .parameters import Parameters
from .stacks.base import AttemptContext, Channel, Stack, ignore_loss
from .state import (
    TERMINAL_STATES,
    Cancelled,
    Failed,
    Ready,
    Setup,
    State,
    check_transition,
    is_terminal,
)

__all__ = ["Listener"]

logger = logging.getLogger("netconn")

P_co = TypeVar("P_co", bound=Stack, covariant=True)


class Listener(Generic[P_co]):
    """Accepts connections over ``stack`` on ``port`` (0: the system picks one).

    ``host`` is the local address to bind; ``None`` binds every address
    (IPv6 and IPv4). Use ``async with`` and then ``async for conn in
    listener`` or ``await listener.run(handler)``.
    """

    def __init__(
        self,
        stack: P_co,
        *,
        port: int = 0,
        host: str | None = None,
        parameters: Parameters | None = None,
        backlog: int = 128,
    ) -> None:
        self._stack = stack
        self._host = host
        self._requested_port = port
        self.parameters = parameters if parameters is not None else Parameters()
        """The parameters every accepted connection gets."""
        self.backlog = backlog
        """Connections that may wait (handshaking or ready) before accepting pauses."""
        self._state: State = Setup()
        self._state_callbacks: list[Callable[[Listener[P_co], State], None]] = []
        self._connection_callbacks: list[Callable[[Connection[P_co]], None]] = []
        self._ready: asyncio.Queue[Connection[P_co] | None] = asyncio.Queue()
        # While run() runs: its task group and handler, which take ready connections directly.
        self._direct: (
            tuple[asyncio.TaskGroup, Callable[[Connection[P_co]], Awaitable[None]]] | None
        ) = None
        self._handshaking: set[Connection[P_co]] = set()  # accepted, not yet ready or ended
        self._room: asyncio.Event = asyncio.Event()
        self._room.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closers: list[Callable[[], None]] = []
        self._sockets: list[socket.socket] = []
        self._bound: list[Address] = []
        self._children: set[Connection[P_co]] = set()
        self._netns: str | None = None  # the namespace the sockets were bound in
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop start() ran on
        self.closing = False
        """True once the listener is being cancelled."""
        self.failed_handshakes = 0
        """Accepted transports whose upper-layer handshake failed."""

    def __repr__(self) -> str:
        return f"<Listener {self._stack.describe()} port={self.port} {self._state}>"

    # What it is

    @property
    def stack(self) -> P_co:
        """The stack every accepted connection runs."""
        return self._stack

    @property
    def state(self) -> State:
        """``Setup``, ``Ready``, ``Failed`` or ``Cancelled``."""
        return self._state

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for); 0 before start."""
        return self._bound[0].port if self._bound else 0

    @property
    def local_endpoints(self) -> list[Address]:
        """Every bound address (still known after cancel)."""
        return list(self._bound)

    @property
    def connections(self) -> frozenset[Connection[P_co]]:
        """Accepted connections not yet ended."""
        return frozenset(self._children)

    def on_state_update(self, callback: Callable[[Listener[P_co], State], None]) -> Self:
        """Call ``callback(listener, state)`` at every state change."""
        self._state_callbacks.append(callback)
        return self

    def on_new_connection(self, callback: Callable[[Connection[P_co]], None]) -> Self:
        """Call ``callback(connection)`` for each connection as it becomes ready."""
        self._connection_callbacks.append(callback)
        return self

    def _transition(self, new: State) -> None:
        check_transition(self._state, new)
        self._state = new
        for callback in list(self._state_callbacks):
            try:
                callback(self, new)
            except Exception as exc:
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"{callback!r} raised", "exception": exc}
                )

    # Life cycle

    async def start(self) -> Self:
        """Bind and begin accepting. Raises the error if binding fails."""
        if not isinstance(self._state, Setup):
            return self
        try:
            try:
                for layer in self._stack.layers():
                    layer.check_listener_options()
                self._netns = thread_netns()
                self._loop = asyncio.get_running_loop()
                await self._stack.bottom.start_listener(self, self._host, self._requested_port)
            except OSError as exc:
                if isinstance(exc, NetconnError):
                    raise
                raise map_os_error(exc, "listen") from exc
        except NetconnError as error:
            self._close_sockets()
            self._transition(Failed(error))
            raise
        self._transition(Ready())
        return self

    async def cancel(self) -> None:
        """Stop accepting and cancel every accepted connection gracefully."""
        if is_terminal(self._state):
            return
        self.closing = True
        # Stop the accept loops before closing their sockets: a pending
        # sock_accept must unregister its fd before the number can be reused.
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._close_sockets()
        children = list(self._children)
        self._children.clear()
        await asyncio.gather(*(c.cancel() for c in children), return_exceptions=True)
        self._transition(Cancelled())
        while not self._ready.empty():  # they were cancelled above: never hand them out
            self._ready.get_nowait()
        self._ready.put_nowait(None)

    def _close_sockets(self) -> None:
        for closer in self._closers:
            closer()
        for sock in self._sockets:
            sock.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.cancel()

    # Handing out connections

    def __aiter__(self) -> AsyncIterator[Connection[P_co]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Connection[P_co]]:
        while True:
            conn = await self.accept()
            if conn is None:
                return
            yield conn

    async def accept(self) -> Connection[P_co] | None:
        """The next ready connection; ``None`` once the listener is cancelled."""
        if isinstance(self._state, Setup):
            raise InvalidState("start the listener first", self._state)
        if is_terminal(self._state) and self._ready.empty():
            return None
        conn = await self._ready.get()
        self._update_room()
        if conn is None:
            self._ready.put_nowait(None)  # keep waking other readers
        return conn

    async def run(self, handler: Callable[[Connection[P_co]], Awaitable[None]]) -> None:
        """Run ``handler(connection)`` in its own task for every connection, until cancelled.

        When a handler returns the connection is cancelled gracefully; when it
        raises, the connection is aborted and the error is logged. While it
        runs, every connection goes to a handler, none to :meth:`accept`.
        """
        if isinstance(self._state, Setup):
            await self.start()
        async with asyncio.TaskGroup() as group:
            # From now on a connection that becomes ready starts its handler at
            # once (_child_state), without a trip through the queue and this task.
            direct = (group, handler)
            self._direct = direct
            try:
                async for conn in self:  # those that were already waiting, then the end
                    group.create_task(self._handle(handler, conn))
            finally:
                if self._direct is direct:
                    self._direct = None

    async def _handle(
        self, handler: Callable[[Connection[P_co]], Awaitable[None]], conn: Connection[P_co]
    ) -> None:
        try:
            await handler(conn)
        except Exception:
            if self.closing and isinstance(conn.state, Cancelled):
                # The listener's cancel() closed the connection under the handler.
                logger.debug("handler for %r ended by the listener's cancel()", conn)
                return
            logger.exception("handler for %r failed", conn)
            conn.force_cancel()
        else:
            if not conn._cancel_at_once():  # TCP with nothing left to send closes without a wait
                await conn.cancel()

    # Used by the bottom stack that accepts

    def add_task(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run ``coro`` until the listener is cancelled."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def add_closer(self, closer: Callable[[], None]) -> None:
        """Call ``closer()`` when the listener is cancelled."""
        self._closers.append(closer)

    def set_sockets(self, sockets: list[socket.socket]) -> None:
        """Record the bound sockets (for ``port`` and closing)."""
        self._sockets = sockets
        # Kept apart from the sockets: a closed socket has no name to ask for.
        self._bound = [Address.from_sockaddr(s.getsockname()) for s in sockets]

    def has_room(self, pending: int = 0) -> bool:
        """Whether another connection may be accepted now.

        ``pending``: connections the stack accepted but has not handed over yet.
        """
        waiting = len(self._handshaking) + self._ready.qsize() + pending
        return waiting < self.backlog and not self.closing

    def _update_room(self) -> None:
        room = self._room
        if self.has_room():
            if not room.is_set():  # the common case, without Event.set()'s call
                room.set()
        else:
            room.clear()

    async def wait_for_room(self) -> None:
        """Wait until the backlog has room."""
        await self._room.wait()

    def attempt_context(self) -> AttemptContext:
        """A fresh context for one accepted transport."""
        return AttemptContext(None, self.parameters, on_lost=ignore_loss, loop=self._loop)

    def report_accept_error(self, exc: OSError) -> None:
        """An accept failed (e.g. out of file descriptors); accepting goes on."""
        logger.warning("listener on port %d: accept failed: %s", self.port, exc)

    def accepted(self, channel: Channel, ctx: AttemptContext) -> None:
        """Turn an accepted transport channel into a connection and start it."""
        conn = Connection(_NO_ENDPOINT, self._stack, self.parameters)
        # The connection calls our _child_state itself: no callback per connection.
        conn._take_accepted(channel, ctx, self._loop, self)
        self._children.add(conn)
        self._handshaking.add(conn)
        conn.start()  # TCP and UDP are ready at once: _child_state updated the room
        if conn in self._handshaking:
            self._update_room()

    def _child_state(self, c: Connection[P_co], state: State) -> None:
        if isinstance(state, (Ready, Failed, Cancelled)) and c in self._handshaking:
            self._handshaking.discard(c)
            if isinstance(state, Ready) and not self.closing:
                if self._direct is not None:
                    group, handler = self._direct
                    group.create_task(self._handle(handler, c))
                else:
                    self._ready.put_nowait(c)
                if self._connection_callbacks:
                    for callback in list(self._connection_callbacks):
                        callback(c)
            elif isinstance(state, Failed):
                self.failed_handshakes += 1
                logger.info("inbound %r failed: %s", c, state.error)
            # One connection fewer handshaking (and at most one more queued):
            # the room can only have grown, so an open room stays open.
            if self.closing or not self._room.is_set():
                self._update_room()
        if type(state) in TERMINAL_STATES:
            self._children.discard(c)


_NO_ENDPOINT = Endpoint("", 0)
