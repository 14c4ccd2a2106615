"""``Connection[P]``: one connection over a stack, its state, path and data.

How this works: ``start()`` runs one establishment task. It resolves the
endpoint and races its addresses (Happy Eyeballs, :mod:`netconn.racing`),
each attempt asking the stack to build its channel (TCP, then TLS on it,
...). A retryable failure puts the connection in ``Waiting`` and the task
sleeps (doubling the delay) or wakes on ``restart()`` or a network change
(:mod:`netconn.pathmonitor`); anything else ends in ``Failed``. Once a channel is up the
connection is ``Ready`` and ``send``/``receive`` go straight to the channel,
which enforces the buffer bounds. Every state change goes through
``_transition``, which checks the table in :mod:`netconn.state`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeVar, cast, overload

from ._deadline import Deadline, Deadlines
from .endpoint import Address, Endpoint, literal_address
from .errors import (
    ConnectError,
    ConnectionClosed,
    ConnectionTimeout,
    EndOfStream,
    InvalidState,
    NetconnError,
    map_os_error,
)
from .parameters import Parameters
from .path import Path, PathStatus
from .pathmonitor import PathWatcher, ViabilityTracker
from .quic import Directionality, QUICChannel, QUICDatagrams, QUICStream
from .racing import Attempt, EstablishmentReport, Outcome, Race, _as_error
from .stacks.base import (
    AttemptContext,
    ByteChannel,
    Channel,
    Message,
    MessageChannel,
    MessageProtocol,
    Stack,
    StreamProtocol,
    TypedChannel,
    ignore_loss,
)
from .stacks.quic import QUIC
from .stacks.udp import UDP
from .state import (
    _TRANSITIONS,
    TERMINAL_STATES,
    Cancelled,
    Failed,
    Preparing,
    Ready,
    Setup,
    State,
    Waiting,
    check_transition,
    is_terminal,
)

if TYPE_CHECKING:
    from .stacks.coder import Coder
    from .stacks.framing import TLV
    from .stacks.websocket import WebSocket, WebSocketHandshake

__all__ = ["Attempt", "Connection", "EstablishmentReport"]

logger = logging.getLogger("netconn")

P_co = TypeVar("P_co", bound=Stack, covariant=True)
"""The top of a connection's stack (covariant: a ``Connection[TLS]`` is a
``Connection[StreamProtocol]``)."""

T = TypeVar("T")
"""The message type of a ``Coder`` stack."""

Buffer = bytes | bytearray | memoryview
_ids = itertools.count(1)
# A ready report of one attempt: address, started after, took, ready after.
_OneAttempt = tuple[Address, float, float, float]
_DEFAULT_PARAMETERS = Parameters()
_SETUP = Setup()
# The states without fields are values: one instance each serves every connection.
_PREPARING = Preparing()
_READY = Ready()
_CANCELLED = Cancelled()


class Connection(Generic[P_co]):
    """A connection to ``endpoint`` over ``stack``.

    The type parameter is the top of the stack: ``Connection(ep, TLS())`` is a
    ``Connection[TLS]``. Methods that only make sense for some stacks say so
    in their ``self`` type, so mypy rejects ``Connection[UDP].receive(...)``.

    Use it as an async context manager (start, wait until ready, cancel on
    exit), or call :meth:`start` and watch :attr:`state`.
    """

    # Slots, and tuples of callbacks that stay the shared empty tuple until one
    # is added: a thousand idle connections should cost little more than their sockets.
    # "__dict__" keeps other attributes possible; the dict is only made for them.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_accepted",
        "_channel",
        "_ctx",
        "_cut",
        "_endpoint",
        "_inline",
        "_listener",
        "_loop",
        "_parameters",
        "_path",
        "_race",
        "_report",
        "_stack",
        "_state",
        "_state_callbacks",
        "_state_waiters",
        "_task",
        "_viability",
        "_viable",
        "_watcher",
        "id",
    )

    # QUIC's alone: class defaults, so a TCP connection keeps no slot for them
    # (a QUIC connection that sets one gets its __dict__).
    _inbound_claimed: bool = False
    _pending_keepalive: float | Literal[False] | None = False
    _pending_application_error: tuple[int, str] | None = None
    # Set only once a connection waits to retry: class defaults too, not two
    # writes per connection.
    _restart: asyncio.Event | None = None
    _skip_first = 0
    # Path and viability callbacks, which few connections add: class defaults
    # (the shared empty tuple) until one is, then in the connection's __dict__.
    _path_callbacks: tuple[Callable[[Connection[P_co], Path], None], ...] = ()
    _viability_callbacks: tuple[Callable[[Connection[P_co], bool], None], ...] = ()
    _better_path_callbacks: tuple[Callable[[Connection[P_co], bool], None], ...] = ()

    def __init__(
        self,
        endpoint: Endpoint,
        stack: P_co,
        parameters: Parameters | None = None,
    ) -> None:
        self._endpoint: Endpoint | None = endpoint
        self._stack = stack
        self._parameters = parameters if parameters is not None else _DEFAULT_PARAMETERS
        self._state: State = _SETUP
        self._state_callbacks: tuple[Callable[[Connection[P_co], State], None], ...] = ()
        self._state_waiters: list[asyncio.Future[None]] | None = None
        self._channel: Channel | None = None
        self._ctx: AttemptContext | None = None
        self._task: asyncio.Task[None] | None = None
        # The caller's task while wait_ready() runs the first attempt in it.
        self._inline: asyncio.Task[Any] | None = None
        # The loop start() ran on: asking asyncio for it again costs a getpid()
        # system call per ask on Python 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._accepted: Channel | None = None
        # The listener that accepted this connection: told of every state change
        # first, without a callback tuple and bound method per connection.
        self._listener: Any = None
        self._path: Path | None = None
        # Made at the first transport or link event: until then whether the
        # connection is viable is a flag, and idle connections skip the tracker.
        self._viability: ViabilityTracker | None = None
        self._viable = False
        self._watcher: PathWatcher | None = None
        self._race: Race | None = None
        # Made by the first attempt, or on asking; once ready after one attempt
        # to an IP literal, kept as a tuple (_compact_report).
        self._report: EstablishmentReport | _OneAttempt | Address | None = None
        self.id = next(_ids)
        """A number unique among this process's connections."""

    def _take_accepted(
        self,
        channel: Channel,
        ctx: AttemptContext,
        loop: asyncio.AbstractEventLoop | None = None,
        listener: Any = None,
    ) -> None:
        """Make this a server-side connection on an accepted transport channel.

        ``loop``: the listener's event loop, which this connection runs on;
        ``listener``: whose ``_child_state(connection, state)`` hears every
        change, and in whose network namespace (``_netns``) the channel's socket lives.
        """
        self._loop = loop
        self._listener = listener
        self._endpoint = None
        self._accepted = channel
        self._adopt(ctx)

    def _adopt(self, ctx: AttemptContext) -> None:
        """Route ``ctx``'s transport events to this connection.

        Only the winning attempt's context (or an accepted one) gets the
        hooks: a loser's channel reports into its context's no-op defaults.
        """
        self._ctx = ctx
        ctx.owner = self  # its hooks call our _lost, _set_viable and _peer_moved

    def __repr__(self) -> str:
        where = self._endpoint if self._endpoint is not None else self.remote_endpoint
        return f"<Connection #{self.id} {self._stack.describe()} {where} {self._state}>"

    # What it is

    @property
    def stack(self) -> P_co:
        """The stack this connection runs."""
        return self._stack

    @property
    def endpoint(self) -> Endpoint | None:
        """The endpoint asked for; ``None`` for a connection a listener accepted."""
        return self._endpoint

    @property
    def parameters(self) -> Parameters:
        """The parameters in force."""
        return self._parameters

    @property
    def state(self) -> State:
        """The current state."""
        return self._state

    @property
    def current_path(self) -> Path | None:
        """The path in use once ready: interface, local and remote endpoints."""
        if self._path is None and type(self._state) is Ready:
            # Evaluated on first use: most connections never ask.
            watcher = self._follow()
            if watcher is not None:
                self._path = watcher.evaluate()
        return self._path

    @property
    def local_endpoint(self) -> Address | None:
        """The local address and port, once ready."""
        return None if self._channel is None else self._channel.local_address

    @property
    def remote_endpoint(self) -> Address | None:
        """The remote address and port, once ready."""
        return None if self._channel is None else self._channel.remote_address

    @property
    def is_viable(self) -> bool:
        """Whether packets can currently flow on the path (debounced)."""
        if type(self._state) is Ready:
            self._follow()
        return self._viable

    @property
    def better_path_available(self) -> bool:
        """Whether a preferable path (e.g. a non-expensive interface) reaches the remote."""
        watcher = self._follow() if type(self._state) is Ready else self._watcher
        return watcher is not None and watcher.better_path

    @property
    def establishment_report(self) -> EstablishmentReport:
        """Resolution and every attempt, with their outcomes."""
        report = self._report
        if type(report) is EstablishmentReport:  # narrowed by type(): no cast() call
            return report
        if type(report) is tuple:
            address, started_after, took, duration = report
            attempt = Attempt(address, started_after, took, "ready")
            made = self._report = EstablishmentReport(0.0, [address], [attempt], duration)
        elif type(report) is Address:  # the inline attempt to it, running
            made = self._report = EstablishmentReport(0.0, [report], [Attempt(report, 0.0)])
        else:
            made = self._report = EstablishmentReport()
        return made

    def _compact_report(self, duration: float) -> None:
        """At ready: the report's duration; one ready attempt to the one address
        is kept as a tuple of four instead of five objects and two lists."""
        report = self._report
        if type(report) is not EstablishmentReport:
            report = self.establishment_report
        report.duration = duration
        attempts = report.attempts
        if (
            len(attempts) == 1
            and len(report.resolved) == 1
            and not report.resolution_duration
            and attempts[0].address is report.resolved[0]
            and attempts[0].error is None
        ):
            attempt = attempts[0]
            self._report = (attempt.address, attempt.started_after, attempt.duration, duration)

    @property
    def negotiated_alpn(self) -> str | None:
        """The application protocol TLS (or QUIC) negotiated, if any."""
        return cast(str | None, self._find_in_channels("negotiated_alpn"))

    @property
    def tls_info(self) -> dict[str, Any] | None:
        """TLS version, cipher, ALPN and resumption, when the stack has TLS."""
        info = self._find_in_channels("tls_info")
        return None if info is None else cast(dict[str, Any], info())

    @property
    def buffered_bytes(self) -> tuple[int, int]:
        """Bytes this connection holds in the process, summed over its layers.

        ``(waiting to be sent, received and not yet read)``; each stays within
        the bounds in :class:`Parameters` plus a chunk per layer.
        """
        sending = receiving = 0
        channel: Any = self._channel
        while channel is not None:
            counts = getattr(channel, "buffered_bytes", None)
            if counts is not None:
                sending += counts[0]
                receiving += counts[1]
            channel = getattr(channel, "inner", None)
        return sending, receiving

    def _find_in_channels(self, name: str) -> Any:
        channel: Any = self._channel
        while channel is not None:
            if hasattr(channel, name):
                return getattr(channel, name)
            channel = getattr(channel, "inner", None)
        return None

    # Callbacks: each returns self so they chain like the Swift modifiers.

    def on_state_update(self, callback: Callable[[Connection[P_co], State], None]) -> Self:
        """Call ``callback(connection, state)`` on the event loop at every state change."""
        self._state_callbacks += (callback,)
        return self

    def on_path_update(self, callback: Callable[[Connection[P_co], Path], None]) -> Self:
        """Call ``callback(connection, path)`` when the path is known or changes."""
        self._path_callbacks += (callback,)
        self._observed()
        return self

    def on_viability_update(self, callback: Callable[[Connection[P_co], bool], None]) -> Self:
        """Call ``callback(connection, viable)`` when packets stop or start flowing."""
        self._viability_callbacks += (callback,)
        self._observed()
        return self

    def on_better_path_update(self, callback: Callable[[Connection[P_co], bool], None]) -> Self:
        """Call ``callback(connection, available)`` when a preferred path appears or goes."""
        self._better_path_callbacks += (callback,)
        self._observed()
        return self

    def _observed(self) -> None:
        """Someone listens to the path: follow it now if the connection is under way."""
        kind = type(self._state)
        if kind is Ready:
            self._follow()
        elif kind is not Setup and kind not in TERMINAL_STATES:
            self._start_watching()

    def _viable_changed(self, viable: bool) -> None:
        self._viable = viable
        if self._viability_callbacks:
            self._notify(self._viability_callbacks, viable)

    def _better_path_changed(self, better: bool) -> None:
        self._notify(self._better_path_callbacks, better)

    def _notify(
        self, callbacks: tuple[Callable[[Connection[P_co], Any], None], ...], value: Any
    ) -> None:
        # A tuple: callbacks added while these run wait for the next event.
        for callback in callbacks:
            try:
                callback(self, value)
            except Exception as exc:  # a broken callback must not break the connection
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"{callback!r} raised", "exception": exc, "connection": self}
                )

    # State

    def _transition(self, new: State) -> None:
        old = self._state
        kind = type(new)
        if kind not in _TRANSITIONS[type(old)]:
            check_transition(old, new)  # raises, with the message
        self._state = new
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("connection #%d: %s -> %s", self.id, old, new)
        if kind in TERMINAL_STATES:
            # Stop watching: no viability or path events after a final state.
            if self._viability is not None:
                self._viability.stop()
            if self._watcher is not None:
                self._watcher.stop(final=True)
            ctx = self._ctx
            if ctx is not None and ctx.owner is self:
                # A final state ignores transport events: no cycle left for the
                # garbage collector (nor through the watcher: stop(final=True)).
                ctx.owner = None
        elif kind is Waiting:
            # A waiting connection retries when the network changes.
            self._start_watching().refresh()
        waiters = self._state_waiters
        if waiters and not isinstance(new, Preparing):  # nothing wait_ready() acts on
            self._state_waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        callbacks = self._state_callbacks  # those added from here on wait for the next change
        listener = self._listener
        if listener is not None:
            try:
                listener._child_state(self, new)
            except Exception as exc:  # an on_new_connection callback that raised
                self._running_loop().call_exception_handler(
                    {"message": "listener callback raised", "exception": exc, "connection": self}
                )
        if callbacks:
            self._notify(callbacks, new)

    async def _state_changed(self, waiter: asyncio.Future[None] | None = None) -> None:
        if waiter is None:
            waiter = self._running_loop().create_future()
        if self._state_waiters is None:
            self._state_waiters = []
        self._state_waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._state_waiters is not None and waiter in self._state_waiters:
                self._state_waiters.remove(waiter)

    def _tracker(self) -> ViabilityTracker:
        tracker = self._viability
        if tracker is None:
            tracker = self._viability = ViabilityTracker(
                self._parameters.viability_debounce, self._viable_changed
            )
            tracker.reported = self._viable
        return tracker

    def _set_viable(self, viable: bool) -> None:
        if is_terminal(self._state):
            return
        self._tracker().set_transport(viable)

    def _peer_moved(self) -> None:
        # The transport saw the peer's address change (QUIC connection migration, NAT rebinding).
        if self._channel is None or is_terminal(self._state):
            return
        local, remote = self._channel.local_address, self._channel.remote_address
        if self._watcher is not None:
            self._path = self._watcher.track(local, remote)
        else:
            self._path = Path(local=local, remote=remote)
        self._notify(self._path_callbacks, self._path)

    def _lost(self, error: NetconnError | None) -> None:
        if type(self._state) in TERMINAL_STATES:
            return
        if error is not None and isinstance(self._state, Ready):
            if self._viability is not None:
                self._viability.stop(final=False)
            elif self._viable:
                self._viable_changed(False)
            self._transition(Failed(error))

    # Path: netlink events are followed only for someone who asks. A callback,
    # a waiting connection, or a read of current_path, is_viable or
    # better_path_available starts the watcher, which follows the path until a
    # final state; a connection that nobody asks about subscribes to nothing.

    def _observers(self) -> bool:
        return bool(
            self._path_callbacks or self._viability_callbacks or self._better_path_callbacks
        )

    def _new_watcher(self) -> PathWatcher:
        # An accepted connection's socket lives in its listener's namespace.
        listener = self._listener
        netns = None if listener is None else listener._netns
        watcher = self._watcher = PathWatcher(self._parameters, self, netns)
        return watcher

    def _start_watching(self) -> PathWatcher:
        watcher = self._watcher
        if watcher is None:
            watcher = self._new_watcher()
        watcher.start(self._loop)
        return watcher

    def _follow(self) -> PathWatcher | None:
        """A ready connection's watcher, following the path from now on if nothing did.

        The path, the link's viability and the better path are evaluated now,
        so what a first read returns is as current as what events would have left.
        """
        watcher = self._watcher
        if watcher is not None and watcher.following:
            return watcher
        channel = self._channel
        if channel is None:
            return watcher
        if watcher is None:
            watcher = self._new_watcher()
        sock = self._find_in_channels("socket")
        self._path = path = watcher.follow(
            channel.local_address, channel.remote_address, sock, self._loop
        )
        if path.status is not PathStatus.SATISFIED:
            if self._viability is not None:
                self._viability.set_link_now(False)
            self._viable = False
        self._follow_transport()
        return watcher

    def _follow_transport(self) -> None:
        # A transport that polls for viability (TCP's TCP_INFO) starts now.
        follow = self._find_in_channels("follow_viability")
        if follow is not None:
            follow()

    def _network_changed(self) -> None:
        if isinstance(self._state, Waiting) and self._restart is not None:
            self._restart.set()  # a path may have appeared: retry now

    def _link_changed(self, viable: bool) -> None:
        self._tracker().set_link(viable)

    def _path_changed(self, path: Path) -> None:
        self._path = path
        self._notify(self._path_callbacks, path)

    # Life cycle

    def start(self) -> Self:
        """Begin establishing (in the background) and return at once.

        Needs a running event loop. Starting twice does nothing.
        """
        if not isinstance(self._state, Setup) or self._task is not None:
            return self
        loop = self._loop  # set already for a listener's connection
        if loop is None:
            self._loop = loop = asyncio.get_running_loop()
        if self._observers():
            self._start_watching()
        if self._accepted is not None and type(self._stack).accept_channel is Stack.accept_channel:
            # Nothing to negotiate above the accepted transport (TCP, UDP): ready
            # now, without an establishment task and its trip through the loop,
            # and without a Preparing that only the listener could see.
            self._channel, self._accepted = self._accepted, None
            self._became_ready()
            return self
        self._task = loop.create_task(self._run(), name=self._name())
        return self

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        return asyncio.get_running_loop() if loop is None else loop

    async def wait_ready(
        self, timeout: float | None = None, *, allow_waiting: bool | None = None
    ) -> Self:
        """Start if needed and return once ready.

        Raises the error of ``Failed``; raises the error of ``Waiting`` unless
        ``allow_waiting`` (default: ``parameters.wait_for_connectivity``), in
        which case it keeps waiting; raises :class:`ConnectionTimeout` after
        ``timeout`` seconds (the connection itself goes on); raises
        :class:`InvalidState` if the connection was cancelled.
        """
        asked = timeout
        spent = False  # the inline attempt took all of the timeout
        if self._state is _SETUP and self._task is None:  # the one Setup (and no narrowing)
            endpoint = self._endpoint
            # An IP literal's single attempt runs in this task, when ``timeout``
            # cannot expire before the attempt's own deadline does: wait_ready's
            # timeout leaves the connection going on, which this task cannot do.
            if (
                self._accepted is None
                and endpoint is not None
                and not self._skip_first
                and (timeout is None or timeout >= self._parameters.attempt_timeout)
                and (type(endpoint) is Endpoint or type(endpoint).resolve is Endpoint.resolve)
                and (address := literal_address(endpoint.host, endpoint.port)) is not None
            ):
                began = await self._start_inline(address)
                # What is left of the timeout (_start_inline set the loop); not
                # needed with a channel: ready, or failed since, which ends the wait.
                if timeout is not None and self._channel is None:
                    timeout -= (self._loop or self._running_loop()).time() - began
                    spent = timeout <= 0
            else:
                self.start()
        if self._state is _READY:  # the one Ready
            return self
        if allow_waiting is None:
            allow_waiting = self._parameters.wait_for_connectivity
        loop = self._running_loop()
        # A deadline on the loop's shared timer, set only once there is something
        # to wait for: cheaper than an asyncio.timeout() context on every call.
        deadline: _Deadline | None = None
        try:
            while True:
                match self._state:
                    case Ready():
                        return self
                    case Failed(error=error):
                        raise error
                    case Waiting(error=error) if not allow_waiting:
                        raise error
                    case Cancelled():
                        raise InvalidState("the connection was cancelled", self._state)
                if spent or (deadline is not None and deadline.expired):
                    last = self._state.error if isinstance(self._state, Waiting) else None
                    raise ConnectionTimeout(
                        f"not ready after {asked} s (state: {self._state})"
                    ) from last
                waiter = loop.create_future()
                if timeout is not None and deadline is None:
                    deadline = _Deadline(Deadlines.of(loop))
                    deadline.entry = deadline.deadlines.add(timeout, deadline.expire)
                if deadline is not None:
                    deadline.waiter = waiter
                await self._state_changed(waiter)
        finally:
            if deadline is not None and deadline.entry is not None:
                deadline.deadlines.remove(deadline.entry)

    async def _start_inline(self, address: Address) -> float:
        """Start, running the attempt to ``address`` in the calling task; return when it began.

        Spares the establishment task and the two loop turns of starting it and
        of waking the caller, and the race: the connection itself keeps the
        attempt's deadline, its report and :meth:`try_next_endpoint`. An
        attempt that fails retryably leaves the back-off and retries to a
        task, as does a caller cancelled mid-attempt (the connection goes on);
        cancel() and force_cancel() end the attempt here.
        """
        loop = self._loop
        if loop is None:
            self._loop = loop = asyncio.get_running_loop()
        if self._observers():
            self._start_watching()
        if (
            self._state_callbacks
            or self._listener is not None
            or logger.isEnabledFor(logging.DEBUG)
        ):
            self._transition(_PREPARING)
            if type(self._state) is not Preparing:
                return loop.time()  # a state callback cancelled it
        else:
            self._state = _PREPARING  # from Setup, with nobody to tell
        task = asyncio.current_task(loop)
        assert task is not None
        cancelling = task.cancelling()
        parameters = self._parameters
        # _new_context(): no hooks until the attempt won (_adopt).
        ctx = AttemptContext(self._endpoint, parameters, ignore_loss, loop=loop)
        # The connection starts with its attempt: set-up before it is a few
        # microseconds, and one clock reading serves both.
        started = loop.time()
        report = self._report
        if report is None:
            # Resolved to the one address, one attempt to it running: kept as
            # the address alone unless someone asks for the report meanwhile.
            self._report = address
        else:  # asked for before the start: the one the caller holds
            if type(report) is not EstablishmentReport:
                report = self.establishment_report
            report.resolved = [address]
            report.resolution_duration = 0.0
            report.attempts.append(Attempt(address, 0.0))
        # Why the attempt's task was cancelled by the connection itself, if it was.
        self._cut: Literal["timeout", "skip"] | None = None
        self._inline = task
        # The attempt's deadline, on the loop's shared timer.
        deadlines = Deadlines.of(loop)
        deadline = deadlines.add(parameters.attempt_timeout, self._inline_expired)
        try:
            try:
                channel = await self._stack.open_channel(ctx, address)
            except asyncio.CancelledError as exc:
                # Raises the error a deadline or a skip makes of it.
                self._inline_cancelled(exc, task, cancelling, address, loop.time() - started)
                raise
            except Exception as exc:
                error = self._inline_failed(exc, address, loop.time() - started)
                if error is exc:
                    raise
                raise error from error.__cause__
            finally:
                deadlines.remove(deadline)
                self._inline = None
        except asyncio.CancelledError:
            if type(self._state) is Preparing:
                # The caller gave up waiting, not on the connection: it goes on.
                self._task = loop.create_task(self._run(started), name=self._name())
                raise
            if task.uncancel() <= cancelling:
                # cancel() or force_cancel() stopped the attempt: unless the
                # caller was cancelled as well, wait_ready reports the state.
                return started
            raise
        except NetconnError as error:
            if type(self._state) is Preparing and self._settle(error):
                self._task = loop.create_task(self._run(started, waiting=True), name=self._name())
            return started
        if self._state is not _PREPARING:  # ended while the attempt finished (the one Preparing)
            self._inline_ended(loop.time() - started, "ready")
            channel.abort()
            return started
        self._channel = channel
        self._ctx = ctx
        ctx.owner = self  # _adopt(ctx)
        took = loop.time() - started
        if self._report is address:
            self._report = (address, 0.0, took, took)
        else:
            self._inline_ended(took, "ready")
            self._compact_report(took)
        self._became_ready()
        return started

    def _inline_expired(self) -> None:
        """The inline attempt's deadline: stop it (it fails with a timeout)."""
        task = self._inline
        if task is not None and self._cut is None and not task.done():
            self._cut = "timeout"
            task.cancel()

    def _inline_cancelled(
        self,
        exc: asyncio.CancelledError,
        task: asyncio.Task[Any],
        cancelling: int,
        address: Address,
        took: float,
    ) -> None:
        """Record the inline attempt cancelled; raise the error its deadline
        or a skip makes of it. Returns for cancel() and an outside cancellation."""
        cut = self._cut
        # The connection's own cancellation taken back; the error it stands for
        # only if nothing else cancelled too (cancel() wins, as does the caller's).
        if cut is not None and task.uncancel() <= cancelling and self._inline is not None:
            if cut == "timeout":
                timed_out = TimeoutError()
                timed_out.__cause__ = exc
                error = _as_error(timed_out, address)
                self._inline_ended(took, "failed", error)
                raise error from timed_out
            # try_next_endpoint(): there is no next address to go on to.
            self._inline_ended(took, "cancelled", ConnectError("skipped by try_next_endpoint()"))
            raise ConnectError("no more addresses to try") from exc
        self._inline_ended(took, "cancelled")

    def _inline_failed(self, exc: Exception, address: Address, took: float) -> NetconnError:
        """Record the inline attempt failed; return its error (``exc``, or made of it)."""
        if isinstance(exc, OSError) and not isinstance(exc, NetconnError):
            mapped = map_os_error(exc, f"connect to {address}")
            mapped.__cause__ = exc
            exc = mapped
        error = _as_error(exc, address)
        self._inline_ended(took, "failed", error)
        return error

    def _inline_ended(
        self, took: float, outcome: Outcome, error: NetconnError | None = None
    ) -> None:
        """Complete the inline attempt's entry of the report, made a report now."""
        report = self.establishment_report
        attempt = report.attempts[-1]
        attempt.duration = took
        attempt.outcome = outcome
        attempt.error = error

    def _name(self) -> str:
        # Says which connection without formatting its repr.
        return f"netconn connection #{self.id}"

    def try_next_endpoint(self) -> None:
        """Move on to the next resolved address now.

        While preparing, the attempts in flight are abandoned (recorded as
        ``cancelled``) and the next address starts at once; while waiting, the
        next round starts now, one address further down the list. Raises
        :class:`InvalidState` in any other state.
        """
        if isinstance(self._state, Preparing) and self._race is not None:
            self._race.skip()
        elif isinstance(self._state, Preparing) and self._inline is not None:
            # The inline attempt (_start_inline), to the one address.
            if self._cut is None:
                self._cut = "skip"
                self._inline.cancel()
        elif isinstance(self._state, Waiting) and self._restart is not None:
            self._skip_first += 1
            self._restart.set()
        else:
            raise InvalidState(
                f"try_next_endpoint() needs a preparing or waiting connection, not {self._state}",
                self._state,
            )

    def restart(self) -> None:
        """Retry now, from ``Waiting``, without waiting out the back-off."""
        if not isinstance(self._state, Waiting) or self._restart is None:
            raise InvalidState(
                f"restart() needs a waiting connection, not {self._state}", self._state
            )
        self._restart.set()

    async def cancel(self) -> None:
        """Close gracefully: flush what was sent, then FIN / close_notify / close frame.

        Returns once the close finished (or timed out and aborted). The state
        becomes ``Cancelled``. Cancelling twice does nothing.
        """
        if type(self._state) not in TERMINAL_STATES:
            if self._task is not None or self._inline is not None:
                self._stop_task()
            self._transition(_CANCELLED)
        # _close_channel(graceful=True), without its coroutine around the channel's.
        channel = self._channel
        if channel is None:
            channel = self._accepted
            if channel is None:
                return
        self._channel = self._accepted = None
        try:
            await channel.close()
        except NetconnError:
            channel.abort()
        except asyncio.CancelledError:
            channel.abort()
            raise

    def _cancel_at_once(self) -> bool:
        """cancel() without waiting for the transport, when the channel can close
        at once (nothing left to send); returns whether it did.

        For a listener's handler that returned: nobody waits for the close, and
        waiting for it costs the handler's task a future and a wake-up.
        """
        channel: Any = self._channel
        if type(self._state) is not Ready or getattr(channel, "close_now", None) is None:
            return False
        self._stop_task()
        self._transition(_CANCELLED)
        channel = self._channel
        if channel is None:  # a state callback closed it
            return True
        if channel.close_now():
            self._channel = None
            return True
        return False  # cancel() closes it, waiting

    def force_cancel(self) -> None:
        """Abort at once (TCP RST, no close handshake). Never blocks."""
        self._stop_task()
        if not is_terminal(self._state):
            self._transition(_CANCELLED)
        channel, self._channel = self._channel, None
        accepted, self._accepted = self._accepted, None
        for ch in (channel, accepted):
            if ch is not None:
                ch.abort()

    def _stop_task(self) -> None:
        task = self._task
        if task is not None and not task.done():
            # Also when a state callback run by the task itself cancels: the
            # task then stops at its next await instead of going on connecting.
            task.cancel()
        inline = self._inline
        if inline is not None:
            # The caller's task runs the attempt: stop the attempt, not the caller
            # (_start_inline takes this cancellation back).
            self._inline = None
            if inline is not asyncio.current_task(self._loop):
                inline.cancel()

    async def _close_channel(self, *, graceful: bool) -> None:
        channel, self._channel = self._channel, None
        accepted, self._accepted = self._accepted, None
        if channel is None:
            channel = accepted
        if channel is None:
            return
        try:
            if graceful:
                await channel.close()
            else:
                channel.abort()
        except NetconnError:
            channel.abort()
        except asyncio.CancelledError:
            channel.abort()
            raise

    async def __aenter__(self) -> Self:
        try:
            return await self.wait_ready()
        except BaseException:
            self.force_cancel()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            await self.cancel()
        else:
            self.force_cancel()

    # Establishment

    async def _run(self, started: float | None = None, *, waiting: bool = False) -> None:
        """Establish, retrying from ``Waiting``; ``waiting``: back off first."""
        first, cap = self._parameters.retry_delays
        delay = first
        loop = self._running_loop()
        if started is None:
            started = loop.time()
        while True:
            if waiting:
                await self._back_off(delay)
                delay = min(cap, delay * 2)
            waiting = True
            if not isinstance(self._state, Preparing):  # already, when taken over from wait_ready
                self._transition(_PREPARING)
            try:
                await self._establish(started)
            except NetconnError as error:
                if self._settle(error):
                    continue
                return
            self._compact_report(loop.time() - started)
            self._task = None  # nothing left to stop; a finished task is memory kept for nothing
            self._became_ready()
            return

    def _settle(self, error: NetconnError) -> bool:
        """After a failed attempt: ``Waiting`` (returns true) or ``Failed``."""
        if error.retryable and self._accepted is None:
            # Made on the first wait only: an asyncio.Event costs about 1 KiB.
            if self._restart is None:
                self._restart = asyncio.Event()
            # Cleared before the callbacks run: one of them may call restart().
            self._restart.clear()
            self._transition(Waiting(error))
            return True
        self._transition(Failed(error))
        return False

    async def _back_off(self, delay: float) -> None:
        assert self._restart is not None
        try:
            async with asyncio.timeout(delay):
                await self._restart.wait()
        except TimeoutError:
            pass

    async def _establish(self, started: float) -> None:
        if self._accepted is not None:
            assert self._ctx is not None
            try:
                # Bounded like a client's attempt: a silent peer must not hold a
                # listener's backlog slot for ever.
                async with asyncio.timeout(self._parameters.attempt_timeout):
                    with _mapped("accept"):
                        channel = await self._stack.accept_channel(self._ctx, self._accepted)
            except TimeoutError as exc:
                raise ConnectionTimeout("the inbound handshake timed out") from exc
            self._channel = channel
            self._accepted = None
            return
        assert self._endpoint is not None

        self._race = Race(
            self._stack,
            self._endpoint,
            self._parameters,
            self.establishment_report,
            self._new_context,
            started=started,
            skip_first=self._skip_first,
            loop=self._loop,
            task=self._inline,
        )
        try:
            self._channel, ctx, _attempt = await self._race.run()
        finally:
            self._race = None
        self._adopt(ctx)

    def _new_context(self) -> AttemptContext:
        # No hooks yet: the race's winner gets them (_adopt), its losers never do.
        return AttemptContext(
            self._endpoint, self._parameters, on_lost=ignore_loss, loop=self._loop
        )

    def _became_ready(self) -> None:
        assert self._channel is not None
        if (
            self._state_callbacks
            or self._state_waiters
            or self._listener is not None
            or self._state is not _PREPARING  # the one Preparing
            or logger.isEnabledFor(logging.DEBUG)
        ):
            self._transition(_READY)
        else:
            self._state = _READY  # from Preparing, with nobody to tell
        if self._channel is None:
            return  # a state callback cancelled the connection
        watcher = self._watcher
        if watcher is not None and watcher.subscribed:
            local, remote = self._channel.local_address, self._channel.remote_address
            # The path is evaluated now only for someone who listens; else on first use.
            self._path = watcher.track(local, remote, lazy=not self._path_callbacks)
            self._follow_transport()
            if self._path is not None:
                self._notify(self._path_callbacks, self._path)
        elif self._observers():
            # Callbacks added while no watcher ran (or in another namespace).
            self._follow()
            if self._path is not None:
                self._notify(self._path_callbacks, self._path)
        if self._viability is not None:
            self._viability.become_viable_now()
        elif not self._viable:
            self._viable = True  # _viable_changed, without its call when nobody listens
            if self._viability_callbacks:
                self._notify(self._viability_callbacks, True)

    async def _ready_channel(self) -> Channel:
        """Start if needed, wait for ``Ready`` (riding out ``Waiting``), return the channel."""
        if isinstance(self._state, Ready) and self._channel is not None:
            return self._channel
        await self.wait_ready(allow_waiting=True)
        if self._channel is None:
            raise InvalidState("the connection is closed", self._state)
        return self._channel

    def _check_not_cancelled(self) -> None:
        # A call woken by this side's cancel(): say so rather than report
        # the closing transport as the peer's doing.
        if isinstance(self._state, Cancelled):
            raise InvalidState("the connection was cancelled", self._state)

    def _check_open(self) -> None:
        if is_terminal(self._state):
            cause = self._state.error if isinstance(self._state, Failed) else None
            raise InvalidState(f"the connection is {self._state}", self._state) from cause

    # Data

    @overload
    async def send(self: Connection[Coder[T]], message: T, /) -> None: ...
    @overload
    async def send(
        self: Connection[WebSocket], data: Buffer | str, *, is_complete: bool | None = None
    ) -> None: ...
    @overload
    async def send(self: Connection[TLV], data: Buffer, *, type: int | None = None) -> None: ...
    @overload
    async def send(
        self: Connection[StreamProtocol | MessageProtocol],
        data: Buffer,
        *,
        is_complete: bool | None = None,
    ) -> None: ...
    async def send(
        self: Connection[Any],
        data: Any,
        *,
        is_complete: bool | None = None,
        type: int | None = None,
    ) -> None:
        """Send ``data``; return once the stack has taken it under its buffer bound.

        On a byte stream, ``is_complete=True`` ends the sending direction after
        ``data`` (FIN, close_notify); default false. On a message stack each
        call sends one message; ``is_complete=False`` sends a fragment where
        the protocol has fragments. On a WebSocket a ``str`` is sent as a text
        message. On a ``TLV`` stack ``type`` is the message's type. On a
        ``Coder`` stack ``data`` is a value of the coder's type, encoded into
        one message. Starts the connection if needed and waits for it to be
        ready.

        If cancelled part-way, a prefix of ``data`` may have been sent. Raises
        :class:`InvalidState` once the connection has failed or is cancelled
        (also when cancelled while this call waits for room).
        """
        channel: Any = self._channel
        if channel is None or not isinstance(self._state, Ready):
            channel = await self._usable_channel()
        kind = self._stack.kind
        try:
            if kind == "stream":
                await channel.send(data, is_complete is True)  # bool | None: no bool() call
            elif kind == "message":
                done = True if is_complete is None else is_complete
                # channel is Any: no cast() call per message.
                if type is None:
                    await channel.send_message(data, done)
                else:
                    await channel.send_message(data, done, type)
            elif kind == "typed":
                await cast(TypedChannel, channel).send_value(data)
            else:
                raise InvalidState(f"{self._stack.describe()} sends on streams, not the connection")
        except (OSError, ConnectionClosed) as exc:
            raise _call_error(self, exc, "send") from _cause(exc)

    async def _usable_channel(self) -> Channel:
        """The channel: at once when ready, else after starting and waiting (``Waiting`` too).

        Raises :class:`InvalidState` on a failed or cancelled connection.
        """
        channel = self._channel
        if channel is not None and isinstance(self._state, Ready):
            return channel  # the common case: no awaits, no context managers
        self._check_open()
        return await self._ready_channel()

    @overload
    async def receive(self: Connection[Coder[T]]) -> T: ...
    @overload
    async def receive(
        self: Connection[StreamProtocol], at_least: int = 1, at_most: int = 65536
    ) -> bytes: ...
    async def receive(self: Connection[Any], at_least: int = 1, at_most: int = 65536) -> Any:
        """Return between ``at_least`` and ``at_most`` bytes.

        Returns fewer than ``at_least`` only when the peer ended its direction:
        ``b""`` means end of stream. Cancelling a waiting receive loses no
        bytes: the next receive gets them. Raises :class:`InvalidState` once
        this connection is cancelled, also when that happens while it waits.

        On a ``Coder`` stack: the next message, decoded into the coder's type.
        Raises :class:`DecodeError` for a message that does not decode; the
        connection stays usable.
        """
        if self._stack.kind == "typed":
            typed = cast(TypedChannel, await self._usable_channel())
            try:
                return await typed.receive_value()
            except (OSError, ConnectionClosed) as exc:
                raise _call_error(self, exc, "receive") from _cause(exc)
        if not 0 <= at_least <= at_most or at_most < 1:
            raise ValueError(
                f"need 0 <= at_least <= at_most and at_most >= 1, got {at_least}, {at_most}"
            )
        channel: Any = self._channel  # Any: no cast() call on every read
        if channel is None or not isinstance(self._state, Ready):
            channel = await self._usable_channel()
        try:
            data = await channel.receive(at_least, at_most)
        except (OSError, ConnectionClosed) as exc:
            raise _call_error(self, exc, "receive") from _cause(exc)
        if not data and at_least:
            self._check_not_cancelled()  # our own cancel() is no end of stream
        return data

    async def receive_exactly(self: Connection[StreamProtocol], size: int) -> bytes:
        """Return exactly ``size`` bytes.

        Raises :class:`EndOfStream` (with the bytes that did arrive in
        ``partial``) if the stream ends first.
        """
        channel: Any = self._channel
        data: bytes
        if size > 0 and channel is not None and isinstance(self._state, Ready):
            # What receive() does when ready, without a coroutine in between.
            try:
                data = await channel.receive(size, size)
            except (OSError, ConnectionClosed) as exc:
                raise _call_error(self, exc, "receive") from _cause(exc)
            if not data:
                self._check_not_cancelled()
        else:
            data = await self.receive(size, size) if size else b""
        if len(data) < size:
            raise EndOfStream(data, size)
        return data

    @property
    def receive_complete(self: Connection[StreamProtocol]) -> bool:
        """Whether the peer ended its direction and every byte was read."""
        channel = cast(ByteChannel | None, self._channel)
        return channel is not None and channel.receive_complete

    async def receive_message(self: Connection[MessageProtocol]) -> Message:
        """The next whole message (or fragment, with ``is_complete`` false)."""
        channel: Any = self._channel
        if channel is None or not isinstance(self._state, Ready):
            channel = await self._usable_channel()
        try:
            return await channel.receive_message()  # type: ignore[no-any-return]
        except (OSError, ConnectionClosed) as exc:
            raise _call_error(self, exc, "receive") from _cause(exc)

    async def messages(self: Connection[MessageProtocol]) -> AsyncIterator[Message]:
        """Every message until the connection closes or is cancelled."""
        while True:
            channel: Any = self._channel
            try:
                if channel is not None and isinstance(self._state, Ready):
                    # What receive_message() does when ready, without its coroutine.
                    try:
                        message = await channel.receive_message()
                    except (OSError, ConnectionClosed) as exc:
                        raise _call_error(self, exc, "receive") from _cause(exc)
                else:
                    message = await self.receive_message()
            except ConnectionClosed:
                return
            except InvalidState:
                if isinstance(self._state, Cancelled):
                    return
                raise
            yield message

    @property
    def websocket_handshake(self: Connection[WebSocket]) -> WebSocketHandshake | None:
        """The WebSocket opening handshake (path, headers, subprotocol), once ready."""
        return cast("WebSocketHandshake | None", self._find_in_channels("opening_handshake"))

    async def close_with(self: Connection[WebSocket], code: int = 1000, reason: str = "") -> None:
        """Close the WebSocket with ``code`` and ``reason``, then cancel the connection.

        Like :meth:`cancel`, but the close frame carries this code (1000,
        1001-1014 or 3000-4999) and reason (at most 123 bytes of UTF-8).
        Raises ``ValueError`` for a code or reason that may not be sent.
        """
        from .stacks.websocket import check_close

        check_close(code, reason)
        set_close = self._find_in_channels("set_close")
        if set_close is not None:
            set_close(code, reason)
        await self.cancel()

    @property
    def maximum_datagram_size(self: Connection[UDP]) -> int:
        """The largest datagram ``send`` accepts on this flow."""
        channel = cast(MessageChannel | None, self._channel)
        return 65507 if channel is None else channel.maximum_message_size

    # QUIC (methods and properties only a Connection[QUIC] has)

    def _quic_channel(self: Connection[QUIC]) -> QUICChannel:
        channel = self._channel
        if not isinstance(channel, QUICChannel):
            raise InvalidState(f"the connection is {self._state}, not ready", self._state)
        return channel

    async def _ready_quic(self: Connection[QUIC]) -> QUICChannel:
        self._check_open()
        channel = await self._ready_channel()
        assert isinstance(channel, QUICChannel)
        if self._pending_keepalive is not False:
            channel.keepalive_interval = self._pending_keepalive
            self._pending_keepalive = False
        if self._pending_application_error is not None:
            channel.application_error = self._pending_application_error
        return channel

    async def open_stream(
        self: Connection[QUIC],
        directionality: Directionality = "bidirectional",
        *,
        wait: bool = True,
    ) -> QUICStream:
        """Open a stream; starts the connection if needed and waits until ready.

        When the peer's stream limit (MAX_STREAMS) is reached, waits for more
        credit, or raises :class:`Busy` with ``wait=False``. Cancelling while
        waiting opens nothing. The peer learns of the stream when its first
        bytes (or FIN) arrive.
        """
        channel = await self._ready_quic()
        with _mapped("open a stream"):
            return await channel.open_stream(directionality, wait)

    def inbound_streams(self: Connection[QUIC]) -> AsyncIterator[QUICStream]:
        """Every stream the peer opens (both directionalities), until the connection ends.

        Claims the connection's inbound streams: calling this (or
        :meth:`handle_inbound_streams`) a second time raises
        :class:`InvalidState`. Streams that arrive before iteration starts wait.
        """
        self._claim_inbound()
        return self._iterate_inbound()

    def handle_inbound_streams(
        self: Connection[QUIC], handler: Callable[[QUICStream], Awaitable[None]]
    ) -> Connection[QUIC]:
        """Run ``handler(stream)`` in its own task for every inbound stream.

        The same claim as :meth:`inbound_streams` (only one, once). The tasks
        end with the connection; a handler's exception resets its stream and
        is logged.
        """
        self._claim_inbound()
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()

        async def run(stream: QUICStream) -> None:
            try:
                await handler(stream)
            except Exception:
                logger.exception("inbound stream handler for %r failed", stream)
                stream.reset(0)

        async def accept() -> None:
            async for stream in self._iterate_inbound():
                task = loop.create_task(run(stream))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

        task = loop.create_task(accept())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

        def stop(c: Connection[QUIC], state: State) -> None:
            if is_terminal(state):
                for t in list(tasks):
                    t.cancel()

        self.on_state_update(stop)
        return self

    def _claim_inbound(self) -> None:
        if self._inbound_claimed:
            raise InvalidState("inbound streams were already claimed on this connection")
        self._inbound_claimed = True

    async def _iterate_inbound(self: Connection[QUIC]) -> AsyncIterator[QUICStream]:
        try:
            channel = await self._ready_quic()
        except InvalidState:
            return
        while True:
            stream = await channel.next_inbound_stream()
            if stream is None:
                return
            yield stream

    @property
    def datagrams(self: Connection[QUIC]) -> QUICDatagrams:
        """The connection's QUIC datagrams (needs ``QUIC(max_datagram_frame_size=...)``)."""
        return self._quic_channel().datagrams

    @property
    def remote_idle_timeout(self: Connection[QUIC]) -> float | None:
        """The peer's idle timeout in seconds, once ready (``None``: none announced)."""
        return self._quic_channel().remote_idle_timeout

    @property
    def remote_max_streams_bidirectional(self: Connection[QUIC]) -> int:
        """Total bidirectional streams the peer lets us open so far."""
        return self._quic_channel().remote_max_streams_bidirectional

    @property
    def remote_max_streams_unidirectional(self: Connection[QUIC]) -> int:
        """Total unidirectional streams the peer lets us open so far."""
        return self._quic_channel().remote_max_streams_unidirectional

    @property
    def usable_datagram_frame_size(self: Connection[QUIC]) -> int:
        """The largest datagram payload we can send (0 when a side did not enable them)."""
        return self._quic_channel().usable_datagram_frame_size

    @property
    def keepalive(self: Connection[QUIC]) -> float | None:
        """Seconds of silence before a PING is sent; ``None`` for none. Settable."""
        channel = self._channel
        if isinstance(channel, QUICChannel):
            return channel.keepalive_interval
        if self._pending_keepalive is not False:
            return self._pending_keepalive
        return self._stack.keepalive_interval

    @keepalive.setter
    def keepalive(self: Connection[QUIC], interval: float | None) -> None:
        if interval is not None and interval <= 0:
            raise ValueError("keepalive must be positive seconds or None")
        channel = self._channel
        if isinstance(channel, QUICChannel):
            channel.keepalive_interval = interval
            channel.transmit()  # re-arms the timer with the new interval
        else:
            self._pending_keepalive = interval

    @property
    def application_error(self: Connection[QUIC]) -> tuple[int, str] | None:
        """(code, reason) to close with on ``cancel()``; settable. Default code 0."""
        channel = self._channel
        if isinstance(channel, QUICChannel):
            return channel.application_error
        return self._pending_application_error

    @application_error.setter
    def application_error(self: Connection[QUIC], value: tuple[int, str] | None) -> None:
        self._pending_application_error = value
        channel = self._channel
        if isinstance(channel, QUICChannel):
            channel.application_error = value

    async def close(self: Connection[QUIC], code: int = 0, reason: str = "") -> None:
        """Close with application error ``code`` and ``reason`` after flushing sent data.

        The peer's connection fails with :class:`ApplicationClosed` carrying
        both; this one becomes ``Cancelled``.
        """
        self.application_error = (code, reason)
        await self.cancel()

    @property
    def early_data_accepted(self: Connection[QUIC]) -> bool | None:
        """Client: whether the server accepted 0-RTT; ``None`` until the handshake ends."""
        return self._quic_channel().early_data_accepted

    @property
    def session_resumed(self: Connection[QUIC]) -> bool:
        """Whether the TLS session was resumed from a ticket."""
        return self._quic_channel().session_resumed

    @property
    def negotiated_version(self: Connection[QUIC]) -> str | None:
        """The QUIC version in use: ``"v1"`` or ``"v2"``."""
        return self._quic_channel().negotiated_version

    async def wait_handshake(self: Connection[QUIC]) -> None:
        """Return once the QUIC handshake has completed (after a 0-RTT early start)."""
        channel = await self._ready_quic()
        await channel.wait_established()

    def request_key_update(self: Connection[QUIC]) -> None:
        """Start a key update (RFC 9001 section 6) at the next opportunity."""
        self._quic_channel().request_key_update()

    def quic_stats(self: Connection[QUIC]) -> dict[str, Any]:
        """RTT, congestion window, bytes in flight and bytes queued."""
        return self._quic_channel().stats()


class _Deadline:
    """One ``wait_ready`` timeout: its deadline, and the future it wakes when it expires."""

    __slots__ = ("deadlines", "entry", "expired", "waiter")

    def __init__(self, deadlines: Deadlines) -> None:
        self.deadlines = deadlines
        self.entry: Deadline | None = None
        self.expired = False
        self.waiter: asyncio.Future[None] | None = None

    def expire(self) -> None:
        self.expired = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


@contextmanager
def _mapped(what: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if isinstance(exc, NetconnError):
            raise
        raise map_os_error(exc, what) from exc


def _call_error(conn: Connection[Any], exc: Exception, what: str) -> NetconnError:
    """What a failed send or receive raises: a netconn error, and never a closed-by-peer
    error for a connection this side cancelled."""
    error = exc if isinstance(exc, NetconnError) else map_os_error(cast(OSError, exc), what)
    if isinstance(error, ConnectionClosed):
        conn._check_not_cancelled()
    return error


def _cause(exc: Exception) -> BaseException | None:
    # A netconn error goes on with its own cause; a mapped one names the OS error.
    return exc.__cause__ if isinstance(exc, NetconnError) else exc
