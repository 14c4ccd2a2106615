"""TCP: options, the client and server channel, and the accept loop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import socket
import struct
import threading
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .._buffer import ReceiveBuffer
from ..endpoint import Address
from ..errors import (
    Busy,
    ConnectionClosed,
    ConnectionTimeout,
    InvalidState,
    NetconnError,
    map_os_error,
    mapped,
)
from ..parameters import Parameters, ServiceClass
from .base import AttemptContext, StreamProtocol, constant
from .sockets import apply_parameters, bind_listening_sockets, check_path

if TYPE_CHECKING:
    from ..listener import Listener
    from ..path import Interface

__all__ = ["TCP", "TCPChannel"]

_TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)
_TCP_FASTOPEN_CONNECT = getattr(socket, "TCP_FASTOPEN_CONNECT", 30)
_CHUNK = 256 * 1024
# What one read takes at most. Measured on a bulk receiver: the kernel's copy
# into a 256 KiB buffer cost several times as much per byte as into 128 KiB
# (likely the cache), and on uvloop about 40% more CPU per byte in all.
_READ = 128 * 1024
# A read this large on uvloop's own buffer means bulk: later reads go into
# ours (see TCPChannel.data_received).
_BULK_READ = 64 * 1024
_CLOSE_TIMEOUT = 10.0  # seconds a graceful close may take before it aborts
_LINGER_ZERO = struct.pack("ii", 1, 0)  # struct linger {l_onoff=1, l_linger=0}


@dataclass(frozen=True, slots=True)
class TCP(StreamProtocol):
    """TCP options. ``TCP()`` alone is a plain byte stream."""

    no_delay: bool = False
    """Disable Nagle's algorithm (``TCP_NODELAY``); default off."""
    keepalive: bool = False
    """Send keepalive probes on an idle connection; default off."""
    keepalive_idle: float | None = None
    """Seconds idle before the first probe (``TCP_KEEPIDLE``); default: the kernel's."""
    keepalive_interval: float | None = None
    """Seconds between probes (``TCP_KEEPINTVL``); default: the kernel's."""
    keepalive_count: int | None = None
    """Unanswered probes before the connection drops (``TCP_KEEPCNT``); default: the kernel's."""
    connection_drop_time: float | None = None
    """Seconds that sent data may stay unacknowledged before the connection fails
    (``TCP_USER_TIMEOUT``); default: the kernel's."""
    fast_open: bool = False
    """TCP Fast Open: data in the SYN when a cookie is cached; default off."""
    maximum_segment_size: int | None = None
    """Cap on segment size (``TCP_MAXSEG``); default: the path's."""

    def configure(self, sock: socket.socket) -> None:
        """Apply these options to a TCP socket."""
        self._configure(sock, no_delay_set=False)

    def _configure(self, sock: socket.socket, *, no_delay_set: bool) -> None:
        if self.no_delay and not no_delay_set:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.keepalive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for option, value in (
                (socket.TCP_KEEPIDLE, self.keepalive_idle),
                (socket.TCP_KEEPINTVL, self.keepalive_interval),
            ):
                if value is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, option, max(1, round(value)))
            if self.keepalive_count is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, self.keepalive_count)
        if self.connection_drop_time is not None:
            milliseconds = max(1, round(self.connection_drop_time * 1000))
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_USER_TIMEOUT, milliseconds)
        if self.maximum_segment_size is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, self.maximum_segment_size)

    def open_channel(
        self, ctx: AttemptContext, address: Address
    ) -> Coroutine[Any, Any, TCPChannel]:
        params = ctx.parameters
        # The coroutine that connects, itself: no coroutine of ours around it.
        if (
            (params is _unconstrained or _asks_nothing_of_sockets(params))
            and not self.fast_open
            and self.maximum_segment_size is None
            and "%" not in address.host  # a scope id would send the loop to getaddrinfo
        ):
            return self._open_plain(ctx, address)  # what check_path and _connects_plainly say
        interface = check_path(address, params, will_bind=True)
        if interface is None and self._connects_plainly(params, address):
            return self._open_plain(ctx, address)
        return self._open_configured(ctx, address, interface)

    async def _open_configured(
        self, ctx: AttemptContext, address: Address, interface: Interface | None
    ) -> TCPChannel:
        params = ctx.parameters
        loop = ctx.loop
        if loop is None:
            loop = asyncio.get_running_loop()
        # One try for the whole attempt: a context manager per step costs more
        # than the steps themselves on a loopback connection.
        sock: socket.socket | None = None
        try:
            sock = socket.socket(address.family, socket.SOCK_STREAM)
            sock.setblocking(False)
            apply_parameters(sock, params, address.family, interface.name if interface else None)
            self.configure(sock)
            if self.fast_open:
                sock.setsockopt(socket.IPPROTO_TCP, _TCP_FASTOPEN_CONNECT, 1)
            await loop.sock_connect(sock, address.sockaddr)
            channel = TCPChannel(params, ctx, loop)
            await loop.create_connection(constant(channel), sock=sock)
        except BaseException as exc:
            if sock is not None:
                sock.close()
            if isinstance(exc, OSError) and not isinstance(exc, NetconnError):
                raise map_os_error(exc, f"connect to {address}") from exc
            raise
        return channel

    @property
    def _options_after_connect(self) -> bool:
        """Whether an option other than ``no_delay`` is set on a connected socket."""
        return (
            self.keepalive
            or self.connection_drop_time is not None
            or self.maximum_segment_size is not None
        )

    def _connects_plainly(self, params: Parameters, address: Address) -> bool:
        """Whether nothing has to be set on the socket before it connects."""
        return (
            not params.required_interface
            and params.local_endpoint is None
            and params.service_class is ServiceClass.BEST_EFFORT  # DSCP 0: no enum property
            and not self.fast_open
            and self.maximum_segment_size is None
            and "%" not in address.host  # a scope id would send the loop to getaddrinfo
        )

    async def _open_plain(self, ctx: AttemptContext, address: Address) -> TCPChannel:
        # The loop makes and connects the socket itself: uvloop does it all in C.
        loop = ctx.loop
        if loop is None:
            loop = asyncio.get_running_loop()
        channel = TCPChannel(ctx.parameters, ctx, loop, address)
        try:
            # constant(channel), without its call.
            factory = itertools.repeat(channel).__next__
            await loop.create_connection(factory, address.host, address.port)
            # asyncio's and uvloop's TCP transports set TCP_NODELAY themselves:
            # _options_after_connect, without its call, and a dict look-up.
            if (
                self.keepalive
                or self.connection_drop_time is not None
                or self.maximum_segment_size is not None
                or (self.no_delay and not (_no_delay_loops.get(type(loop)) or _sets_no_delay(loop)))
            ):
                sock = channel.socket
                if sock is not None:
                    self._configure(sock, no_delay_set=_sets_no_delay(loop))
        except BaseException as exc:
            channel.abort()
            if isinstance(exc, OSError) and not isinstance(exc, NetconnError):
                raise map_os_error(exc, f"connect to {address}") from exc
            raise
        return channel

    async def start_listener(self, listener: Listener[Any], host: str | None, port: int) -> None:
        params = listener.parameters
        sockets = bind_listening_sockets(host, port, socket.SOCK_STREAM, params)
        loop = asyncio.get_running_loop()
        for sock in sockets:
            if self.fast_open:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 256)
            sock.listen(listener.backlog)
            acceptor = _Acceptor(self, listener, sock, loop)
            listener.add_closer(acceptor.close)
            acceptor.start()
        listener.set_sockets(sockets)


class _Acceptor:
    """Accepts on one listening socket from a reader callback, as asyncio's own servers do.

    The socket stays registered with the loop while the backlog has room: an
    accept costs no registration, no future and no task wake-up. On asyncio's
    selector loops the transport is built on the spot (what their servers
    do); elsewhere (uvloop) a small task awaits ``connect_accepted_socket``.
    Either way the channel reaches the listener from ``connection_made``.
    """

    __slots__ = (
        "_burst",
        "_closed",
        "_configures",
        "_family",
        "_listener",
        "_loop",
        "_no_delay_set",
        "_pending",
        "_reading",
        "_selector",
        "_sock",
        "_socket_class",
        "_stack",
        "_wakeups",
    )

    def __init__(
        self,
        stack: TCP,
        listener: Listener[Any],
        sock: socket.socket,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._stack = stack
        self._listener = listener
        self._sock = sock
        self._loop = loop
        self._reading = False
        self._closed = False
        self._pending = 0  # accepted, transport not yet made: they count against the backlog
        # Known per listening socket, not asked per connection. uvloop's transport
        # for an accepted socket sets TCP_NODELAY itself; asyncio's does only for
        # sockets made with IPPROTO_TCP.
        self._selector = isinstance(loop, _SelectorLoop)
        self._no_delay_set = not self._selector and _sets_no_delay(loop)
        self._configures = stack._options_after_connect or (
            stack.no_delay and not self._no_delay_set
        )
        self._family = int(sock.family)  # the socket's property makes two enums per ask
        self._socket_class = _accepted_socket_class(self._family)
        # Whether the last wake-up found more than one connection waiting, and
        # a count of wake-ups: see _readable.
        self._burst = False
        self._wakeups = 0

    def start(self) -> None:
        if not self._reading and not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._readable)
            self._reading = True

    def _stop(self) -> None:
        if self._reading:
            self._reading = False
            if not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())

    def close(self) -> None:
        """Stop for good (before the socket closes: its number may be reused)."""
        self._closed = True
        self._stop()

    def _readable(self) -> None:
        listener = self._listener
        if listener.closing:
            self._stop()
            return
        # One accept per wake-up while wake-ups find one connection each (a
        # client at a time): a second would only fail with EAGAIN, a system call
        # and an exception. Every 16th wake-up, and after one that found
        # several, accepts on to drain a burst.
        self._wakeups = wakeups = (self._wakeups + 1) & 15
        limit = listener.backlog if self._burst or not wakeups else 1
        taken = 0
        try:
            for _ in range(limit):
                if not listener.has_room(self._pending):
                    self._pause(0.0)
                    return
                try:
                    fd, peer = self._sock._accept()  # type: ignore[attr-defined]
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as exc:
                    if listener.closing:
                        return
                    listener.report_accept_error(exc)  # e.g. out of descriptors: try again later
                    self._pause(0.1)
                    return
                taken += 1
                # What socket.accept() does, without asking for the family and type again.
                conn_sock = self._socket_class(self._family, socket.SOCK_STREAM, 0, fd)
                self._take(conn_sock, peer)
        finally:
            self._burst = taken > 1

    def _pause(self, delay: float) -> None:
        self._stop()
        if not self._listener.closing:
            self._listener.add_task(self._resume(delay))

    async def _resume(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        await self._listener.wait_for_room()
        self.start()

    def _take(self, conn_sock: socket.socket, peer: Any) -> None:
        listener = self._listener
        loop: Any = self._loop
        channel: TCPChannel | None = None
        try:
            if self._configures:
                self._stack._configure(conn_sock, no_delay_set=self._no_delay_set)
            ctx = listener.attempt_context()
            channel = TCPChannel(listener.parameters, ctx, loop)
            channel._on_made = self._made
            self._pending += 1  # until connection_made, at a later loop turn
            if self._selector:
                conn_sock.setblocking(False)
                # The peer's address is known: the transport asks for no name.
                loop._make_socket_transport(conn_sock, channel, extra={"peername": peer})
            else:
                coro = loop.connect_accepted_socket(constant(channel), conn_sock)
                self._drive(coro, conn_sock, channel)
        except OSError as exc:
            if channel is not None and channel._on_made is not None:  # never made
                channel._on_made = None
                self._pending -= 1
            conn_sock.close()
            listener.report_accept_error(exc)

    def _drive(
        self,
        coro: Coroutine[Any, Any, Any],
        conn_sock: socket.socket,
        channel: TCPChannel,
        *_: object,
    ) -> None:
        """Run ``connect_accepted_socket`` without a task of its own.

        It only waits for ``connection_made``, which hands the channel over:
        resuming it from the future's callback spares a task per connection.
        """
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        except OSError as exc:
            if channel._on_made is not None:  # never made
                channel._on_made = None
                self._pending -= 1
            conn_sock.close()
            self._listener.report_accept_error(exc)
            return
        except BaseException:
            conn_sock.close()
            raise
        resume = functools.partial(self._drive, coro, conn_sock, channel)
        if waiting is None:  # a bare yield: go on at the next turn
            self._loop.call_soon(resume)
        else:
            waiting._asyncio_future_blocking = False  # what a task does with what it awaits
            waiting.add_done_callback(resume)

    def _made(self, channel: TCPChannel) -> None:
        self._pending -= 1
        if self._listener.closing:
            channel.abort()
            return
        self._listener.accepted(channel, channel._ctx)


_SelectorLoop = asyncio.selector_events.BaseSelectorEventLoop

_accepted_socket_classes: dict[int, type[socket.socket]] = {}


def _accepted_socket_class(family: int) -> type[socket.socket]:
    """A socket class whose ``family`` and ``type`` are plain class attributes.

    ``socket.socket``'s properties convert the numbers to enums on every ask
    (two Python calls each), and the loops ask three times per accepted
    connection (uvloop's ``connect_accepted_socket``, asyncio's ``TCP_NODELAY``
    check). The values are the same enums.
    """
    cls = _accepted_socket_classes.get(family)
    if cls is None:
        attributes = {
            "__slots__": (),
            "__module__": "socket",  # its repr is a socket.socket's
            "family": socket.AddressFamily(family),
            "type": socket.SocketKind.SOCK_STREAM,
        }
        cls = _accepted_socket_classes[family] = type("socket", (socket.socket,), attributes)
    return cls


_no_delay_loops: dict[type, bool] = {}  # _sets_no_delay's answers, by the loop's class

# The last parameters found to ask nothing of a socket before it connects: a
# client's connections share theirs, so one identity check answers.
_unconstrained: Parameters | None = None


def _asks_nothing_of_sockets(params: Parameters) -> bool:
    """Whether ``params`` leave a socket as the loop makes it: no interface
    constraint, local endpoint or service class."""
    global _unconstrained
    if (
        params.required_interface is None
        and params.required_interface_type is None
        and not params.prohibited_interface_types
        and params.local_endpoint is None
        and params.service_class is ServiceClass.BEST_EFFORT
    ):
        _unconstrained = params
        return True
    return False


def _sets_no_delay(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``create_connection(host, port)`` on ``loop`` sets TCP_NODELAY by itself."""
    kind = type(loop)
    sets = _no_delay_loops.get(kind)
    if sets is None:
        uv = kind.__module__.startswith("uvloop")
        sets = _no_delay_loops[kind] = isinstance(loop, _SelectorLoop) or uv
    return sets


_VIABILITY_POLL = 0.25  # seconds between TCP_INFO reads
# struct tcp_info (linux/tcp.h): state, ca_state, retransmits, probes, backoff,
# options, wscale, flags (u8 each); rto, ato, snd_mss, rcv_mss, unacked, sacked,
# lost, retrans, fackets, last_data_sent, last_ack_sent, last_data_recv,
# last_ack_recv (u32 each).
_TCP_INFO = struct.Struct("=8B13I")
_STALLED_RETRANSMITS = 2  # RTO expiries in a row on the same data: acks stopped
_STALLED_PROBES = 2  # keepalive (or zero-window) probes in a row without an answer


class _ViabilityPoller:
    """One timer per event loop that reads TCP_INFO for every open channel.

    A timer per connection would cost each idle connection a timer handle
    and a bound method; one shared tick does the same reads.
    """

    _pollers: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ViabilityPoller]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the registry holds pollers, and a closed loop must be freed.
        self._loop = weakref.ref(loop)
        self._channels: dict[TCPChannel, None] = {}  # insertion-ordered set
        # Whether a tick is due; not its handle, which would hold the loop.
        self._armed = False

    _last: ClassVar[_ViabilityPoller | None] = None  # the one asked for last: no dict look-up

    @classmethod
    def add(cls, channel: TCPChannel, loop: asyncio.AbstractEventLoop) -> _ViabilityPoller:
        """Poll ``channel`` until :meth:`remove`; returns the loop's poller."""
        poller = cls._last
        if poller is None or poller._loop() is not loop:
            poller = cls._pollers.get(loop)
            if poller is None:
                poller = cls._pollers[loop] = cls(loop)
            cls._last = poller
        poller._channels[channel] = None
        if not poller._armed:
            poller._armed = True
            loop.call_later(_VIABILITY_POLL, poller._tick)
        return poller

    def remove(self, channel: TCPChannel) -> None:
        """Stop polling ``channel``.

        The timer is left to run out rather than cancelled with the last
        channel: connections made one after another then arm no timer each.
        It stops at its next tick if no channel is left.
        """
        self._channels.pop(channel, None)

    def _tick(self) -> None:
        self._armed = False
        loop = self._loop()
        if loop is None:
            return
        for channel in list(self._channels):
            try:
                channel._check_viability()
            except Exception as exc:  # one channel's surprise must not stop the others
                loop.call_exception_handler(
                    {"message": "TCP viability check failed", "exception": exc}
                )
        if self._channels and not loop.is_closed():
            self._armed = True
            loop.call_later(_VIABILITY_POLL, self._tick)


class _Scratch(threading.local):
    """Each thread's buffer that the transport reads into, shared by its channels.

    Reading into it (``recv_into``) spares the allocation that a plain
    ``recv`` makes for every read; :meth:`TCPChannel.buffer_updated` copies
    what arrived into the channel's own bounded buffer at once.
    """

    def __init__(self) -> None:
        self.view = memoryview(bytearray(_READ))


_scratch = _Scratch()


class TCPChannel(asyncio.Protocol, asyncio.BufferedProtocol):
    """A running TCP connection: a bounded receive buffer and a bounded send path.

    Both kinds of protocol: asyncio's loop reads into :meth:`get_buffer`
    (its own reads would allocate 256 KiB each); uvloop, which takes an
    ``asyncio.Protocol`` for a plain one, reads into its own buffer and makes
    each read's ``bytes`` in C, which for small reads costs less than a
    Python ``get_buffer`` call and a view per read (about 1 us per round
    trip of a small echo). Its first bulk read switches it to our buffer.
    """

    __slots__ = (
        "_close_waiters",
        "_closing",
        "_ctx",
        "_drain_waiter",
        "_error",
        "_is_lost",
        "_local",
        "_loop",
        "_on_made",
        "_poller",
        "_receiving",
        "_remote",
        "_send_limit",
        "_sending",
        "_transport",
        "_viable",
        "_view",
        "_write_closed",
        "_write_paused",
    )

    def __init__(
        self,
        parameters: Parameters,
        ctx: AttemptContext,
        loop: asyncio.AbstractEventLoop | None = None,
        remote: Address | None = None,
    ) -> None:
        """``remote``: the address a client connects to (kept as the peer's name if it is one)."""
        self._ctx = ctx
        # The loop, when the maker has it: looking it up costs a getpid() on Python 3.11.
        self._loop = loop
        self._send_limit = parameters.send_buffer
        self._receiving = ReceiveBuffer(parameters.receive_buffer, self, loop)
        # This thread's read buffer, looked up once: two thread-local look-ups a read otherwise.
        self._view = _scratch.view
        self._transport: asyncio.Transport | None = None
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._is_lost = False
        # One future per close() waiting for connection_lost, made only then.
        self._close_waiters: list[asyncio.Future[bool]] | None = None
        self._error: NetconnError | None = None
        self._write_closed = False
        self._closing = False
        self._sending = False
        self._viable = True
        self._poller: _ViabilityPoller | None = None
        # A listener's hand-over, called once the transport is made (server side only).
        self._on_made: Callable[[TCPChannel], None] | None = None
        # The addresses as Address objects, or as the transport's sockaddr
        # tuples until someone asks: most connections never do.
        self._local: Address | tuple[Any, ...] | None = None
        self._remote: Address | tuple[Any, ...] | None = remote

    @property
    def local_address(self) -> Address | None:
        name = self._local
        if isinstance(name, tuple):
            name = self._local = Address.from_sockaddr(name)
        return name

    @property
    def remote_address(self) -> Address | None:
        name = self._remote
        if isinstance(name, tuple):
            name = self._remote = Address.from_sockaddr(name)
        return name

    # asyncio.Protocol callbacks

    def connection_made(self, transport: Any) -> None:
        # Any: uvloop's transports implement asyncio.Transport without
        # subclassing it, and a cast() would be a call per connection.
        self._transport = transport
        # The transport's own buffer is the send bound: writes pause above it.
        limit = self._send_limit
        transport.set_write_buffer_limits(limit, limit >> 2)  # high, low: no keywords to match
        # The names the transport already asked for: no socket object, no system call.
        local = transport.get_extra_info("sockname")
        known = self._remote
        if type(known) is Address and ":" not in known.host:
            # An IPv4 literal (which has one spelling) is the name of the peer connected to.
            remote: Any = known
        else:
            remote = transport.get_extra_info("peername")
        if local is None or remote is None:
            sock = transport.get_extra_info("socket")
            local, remote = sock.getsockname(), sock.getpeername()
        self._local = local
        self._remote = remote
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        on_made, self._on_made = self._on_made, None
        if on_made is not None:
            on_made(self)

    def follow_viability(self) -> None:
        """Read TCP_INFO now and every poll from now on: someone asks whether
        this connection is viable. Until then nothing is polled."""
        if self._poller is None and self._transport is not None and not self._is_lost:
            loop = self._loop
            if loop is None:
                self._loop = loop = asyncio.get_running_loop()
            self._poller = _ViabilityPoller.add(self, loop)
            self._check_viability()

    def _check_viability(self) -> None:
        """Read TCP_INFO: retransmissions or probes in a row mean acks stopped coming.

        Viable again once an ack resets the kernel's counters.
        """
        sock = self.socket
        if sock is None or self._is_lost:
            self._stop_polling()
            return
        try:
            raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO.size)
        except OSError:
            self._stop_polling()
            return
        if len(raw) >= _TCP_INFO.size:
            fields = _TCP_INFO.unpack_from(raw)
            retransmits, probes, last_ack_recv = fields[2], fields[3], fields[20]
            stalled = retransmits >= _STALLED_RETRANSMITS or (
                probes >= _STALLED_PROBES and last_ack_recv > 1000
            )
            if stalled and self._viable:
                self._viable = False
                self._ctx.on_viability(False)
            elif not self._viable and retransmits == 0 and probes == 0:
                self._viable = True
                self._ctx.on_viability(True)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self._receiving.feed(self._view[:nbytes])

    def data_received(self, data: bytes) -> None:
        if len(data) >= _BULK_READ and self._transport is not None:
            # A bulk receiver: uvloop's 256 KiB reads cost it more CPU per byte
            # than 128 KiB ones into our buffer (the kernel's copy).
            self._transport.set_protocol(_BufferedReads(self))
        self._receiving.feed(data)

    def eof_received(self) -> bool:
        self._receiving.feed_eof()
        return True  # keep our sending direction open: half-close

    def _stop_polling(self) -> None:
        if self._poller is not None:
            self._poller.remove(self)
            self._poller = None

    def connection_lost(self, exc: Exception | None) -> None:
        poller = self._poller
        if poller is not None:  # _stop_polling() and the poller's remove(), without their calls
            poller._channels.pop(self, None)
            self._poller = None
        error: NetconnError | None = None
        if exc is not None:
            error = self._error = _map(exc)
        # EOF or the error for readers, and no cycle left for the garbage collector.
        self._receiving.end(error)
        if self._drain_waiter is not None:
            self._wake_drain()
        self._is_lost = True
        waiters = self._close_waiters
        if waiters is not None:
            self._close_waiters = None
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(False)
        self._ctx.lost(error)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_reading(self) -> None:
        """Stop reading from the socket (the receive buffer is full)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        """Read from the socket again."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # ByteChannel

    def limit_sending(self, limit: int) -> None:
        """Hold at most ``limit`` bytes for sending (less than ``Parameters.send_buffer``)."""
        self._send_limit = min(self._send_limit, limit)
        if self._transport is not None:
            self._transport.set_write_buffer_limits(
                high=self._send_limit, low=self._send_limit // 4
            )

    @property
    def receive_complete(self) -> bool:
        return self._receiving.at_eof

    @property
    def receive_buffer(self) -> ReceiveBuffer:
        """Where received bytes wait to be read; a layer above may listen on it."""
        return self._receiving

    @property
    def socket(self) -> socket.socket | None:
        """The underlying socket, for options netconn does not wrap."""
        return None if self._transport is None else self._transport.get_extra_info("socket")

    @property
    def buffered_bytes(self) -> tuple[int, int]:
        """Bytes held in the process: (waiting to be sent, received and not read)."""
        sending = 0 if self._transport is None else self._transport.get_write_buffer_size()
        return sending, len(self._receiving)

    async def send(self, data: bytes | bytearray | memoryview, is_complete: bool) -> None:
        if self._sending:
            raise Busy("another task is already sending on this connection")
        if self._write_closed:
            raise InvalidState("sending after is_complete=True")
        if type(data) is bytes and 0 < len(data) <= _CHUNK and not is_complete:
            # One piece, nothing to split: the common small write (with
            # _writable()'s checks, without its call).
            transport = self._transport
            if self._error is None and transport is not None and not transport.is_closing():
                transport.write(data)
            else:
                self._writable()  # raises
            if self._write_paused:
                self._sending = True
                try:
                    await self._drain()
                finally:
                    self._sending = False
            return
        self._sending = True
        try:
            view = memoryview(data).cast("B")
            # Whole pieces only: a layer above that sends less than _CHUNK at a
            # time (TLS records) never has its bytes split by a cancellation.
            for offset in range(0, len(view), _CHUNK):
                transport = self._writable()
                transport.write(view[offset : offset + _CHUNK])
                if self._write_paused:
                    await self._drain()
            if is_complete:
                self._write_closed = True
                transport = self._writable()
                with mapped("send"):
                    transport.write_eof()
        finally:
            self._sending = False

    def _writable(self) -> asyncio.Transport:
        if self._error is not None:
            raise self._error
        if self._transport is None or self._transport.is_closing():
            raise ConnectionClosed("the connection is closed")
        return self._transport

    async def _drain(self) -> None:
        while (
            self._write_paused and self._error is None and not self._is_lost and not self._closing
        ):
            self._drain_waiter = self._running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
        self._writable()

    def receive(self, at_least: int, at_most: int) -> Coroutine[Any, Any, bytes]:
        # The buffer's coroutine itself: no coroutine of ours around it.
        return self._receiving.receive(at_least, at_most)

    def close_now(self) -> bool:
        """Close without waiting, if nothing is left to send; return whether it did.

        The transport sends FIN and closes the socket at the loop's next turn:
        with no bytes to flush there is nothing to bound or to wait for.
        """
        transport = self._transport
        if transport is None or transport.is_closing() or transport.get_write_buffer_size():
            return False
        self._closing = True
        self._wake_drain()
        transport.close()
        return True

    async def close(self) -> None:
        transport = self._transport
        if transport is None:
            return
        self._closing = True
        if self._drain_waiter is not None:
            self._wake_drain()  # a send waiting for room fails now; what it wrote is flushed
        # With nothing left to send the transport ends at the next loop turn:
        # no flush to bound, so no timer.
        flushed = False
        if not transport.is_closing():
            flushed = not transport.get_write_buffer_size()
            transport.close()  # flushes the write buffer, then FIN
        if self._is_lost:
            return
        # A future of our own and a plain timer: cancelling this call leaves
        # other closers waiting, and costs no shield or timeout context.
        loop = self._loop
        if loop is None:
            loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        waiters = self._close_waiters
        if waiters is None:
            self._close_waiters = [waiter]
        else:
            waiters.append(waiter)
        timer = None if flushed else loop.call_later(_CLOSE_TIMEOUT, _expire, waiter)
        try:
            # connection_lost drops the list of waiters it woke: only a waiter
            # that timed out or was cancelled is left to take out of it.
            timed_out = await waiter
        except BaseException:
            self._drop_close_waiter(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if timed_out:
            self._drop_close_waiter(waiter)
            transport.abort()

    def _drop_close_waiter(self, waiter: asyncio.Future[bool]) -> None:
        waiters = self._close_waiters
        if waiters is not None and waiter in waiters:
            waiters.remove(waiter)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        return asyncio.get_running_loop() if loop is None else loop

    def abort(self) -> None:
        transport = self._transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A zero linger time makes close() send RST instead of FIN. uvloop's
            # socket of a transport the peer already reset has no descriptor.
            with contextlib.suppress(OSError, ValueError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
        transport.abort()


class _BufferedReads(asyncio.BufferedProtocol):
    """A bulk receiver's protocol on uvloop: reads into the channel's buffer, all else its own."""

    __slots__ = ("_channel",)

    def __init__(self, channel: TCPChannel) -> None:
        self._channel = channel

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._channel.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._channel.buffer_updated(nbytes)

    def eof_received(self) -> bool:
        return self._channel.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._channel.connection_lost(exc)

    def pause_writing(self) -> None:
        self._channel.pause_writing()

    def resume_writing(self) -> None:
        self._channel.resume_writing()


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(True)


def _map(exc: BaseException) -> NetconnError:
    if isinstance(exc, NetconnError):
        return exc
    if isinstance(exc, TimeoutError):
        return ConnectionTimeout("the peer stopped acknowledging data (user timeout)")
    if isinstance(exc, OSError):
        return map_os_error(exc)
    return ConnectionClosed(str(exc) or type(exc).__name__)
