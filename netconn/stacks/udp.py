"""UDP: connected client flows, and a listener that splits one socket into flows.

As in Network framework, a UDP "connection" is a flow: the datagrams between
one local and one remote address and port. The listener hands out one
:class:`~netconn.Connection` per remote address and port it hears from.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from .._handoff import _task_running, hand
from ..endpoint import Address
from ..errors import (
    Busy,
    ConnectionClosed,
    MessageTooLarge,
    NetconnError,
    map_os_error,
    mapped,
)
from ..parameters import Parameters
from .base import AttemptContext, Message, MessageProtocol, constant
from .sockets import apply_parameters, bind_listening_sockets, check_path

if TYPE_CHECKING:
    from ..listener import Listener

__all__ = ["UDP", "UDPChannel"]

MAX_IPV4_DATAGRAM = 65507  # 65535 - 20 (IPv4 header) - 8 (UDP header)
MAX_IPV6_DATAGRAM = 65527  # 65535 - 8; the IPv6 header is outside the payload length
_RECEIVE_QUEUE = 1024  # datagrams held per flow before new ones are dropped
_READ_BATCH = 64  # datagrams read per wake-up before other callbacks get a turn
_READ_SIZE = 65536  # bytes asked for per datagram (the largest UDP payload fits)
# Datagrams closer together than this are a burst: their receiver is woken
# through the loop, not resumed in place (a request and its answer are
# further apart than this on any machine).
_BURST_GAP = 10e-6


@dataclass(frozen=True, slots=True)
class UDP(MessageProtocol):
    """UDP options. Every ``send`` is one datagram; every receive returns one."""

    resolve_kind = "datagram"

    receive_queue: int = _RECEIVE_QUEUE
    """Datagrams held unread per flow before new ones are dropped; default 1024."""

    async def open_channel(self, ctx: AttemptContext, address: Address) -> UDPChannel:
        params = ctx.parameters
        check_path(address, params)
        loop = asyncio.get_running_loop()
        with mapped(f"connect to {address}"):
            sock = socket.socket(address.family, socket.SOCK_DGRAM)
        try:
            with mapped(f"connect to {address}"):
                sock.setblocking(False)
                apply_parameters(sock, params, address.family)
                sock.connect(address.sockaddr)
                channel = UDPChannel(params, ctx, self.receive_queue)
                if _reads_in_batches(loop):
                    await loop.create_datagram_endpoint(
                        constant(_ClientProtocol(channel)), sock=sock
                    )
                else:
                    _DatagramTransport(loop, sock, _ClientProtocol(channel))
        except BaseException:
            sock.close()
            raise
        return channel

    async def start_listener(self, listener: Listener[Any], host: str | None, port: int) -> None:
        sockets = bind_listening_sockets(host, port, socket.SOCK_DGRAM, listener.parameters)
        loop = asyncio.get_running_loop()
        for sock in sockets:
            demux = _Demultiplexer(listener, self.receive_queue)
            # uvloop's transport reads and answers in C: a reply sent from a
            # handler leaves sooner than through ours.
            if _reads_in_batches(loop):
                await loop.create_datagram_endpoint(constant(demux), sock=sock)
            else:
                _DatagramTransport(loop, sock, demux)
            listener.add_closer(demux.close)
        listener.set_sockets(sockets)


def _reads_in_batches(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether flows and listeners can use the loop's own datagram transport.

    uvloop's reads in batches, in C (up to 32 per wake-up), and answers a
    request sooner than ours; asyncio's reads one datagram per loop turn.
    """
    return type(loop).__module__.startswith("uvloop")


class UDPChannel:
    """One UDP flow: a bounded queue of received datagrams and a send path."""

    def __init__(self, parameters: Parameters, ctx: AttemptContext, queue_size: int) -> None:
        self._ctx = ctx
        self._send_limit = parameters.send_buffer
        self._queue: collections.deque[bytes] = collections.deque()
        self._queue_size = queue_size
        self._loop = asyncio.get_running_loop()
        # A waiting receiver's future; it gets the next datagram's message
        # itself, or the flow's error when it ends.
        self._waiter: asyncio.Future[Message] | None = None
        self._handing = False  # _hand_first is scheduled
        self._drain_waiter: asyncio.Future[None] | None = None
        # What send_message returns when the datagram is sent and there is room.
        self._sent: asyncio.Future[None] = self._loop.create_future()
        self._sent.set_result(None)
        self._write_paused = False
        self._closed = False
        self._error: NetconnError | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._peer: tuple[Any, ...] | None = None
        self._on_close: Any = None
        self._maximum = 0  # maximum_message_size, once the remote address is known
        self._last_fed = 0.0  # when the last datagram came (time.perf_counter)
        self.dropped = 0
        """Datagrams dropped because the receive queue was full."""
        self.local_address: Address | None = None
        self.remote_address: Address | None = None
        self._metadata: dict[str, Any] = {"remote": None}  # each message gets a copy

    @property
    def socket(self) -> Any:
        """The flow's socket (a listener's flows share its socket), once attached."""
        return None if self._transport is None else self._transport.get_extra_info("socket")

    def attach(self, transport: asyncio.DatagramTransport, peer: tuple[Any, ...] | None) -> None:
        """Send through ``transport``; to ``peer`` when the socket is shared."""
        self._transport = transport
        self._peer = peer
        sock = transport.get_extra_info("socket")
        self.local_address = Address.from_sockaddr(sock.getsockname())
        self.remote_address = Address.from_sockaddr(peer if peer else sock.getpeername())
        self._maximum = self.maximum_message_size
        self._metadata = {"remote": self.remote_address}
        if peer is None:
            transport.set_write_buffer_limits(high=self._send_limit)  # type: ignore[attr-defined]

    # fed by the protocol

    def feed(self, data: bytes, addr: object = None) -> None:
        """A datagram for this flow; ``addr`` (unused) lets a transport call this
        as its protocol's ``datagram_received``."""
        now = _clock()
        gap, self._last_fed = now - self._last_fed, now
        queue = self._queue
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            # Someone waits. In place only after a pause: within a burst, one
            # wake-up that drains the queue costs less than resuming the
            # receiver for every datagram.
            if gap > _BURST_GAP and not queue:
                # hand(waiter, message, loop) with its common case inline: one
                # Python call fewer per datagram. The receiver runs before this
                # returns, so its cancellation cannot lose the datagram.
                callbacks = getattr(waiter, "_callbacks", None)
                if callbacks and len(callbacks) == 1 and not _task_running(self._loop):
                    self._waiter = None
                    message = _new_message(Message)
                    _set_content(message, data)
                    _set_complete(message, True)
                    _set_metadata(message, self._metadata.copy())
                    callback, context = callbacks[0]
                    waiter.remove_done_callback(callback)
                    waiter.set_result(message)
                    context.run(callback, waiter)
                    return
            if not self._handing:
                self._handing = True
                self._loop.call_soon(self._hand_first)
        if len(queue) >= self._queue_size:
            self.dropped += 1  # UDP may drop; a bounded queue must
            return
        queue.append(data)

    def _hand_first(self) -> None:
        """After a burst's datagrams were queued: the first to a receiver still waiting."""
        self._handing = False
        waiter = self._waiter
        if waiter is not None and not waiter.done() and self._queue:
            self._waiter = None
            hand(waiter, self._message(self._queue.popleft()), self._loop)

    def fail(self, error: NetconnError | None) -> None:
        if error is not None and self._error is None:
            self._error = error
        self._closed = True
        self._wake()
        self._wake_drain()

    def set_write_paused(self, paused: bool) -> None:
        self._write_paused = paused
        if not paused:
            self._wake_drain()

    def _wake(self) -> None:
        # At the next turn: the flow is mid-way through closing here.
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_exception(self._end())
            # Not worth a warning if the receiver is cancelled before it sees it.
            waiter._log_traceback = False

    def _wake_drain(self) -> None:
        if self._drain_waiter is not None and not self._drain_waiter.done():
            self._drain_waiter.set_result(None)

    # MessageChannel

    @property
    def maximum_message_size(self) -> int:
        remote = self.remote_address
        # An IPv4-mapped peer (::ffff:a.b.c.d on a dual-stack socket) is reached over IPv4.
        if (
            remote is not None
            and remote.family == socket.AF_INET6
            and not remote.host.lower().startswith("::ffff:")
        ):
            return MAX_IPV6_DATAGRAM
        return MAX_IPV4_DATAGRAM

    def send_message(
        self, data: bytes | bytearray | memoryview, is_complete: bool
    ) -> Awaitable[None]:
        # A plain method: the datagram leaves during the call and, unless the
        # transport is above its high-water mark, the caller awaits a future
        # that is already done, not a coroutine made per datagram.
        size = len(data) if type(data) is bytes else memoryview(data).nbytes
        if size > self._maximum and size > self.maximum_message_size:
            raise MessageTooLarge(size, self.maximum_message_size, "datagram")
        transport = self._transport
        if self._closed or transport is None or transport.is_closing():
            raise self._end()
        transport.sendto(data, self._peer)  # None on a connected socket
        if not self._write_paused:
            return self._sent
        return self._wait_for_room()

    async def _wait_for_room(self) -> None:
        while self._write_paused and not self._closed:
            # One future for every waiting sender (datagram sends may overlap),
            # shielded so that one sender giving up does not wake the others.
            if self._drain_waiter is None or self._drain_waiter.done():
                self._drain_waiter = self._loop.create_future()
            await asyncio.shield(self._drain_waiter)

    def _end(self) -> NetconnError:
        """What a send or receive on the ended flow raises."""
        return self._error if self._error is not None else ConnectionClosed("the flow is closed")

    def receive_message(self) -> Awaitable[Message]:
        # A plain method: a receiver that has to wait awaits the future the
        # next datagram's message is handed to, with no coroutine of ours in
        # between; the flow's end sets its error there.
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            raise Busy("another task is already receiving on this flow")
        if self._queue:
            return _at_once(self._message(self._queue.popleft()))
        if self._closed:
            raise self._end()
        waiter = self._waiter = self._loop.create_future()
        return waiter

    def _message(self, data: bytes) -> Message:
        # Message(data, True, metadata), without the frozen dataclass's
        # __init__, which sets each field through object.__setattr__ (0.7 us
        # a message against 0.4 us).
        message = _new_message(Message)
        _set_content(message, data)
        _set_complete(message, True)
        _set_metadata(message, self._metadata.copy())  # a copy: cheaper than a new dict
        return message

    @property
    def buffered_bytes(self) -> tuple[int, int]:
        """Bytes held in the process: (0, received datagrams not yet read)."""
        return 0, sum(map(len, self._queue))

    @property
    def pending(self) -> int:
        """Datagrams received and not yet read."""
        return len(self._queue)

    async def close(self) -> None:
        self.abort()

    def abort(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake()
        self._wake_drain()
        if self._peer is None:
            if self._transport is not None:
                self._transport.close()
        elif self._on_close is not None:
            self._on_close(self)
        self._ctx.on_lost(None)


_clock = time.perf_counter


async def _at_once(message: Message) -> Message:
    return message


_new_message = Message.__new__
_set_content = cast(Any, Message).content.__set__
_set_complete = cast(Any, Message).is_complete.__set__
_set_metadata = cast(Any, Message).metadata.__set__


class _ClientProtocol(asyncio.DatagramProtocol):
    def __init__(self, channel: UDPChannel) -> None:
        self._channel = channel
        self._viable = True  # as last reported: only a change is worth a call
        # While the flow is viable, the transport hands each datagram to the
        # channel itself: no call of ours in between.
        self.datagram_received = channel.feed  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._channel.attach(cast(asyncio.DatagramTransport, transport), None)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        # Only after an error: the first datagram since says the peer is back.
        self._channel.feed(data)
        if not self._viable:
            self._viable = True
            self.datagram_received = self._channel.feed  # type: ignore[method-assign]
            self._channel._ctx.on_viability(True)

    def error_received(self, exc: Exception) -> None:
        # An ICMP error (port unreachable...) does not end a UDP flow, but the
        # peer is not reachable right now.
        self._viable = False
        self.__dict__.pop("datagram_received", None)  # the method above, until a datagram
        self._channel._ctx.on_viability(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._channel.fail(map_os_error(exc) if isinstance(exc, OSError) else None)

    def pause_writing(self) -> None:
        self._channel.set_write_paused(True)

    def resume_writing(self) -> None:
        self._channel.set_write_paused(False)


class _Demultiplexer(asyncio.DatagramProtocol):
    """One listening socket; a flow per remote address and port."""

    def __init__(self, listener: Listener[Any], queue_size: int) -> None:
        self._listener = listener
        self._queue_size = queue_size
        self._flows: dict[tuple[Any, ...], UDPChannel] = {}
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        flow = self._flows.get(addr)
        if flow is None:
            if self._transport is None or not self._listener.has_room():
                return  # like a full accept queue: the datagram is dropped
            ctx = self._listener.attempt_context()
            flow = UDPChannel(self._listener.parameters, ctx, self._queue_size)
            flow.attach(self._transport, addr)
            flow._on_close = self._forget
            self._flows[addr] = flow
            self._listener.accepted(flow, ctx)
        flow.feed(data)

    def _forget(self, flow: UDPChannel) -> None:
        if flow._peer is not None:
            self._flows.pop(flow._peer, None)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for one flow says nothing about the others

    def pause_writing(self) -> None:
        for flow in self._flows.values():
            flow.set_write_paused(True)

    def resume_writing(self) -> None:
        for flow in self._flows.values():
            flow.set_write_paused(False)

    def connection_lost(self, exc: Exception | None) -> None:
        for flow in list(self._flows.values()):
            flow.fail(ConnectionClosed("the listener closed"))
        self._flows.clear()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class _DatagramTransport(asyncio.DatagramTransport):
    """A datagram transport that reads up to ``_READ_BATCH`` datagrams per wake-up.

    asyncio's own (and uvloop's) reads one datagram per event-loop turn,
    which caps a flow at a fraction of what the socket delivers. Writes go
    straight to the socket; what the kernel refuses (``EAGAIN``) waits in a
    queue, and the protocol is paused above the high-water mark, as asyncio does.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol: asyncio.DatagramProtocol,
    ) -> None:
        super().__init__({"socket": sock, "sockname": sock.getsockname()})
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._protocol = protocol
        self._backlog: collections.deque[tuple[bytes, tuple[Any, ...] | None]] = collections.deque()
        self._backlog_size = 0
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._paused = False
        self._closing = False
        self._quiet = 0  # wake-ups in a row that found at most one datagram
        protocol.connection_made(self)
        loop.add_reader(self._fd, self._read)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return super().get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._closing

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        return self._backlog_size

    def _read(self) -> None:
        recvfrom = self._sock.recvfrom
        protocol = self._protocol
        # While wake-ups find one datagram each (request and response), read
        # just that one: reading on to EAGAIN costs a syscall and an exception
        # before the handler runs. Every 16th wake-up reads on, and one that
        # finds two or more goes back to batches.
        quiet = self._quiet
        limit = _READ_BATCH if quiet < 2 or not quiet & 15 else 1
        count = 0
        while count < limit:
            if self._closing:
                return
            try:
                data, addr = recvfrom(_READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # an ICMP error reported on a connected socket
                protocol.error_received(exc)
                return
            count += 1
            protocol.datagram_received(data, addr)
        self._quiet = quiet + 1 if count < 2 else 0

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        if not self._backlog:
            try:
                if addr is None:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
                return
            except (BlockingIOError, InterruptedError):
                self._loop.add_writer(self._fd, self._write)
            except OSError as exc:
                self._protocol.error_received(exc)
                return
        self._backlog.append((bytes(data), addr))
        self._backlog_size += len(data)
        if not self._paused and self._backlog_size > self._high:
            self._paused = True
            self._protocol.pause_writing()

    def _write(self) -> None:
        while self._backlog:
            data, addr = self._backlog[0]
            try:
                if addr is None:
                    self._sock.send(data)
                else:
                    self._sock.sendto(data, addr)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
            self._backlog.popleft()
            self._backlog_size -= len(data)
            if self._paused and self._backlog_size <= self._low:
                self._paused = False
                self._protocol.resume_writing()
        self._loop.remove_writer(self._fd)

    def close(self) -> None:
        self._shut(None)

    def abort(self) -> None:
        self._shut(None)

    def _shut(self, exc: Exception | None) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._backlog.clear()
        self._backlog_size = 0
        self._loop.call_soon(self._finish, exc)

    def _finish(self, exc: Exception | None) -> None:
        try:
            self._protocol.connection_lost(exc)
        finally:
            self._sock.close()
