"""Watching the host's network: :class:`PathMonitor` and the per-connection path watcher.

How this works: one netlink socket per event loop and network namespace
joins the rtnetlink multicast groups for links, IPv4/IPv6 addresses and
routes, and is read on the event loop (``add_reader``). Every datagram only
says "something changed"; subscribers debounce those pokes (the kernel sends
bursts: a link going down removes its routes and addresses one message at a
time) and then re-evaluate from a fresh :class:`~netconn.path.HostNetwork`
snapshot, reporting only what actually changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Protocol, Self

from . import _netlink
from ._netns import entered, socket_netns, thread_netns
from .endpoint import Address
from .errors import mapped
from .parameters import Parameters
from .path import (
    HostNetwork,
    InterfaceType,
    Path,
    PathStatus,
    better_interface,
    connection_path,
    monitor_path,
    policy_version,
)

__all__ = [
    "Debouncer",
    "NetworkWatch",
    "PathMonitor",
    "PathObserver",
    "PathWatcher",
    "ViabilityTracker",
    "watch_network",
]

logger = logging.getLogger("netconn")

_PATH_DEBOUNCE = 0.05  # seconds: rtnetlink bursts settle within a few milliseconds
# Seconds the netlink subscription outlives its last subscriber: connections
# made one after another then share one snapshot of the network instead of
# each dumping links, addresses and routes again (about 1 ms).
_LINGER = 2.0


class Debouncer:
    """Run ``action`` once events stop for ``delay`` seconds (or ``max_wait`` after the first).

    Lives on the running event loop; :meth:`cancel` drops a pending run.
    """

    __slots__ = ("_action", "_delay", "_first", "_handle", "_max_wait")

    def __init__(self, delay: float, action: Callable[[], None], max_wait: float | None = None):
        self._delay = delay
        self._max_wait = max_wait if max_wait is not None else delay * 5
        self._action = action
        self._handle: asyncio.TimerHandle | None = None
        self._first: float | None = None

    def poke(self) -> None:
        """Note an event; the action runs after the quiet period."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._first is None:
            self._first = now
        if self._handle is not None:
            self._handle.cancel()
        when = min(now + self._delay, self._first + self._max_wait)
        self._handle = loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._first = None
        self._action()

    def cancel(self) -> None:
        """Drop a pending run."""
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._first = None


class _EventSource:
    """The shared netlink subscription of one event loop in one network namespace.

    It also holds a query socket opened in that namespace, so snapshots and
    route look-ups describe it even when the thread has since moved to
    another namespace (see :meth:`netconn.lab.Lab.inside`).
    """

    _sources: dict[tuple[int, str], _EventSource] = {}  # noqa: RUF012 - registry

    def __init__(self, key: tuple[int, str], loop: asyncio.AbstractEventLoop) -> None:
        self._key = key
        self._loop = loop
        self._sock = _netlink.event_socket()
        try:
            self._query = _netlink.open_query_socket()
        except BaseException:
            self._sock.close()
            raise
        # Insertion-ordered, and a thousand connections unsubscribe in O(1) each.
        self._subscribers: dict[NetworkWatch, None] = {}
        self._snapshot: HostNetwork | None = None
        self._routes: dict[str, _netlink.Route | None] = {}  # look-ups since the last event
        self._linger: asyncio.TimerHandle | None = None
        self._idle_since = 0.0
        loop.add_reader(self._sock.fileno(), self._readable)

    @classmethod
    def subscribe(
        cls,
        callback: Callable[[], None],
        netns: str | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        netns_fd: int | None = None,
    ) -> NetworkWatch:
        """Subscribe in the calling thread's namespace, or in ``netns`` if it has a source.

        A known ``netns`` (a listener's, for its accepted connections) spares
        reading the thread's namespace link when that source is running;
        with ``netns_fd``, an open fd of it, a source is made there if none runs.
        ``loop``: the running loop, when the caller has it at hand.
        """
        if loop is None:
            loop = asyncio.get_running_loop()
        source = None if netns is None else cls._sources.get((id(loop), netns))
        if source is None or source._loop is not loop:
            own = thread_netns()
            key = (id(loop), own if netns_fd is None or netns is None else netns)
            source = cls._sources.get(key)
            if source is None or source._loop is not loop:
                # Looked for only here: a new loop's first subscription always gets here.
                for stale in [s for s in cls._sources.values() if s._loop.is_closed()]:
                    stale._close()  # subscribers that never unsubscribed before their loop closed
                if key[1] == own or netns_fd is None:
                    source = cls(key, loop)
                else:
                    with entered(netns_fd):  # its sockets must be made in that namespace
                        source = cls(key, loop)
                cls._sources[key] = source
        # A pending linger timer stays: it finds a subscriber and does nothing,
        # so connections made one after another arm no timer each.
        watch = NetworkWatch(source, callback)
        source._subscribers[watch] = None
        return watch

    def unsubscribe(self, watch: NetworkWatch) -> None:
        self._subscribers.pop(watch, None)
        if self._subscribers:
            return
        if self._loop.is_closed():
            self._close()
            return
        self._idle_since = self._loop.time()
        if self._linger is None:
            self._linger = self._loop.call_later(_LINGER, self._linger_expired)

    def _linger_expired(self) -> None:
        self._linger = None
        if self._subscribers:
            return
        left = self._idle_since + _LINGER - self._loop.time()
        if left > 0:  # in use again since the timer was set
            self._linger = self._loop.call_later(left, self._linger_expired)
        else:
            self._close()

    def _readable(self) -> None:
        changed = False
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # we fell behind: something surely changed
                    changed = True
                    continue
                logger.warning("netlink event socket failed: %s", exc)
                break
            if _netlink.event_kinds(data):
                changed = True
        if changed:
            self._snapshot = None
            self._routes.clear()
            for watch in list(self._subscribers):
                try:
                    watch._callback()
                except Exception as exc:  # one broken subscriber must not stop the others
                    self._loop.call_exception_handler(
                        {"message": "network change callback raised", "exception": exc}
                    )

    def snapshot(self) -> HostNetwork:
        """The network as the last events left it: shared by every subscriber until the next."""
        if self._snapshot is None or self._snapshot.policy != policy_version():
            self._snapshot = HostNetwork.capture(self._query)
        return self._snapshot

    def route_get(self, host: str) -> _netlink.Route | None:
        """The kernel's route to ``host`` in this source's namespace (cached between events)."""
        if host not in self._routes:
            if len(self._routes) >= 4096:
                self._routes.clear()
            self._routes[host] = _netlink.route_get(host, self._query)
        return self._routes[host]

    def _close(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        if self._sources.get(self._key) is self:
            del self._sources[self._key]
        if not self._loop.is_closed():
            self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._query.close()
        self._subscribers.clear()


class NetworkWatch:
    """A subscription to network events (from :func:`watch_network`).

    Its snapshots and look-ups describe the namespace it was made in.
    """

    __slots__ = ("_callback", "_source")

    def __init__(self, source: _EventSource, callback: Callable[[], None]) -> None:
        self._source: _EventSource | None = source
        self._callback = callback

    def snapshot(self) -> HostNetwork:
        """The network now (cached between events). Raises ``OSError`` after :meth:`close`."""
        if self._source is None:
            raise OSError("the network watch is closed")
        return self._source.snapshot()

    def route_get(self, host: str) -> _netlink.Route | None:
        """The kernel's route to ``host`` now, or ``None`` if there is none."""
        if self._source is None:
            raise OSError("the network watch is closed")
        return self._source.route_get(host)

    def close(self) -> None:
        """Stop the calls; the netlink sockets close a little after the last watch. Idempotent."""
        source, self._source = self._source, None
        if source is not None:
            source.unsubscribe(self)


def watch_network(callback: Callable[[], None]) -> NetworkWatch:
    """Call ``callback()`` on the running loop after link, address or route events.

    The events are those of the calling thread's network namespace; calls are
    not debounced. Close the returned watch to stop them. Raises ``OSError``
    when netlink is unavailable.
    """
    return _EventSource.subscribe(callback)


class PathMonitor:
    """The host's path, reported now and whenever it changes (``NWPathMonitor``).

    ::

        async with PathMonitor(required_interface_type=InterfaceType.WIFI) as monitor:
            async for path in monitor:
                print(path.describe())

    or ``PathMonitor().on_update(lambda monitor, path: ...).start()``. Paths
    are evaluated after ``debounce`` seconds without netlink events and only
    reported when they differ from the last one. Iterators see the current
    path first; a slow iterator skips to the newest path rather than queueing
    old ones.
    """

    def __init__(
        self,
        *,
        required_interface_type: InterfaceType | None = None,
        prohibited_interface_types: frozenset[InterfaceType] = frozenset(),
        required_interface: str | None = None,
        debounce: float = 0.1,
    ) -> None:
        self._criteria = Parameters(
            required_interface=required_interface,
            required_interface_type=required_interface_type,
            prohibited_interface_types=prohibited_interface_types,
        )
        self._debounce_delay = debounce
        self._debouncer: Debouncer | None = None
        self._watch: NetworkWatch | None = None
        self._path: Path | None = None
        self._callbacks: list[Callable[[PathMonitor, Path], None]] = []
        self._mailboxes: list[asyncio.Queue[Path | None]] = []
        self._cancelled = False

    @property
    def current_path(self) -> Path | None:
        """The last path evaluated; ``None`` before :meth:`start`."""
        return self._path

    def on_update(self, callback: Callable[[PathMonitor, Path], None]) -> Self:
        """Call ``callback(monitor, path)`` with the first path and every change."""
        self._callbacks.append(callback)
        return self

    def start(self) -> Self:
        """Subscribe to the kernel's events and evaluate the path now.

        Needs a running event loop; watches the calling thread's network
        namespace. Starting twice does nothing. Raises ``NetconnError`` if
        netlink is unavailable.
        """
        if self._watch is not None or self._cancelled:
            return self
        self._debouncer = Debouncer(self._debounce_delay, self._evaluate)
        with mapped("watch the network"):
            self._watch = watch_network(self._debouncer.poke)
        self._evaluate()
        return self

    def cancel(self) -> None:
        """Stop watching; iterators end. Never blocks."""
        self._cancelled = True
        if self._debouncer is not None:
            self._debouncer.cancel()
        if self._watch is not None:
            self._watch.close()
            self._watch = None
        for box in self._mailboxes:
            _put_latest(box, None)

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()

    def _evaluate(self) -> None:
        try:
            net = self._watch.snapshot() if self._watch else HostNetwork.capture()
            path = monitor_path(net, self._criteria)
        except OSError as exc:
            path = Path(PathStatus.UNSATISFIED, unsatisfied_reason=f"netlink failed: {exc}")
        if path == self._path:
            return
        self._path = path
        logger.debug("path monitor: %s", path.describe())
        for box in self._mailboxes:
            _put_latest(box, path)
        for callback in list(self._callbacks):
            try:
                callback(self, path)
            except Exception as exc:
                asyncio.get_running_loop().call_exception_handler(
                    {"message": f"{callback!r} raised", "exception": exc}
                )

    def __aiter__(self) -> AsyncIterator[Path]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Path]:
        self.start()
        box: asyncio.Queue[Path | None] = asyncio.Queue(maxsize=1)
        if self._path is not None:
            box.put_nowait(self._path)
        self._mailboxes.append(box)
        try:
            while not self._cancelled or not box.empty():
                path = await box.get()
                if path is None:
                    return
                yield path
        finally:
            self._mailboxes.remove(box)


def _put_latest(box: asyncio.Queue[Path | None], item: Path | None) -> None:
    """Replace whatever ``box`` holds with ``item`` (it holds one at most)."""
    with contextlib.suppress(asyncio.QueueEmpty):
        box.get_nowait()
    box.put_nowait(item)


class ViabilityTracker:
    """Combine the link's and the transport's viability and report changes debounced.

    A change is reported only after the combined value held for ``debounce``
    seconds; a flap shorter than that is never reported.
    """

    __slots__ = ("_debounce", "_handle", "_link", "_notify", "_transport", "reported")

    def __init__(self, debounce: float, notify: Callable[[bool], None]) -> None:
        self._debounce = debounce
        self._notify = notify
        self._link = True
        self._transport = True
        self.reported = False
        """The value last reported."""
        self._handle: asyncio.TimerHandle | None = None

    def become_viable_now(self) -> None:
        """At ready: the connection is viable, without waiting."""
        self._link = self._transport = True
        self._cancel_pending()
        if not self.reported:
            self.reported = True
            self._notify(True)

    def set_link(self, viable: bool) -> None:
        """The path's interface went up or down (or lost its route)."""
        self._link = viable
        self._update()

    def set_link_now(self, viable: bool) -> None:
        """The link as first seen by a late observer: taken as reported, no debounce."""
        self._link = viable
        self._cancel_pending()
        self.reported = viable and self._transport

    def set_transport(self, viable: bool) -> None:
        """The transport saw acknowledgements stop or resume."""
        self._transport = viable
        self._update()

    def stop(self, *, final: bool | None = None) -> None:
        """Stop reporting; with ``final`` set, report it at once if it differs."""
        self._cancel_pending()
        if final is not None and final != self.reported:
            self.reported = final
            self._notify(final)

    def _update(self) -> None:
        value = self._link and self._transport
        if value == self.reported:
            self._cancel_pending()
            return
        if self._handle is None:
            self._handle = asyncio.get_running_loop().call_later(self._debounce, self._commit)

    def _commit(self) -> None:
        self._handle = None
        value = self._link and self._transport
        if value != self.reported:
            self.reported = value
            self._notify(value)

    def _cancel_pending(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class PathObserver(Protocol):
    """What a :class:`PathWatcher` reports to (a connection)."""

    def _network_changed(self) -> None: ...
    def _path_changed(self, path: Path) -> None: ...
    def _link_changed(self, viable: bool) -> None: ...
    def _better_path_changed(self, better: bool) -> None: ...


class _Detached:
    """The observer of a watcher whose connection reached a final state."""

    __slots__ = ()

    def _network_changed(self) -> None:
        return None

    def _path_changed(self, path: Path) -> None:
        return None

    def _link_changed(self, viable: bool) -> None:
        return None

    def _better_path_changed(self, better: bool) -> None:
        return None


_DETACHED = _Detached()


class PathWatcher:
    """One connection's view of the network: its path, link viability and better path.

    Before the connection is ready, every (debounced) change reports the
    host's path for the parameters (as a monitor would) and calls the
    observer's ``_network_changed``, so a waiting connection can retry at
    once. Once :meth:`track` gives it the endpoints, it re-evaluates the path
    at every change and calls ``_path_changed`` when the path differs,
    ``_link_changed`` with whether the path is satisfied, and
    ``_better_path_changed`` when a preferable interface appears or goes.
    """

    __slots__ = (
        "_debouncer",
        "_local",
        "_netns",
        "_observer",
        "_parameters",
        "_remote",
        "_watch",
        "better_path",
        "following",
        "path",
    )

    def __init__(
        self, parameters: Parameters, observer: PathObserver, netns: str | None = None
    ) -> None:
        self._parameters = parameters
        # The namespace the connection's socket is known to live in (a listener's), if any.
        self._netns = netns
        # One reference to whom to tell, not a bound method per event kind.
        self._observer = observer
        self._debouncer: Debouncer | None = None  # made at the first event
        self._watch: NetworkWatch | None = None
        # The tracked endpoints; both None while nothing is tracked. Two slots,
        # not a tuple: one object less per connection.
        self._local: Address | None = None
        self._remote: Address | None = None
        self.path: Path | None = None
        """The last path evaluated (``None`` while a tracked path waits for its first use)."""
        self.better_path = False
        """Whether a preferable path was last seen."""
        self.following = False
        """Whether :meth:`track` was given the connection's endpoints."""

    @property
    def subscribed(self) -> bool:
        """Whether the network's events reach this watcher."""
        return self._watch is not None

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Subscribe to the network's events; does nothing if netlink is unavailable.

        ``loop``: the running loop, when the caller has it at hand.
        """
        if self._watch is not None:
            return
        try:
            # The watcher itself is the callback (__call__): no bound method kept per connection.
            self._watch = _EventSource.subscribe(self, self._netns, loop)
        except OSError as exc:
            logger.debug("no netlink events (%s): paths are evaluated once", exc)

    def __call__(self) -> None:
        """A network event: re-evaluate after the quiet period."""
        self._poke()

    def _poke(self) -> None:
        if self._debouncer is None:
            self._debouncer = Debouncer(_PATH_DEBOUNCE, self._changed)
        self._debouncer.poke()

    def track(
        self, local: Address | None, remote: Address | None, *, lazy: bool = False
    ) -> Path | None:
        """Follow the path between ``local`` and ``remote``; returns it as it is now.

        With ``lazy`` nothing is evaluated yet and ``None`` is returned:
        :meth:`evaluate` does it on first use, or the next network event does.
        """
        self.following = True
        if local is not None and remote is not None:
            self._local, self._remote = local, remote
        else:
            self._local = self._remote = None
        self.path = None
        self.better_path = False
        if lazy and self._local is not None:
            return None
        return self._first(local, remote)

    def follow(
        self,
        local: Address | None,
        remote: Address | None,
        sock: socket.socket | None,
        loop: asyncio.AbstractEventLoop | None,
    ) -> Path:
        """Subscribe and follow the path between ``local`` and ``remote`` from now on.

        For a connection that nobody followed until now: the path and
        :attr:`better_path` are evaluated at once, as events would have left
        them, in the namespace of ``sock`` (the connection's socket) if given,
        wherever the calling thread is now.
        """
        found = socket_netns(sock) if sock is not None and self._watch is None else None
        if found is None:
            self.start(loop)
        else:
            self._netns, fd = found
            try:
                self._watch = _EventSource.subscribe(self, self._netns, loop, fd)
            except OSError as exc:
                logger.debug("no netlink events (%s): paths are evaluated once", exc)
            finally:
                os.close(fd)
        path = self._first(local, remote)
        self._local, self._remote = (local, remote) if self._watch is not None else (None, None)
        self.following = True
        if self._watch is not None:
            try:
                net = self._watch.snapshot()
                better = better_interface(
                    net, path, self._parameters, route_get=self._watch.route_get
                )
            except OSError:
                better = None
            self.better_path = better is not None
        return path

    def evaluate(self) -> Path | None:
        """The tracked path, evaluated now if it has not been yet."""
        if self.path is None and self._local is not None:
            return self._first(self._local, self._remote)
        return self.path

    def _first(self, local: Address | None, remote: Address | None) -> Path:
        self.path = self._evaluate(local, remote)
        if local is not None and self.path.interface is None:
            # A fresh connection's local address is always on one of its
            # namespace's interfaces: this socket lives in another namespace
            # than the thread that started the connection, so our netlink
            # view says nothing about it.
            self.stop()
            self.path = Path(local=local, remote=remote)
        return self.path

    def stop(self, *, final: bool = False) -> None:
        """Unsubscribe; no callback runs afterwards.

        ``final``: the observer is done with (a connection in a final state):
        drop the reference to it, which would otherwise make a cycle.
        """
        if final:
            self._observer = _DETACHED
        if self._debouncer is not None:
            self._debouncer.cancel()
        self._local = self._remote = None
        watch = self._watch
        if watch is not None:
            self._watch = None
            # watch.close(), without its call
            source, watch._source = watch._source, None
            if source is not None:
                source.unsubscribe(watch)

    def _evaluate(self, local: Address | None, remote: Address | None) -> Path:
        try:
            net = self._watch.snapshot() if self._watch else HostNetwork.capture()
            return connection_path(net, local, remote, self._parameters)
        except OSError:
            return Path(local=local, remote=remote)

    def refresh(self) -> None:
        """Before the connection is ready: report the path it would take (e.g. why none)."""
        if self._local is not None or self._watch is None:
            return
        try:
            path = monitor_path(self._watch.snapshot(), self._parameters)
        except OSError:
            return
        if path != self.path:
            self.path = path
            self._observer._path_changed(path)

    def _changed(self) -> None:
        local, remote = self._local, self._remote
        if local is None:
            self.refresh()
            self._observer._network_changed()
            return
        if self._watch is None:
            return
        if self.path is None:
            # Never evaluated: what it was at ready is lost, so the path now
            # is the first one reported.
            self._first(local, remote)
            if self._watch is None:  # another namespace: nothing to follow
                return
        try:
            net = self._watch.snapshot()
        except OSError:
            return
        path = connection_path(net, local, remote, self._parameters)
        if path != self.path:
            self.path = path
            self._observer._path_changed(path)
        self._observer._link_changed(path.status is PathStatus.SATISFIED)
        better = (
            better_interface(net, path, self._parameters, route_get=self._watch.route_get)
            is not None
        )
        if better != self.better_path:
            self.better_path = better
            self._observer._better_path_changed(better)
