"""One QUIC connection: the engine's state machine, its streams, datagrams and timer.

How this works: a :class:`QUICChannel` owns one sans-I/O engine (aioquic's,
:mod:`netconn.quic._aioquic`, or qh3's, :mod:`netconn.quic._qh3`) and is fed
by whoever reads the UDP socket, one *batch* of datagrams at a time. After
each batch (or timer, or application call) it drains the engine's events
into stream buffers, wakes the tasks that wait for room or data, builds
every packet the engine allows in one call, hands them to the socket in one
go, and re-arms its single timer.

Back-pressure: a stream's ``send`` waits while the bytes it has queued and not
yet had acknowledged exceed ``Parameters.send_buffer``, or the connection's
total exceeds ``QUIC.connection_send_buffer``; received bytes wait in the
stream until the application reads them, and only reading grants the peer new
credit (see :mod:`netconn.quic._engine`; qh3: :mod:`netconn.quic._qh3`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioquic.quic import events
from aioquic.quic.packet import QuicErrorCode

from ..endpoint import Address
from ..errors import (
    ApplicationClosed,
    Busy,
    CertificateError,
    ConnectionClosed,
    ConnectionTimeout,
    InvalidState,
    NetconnError,
    ProtocolError,
    StreamReset,
    TLSError,
)
from ..stacks.base import AttemptContext
from ..stacks.tls import PeerCertificate
from ..state import Cancelled
from ._aioquic import AioquicEngine
from ._engine import LARGEST_DATAGRAM
from ._stream import DeliveryReceipt, Directionality, QUICDatagrams, QUICStream
from ._udp import NetworkAddress

if TYPE_CHECKING:
    from ..stacks.quic import QUIC

# The stream types are re-exported: modules built on the channel import them here.
__all__ = ["DeliveryReceipt", "Directionality", "QUICChannel", "QUICDatagrams", "QUICStream"]

logger = logging.getLogger("netconn.quic")


_SHORT_HEADER_OVERHEAD = 1 + 20 + 2 + 16  # flags, longest CID, packet number, AEAD tag
_DATAGRAM_FRAME_OVERHEAD = 1 + 4  # frame type, length varint
_MIN_SILENCE = 1.0  # seconds without an answer before a path counts as not viable


class QUICChannel:
    """A running QUIC connection (client or server side).

    The socket owner calls :meth:`datagrams_received` with each batch and
    provides ``send`` to put packets on the wire.
    """

    def __init__(
        self,
        options: QUIC,
        quic: AioquicEngine,
        ctx: AttemptContext,
        *,
        send: Callable[[list[tuple[bytes, NetworkAddress]]], None],
        local_address: Address | None,
        remote_address: NetworkAddress,
        on_closed: Callable[[QUICChannel], None] = lambda channel: None,
        server_name: str | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self.options = options
        self.quic = quic
        self.ctx = ctx
        self.is_client = quic.configuration.is_client
        self._send_packets = send
        self._on_closed = on_closed
        self.local_address = local_address
        self._remote_sockaddr = remote_address
        self.remote_address: Address | None = Address.from_sockaddr(remote_address)
        self._server_name = server_name
        self._streams: dict[int, QUICStream] = {}
        self._inbound: list[QUICStream] = []  # lists: an idle connection's are empty
        self._inbound_waiter: asyncio.Future[None] | None = None
        self.datagrams = QUICDatagrams(self)
        """Send and receive QUIC datagrams."""
        self._established: asyncio.Future[None] = self._loop.create_future()
        self.error: NetconnError | None = None
        """Why the connection ended, once it did."""
        self._finished = False
        self._closing_locally = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._transmit_handle: asyncio.Handle | None = None
        self._input_handle: asyncio.Handle | None = None
        self._active: set[QUICStream] = set()
        self._retiring: set[QUICStream] = set()
        self._queued_total = 0
        self._room_waiters: dict[QUICStream, asyncio.Future[None]] = {}
        self._credit_waiters: list[asyncio.Future[None]] = []
        self._drained: asyncio.Future[None] | None = None
        self.negotiated_alpn: str | None = None
        """The ALPN protocol agreed in the handshake."""
        self.early_data_accepted: bool | None = None
        """Client: whether the server accepted 0-RTT data (``None`` until known)."""
        self.session_resumed = False
        """Whether the handshake resumed an earlier session."""
        self.early_data_sent = False
        """Client: whether anything was sent before the handshake completed."""
        self.early_data_resent = 0
        """Bytes of 0-RTT stream data sent again in 1-RTT after a Retry or rejection."""
        self._early_streams: set[int] = set()
        self._retries_seen = 0
        self._handshake_complete = False
        self.keepalive_interval = options.keepalive_interval
        self._last_received = self._loop.time()
        self._in_flight_since: float | None = None
        self._viable = True
        self._ping_id = 0
        self._ping_outstanding = False
        self.application_error: tuple[int, str] | None = None
        """Code and reason sent in the CONNECTION_CLOSE of a graceful close."""
        self.socket_stats: Callable[[], dict[str, int | bool]] = dict
        """The UDP socket's counters (shared by every connection of a listener socket)."""
        self.on_connection_id: Callable[[events.QuicEvent], None] = lambda event: None
        """Called with ConnectionIdIssued/Retired events (the server routes on them)."""

    def __repr__(self) -> str:
        return f"<QUICChannel {'client' if self.is_client else 'server'} {self.remote_address}>"

    # Established

    async def wait_established(self) -> None:
        """Return once the handshake completed; raise its error otherwise."""
        await asyncio.shield(self._established)

    @property
    def can_send_early(self) -> bool:
        """Whether 0-RTT keys are ready (a resumed client may send before the handshake)."""
        return self.is_client and self.quic.can_send_early()

    # Properties of the connection

    @property
    def remote_idle_timeout(self) -> float | None:
        """The peer's max_idle_timeout in seconds (``None``: not known or none)."""
        return self.quic.remote_idle_timeout()

    @property
    def remote_max_streams_bidirectional(self) -> int:
        """Bidirectional streams the peer lets us open in total, so far."""
        return self.quic.remote_max_streams(False)

    @property
    def remote_max_streams_unidirectional(self) -> int:
        """Unidirectional streams the peer lets us open in total, so far."""
        return self.quic.remote_max_streams(True)

    @property
    def usable_datagram_frame_size(self) -> int:
        """The largest datagram payload that fits a packet and the peer's limit (0: none)."""
        remote = self.quic._remote_max_datagram_frame_size
        if remote is None or self.options.max_datagram_frame_size is None:
            return 0
        in_packet = min(self.options.max_udp_payload_size, LARGEST_DATAGRAM)
        in_packet -= _SHORT_HEADER_OVERHEAD
        return max(0, min(remote, in_packet) - _DATAGRAM_FRAME_OVERHEAD)

    @property
    def negotiated_version(self) -> str | None:
        """``"v1"`` or ``"v2"``."""
        version = self.quic._version
        return {0x00000001: "v1", 0x6B3343CF: "v2"}.get(version or 0)

    @property
    def is_viable(self) -> bool:
        """Whether the peer was heard from recently enough."""
        return self._viable

    @property
    def open_streams(self) -> int:
        """Streams the application still holds (not yet over in both directions)."""
        return len(self._streams)

    def stats(self) -> dict[str, Any]:
        """RTT, congestion window, bytes in flight and socket counters."""
        rtt, congestion_window, in_flight = self.quic.recovery_stats()
        return {
            "smoothed_rtt": rtt,
            "congestion_window": congestion_window,
            "bytes_in_flight": in_flight,
            "queued_bytes": self._queued_total,
            "open_streams": len(self._streams),
            "retries_received": self.quic._retry_count,
            "key_phase": self.quic.key_phase(),
            "early_data_sent": self.early_data_sent,
            "early_data_resent": self.early_data_resent,
            "datagrams_dropped": self.datagrams.dropped,
            "socket": self.socket_stats(),
        }

    def tls_info(self) -> dict[str, Any]:
        """Version, cipher, ALPN and resumption, for reports."""
        return {
            "version": "TLSv1.3",
            "cipher": self.quic.cipher_name(),
            "alpn": self.negotiated_alpn,
            "session_reused": self.session_resumed,
            "early_data_accepted": self.early_data_accepted,
            "quic_version": self.negotiated_version,
        }

    def request_key_update(self) -> None:
        """Start a TLS key update (deferred by the engine until the handshake is confirmed)."""
        self._check_open()
        self.quic.request_key_update()
        self._schedule_transmit()

    # Streams

    async def open_stream(self, directionality: Directionality, wait: bool) -> QUICStream:
        """A new local stream; waits for the peer's MAX_STREAMS credit unless not ``wait``."""
        if directionality not in ("bidirectional", "unidirectional"):
            raise ValueError(
                "directionality must be 'bidirectional' or 'unidirectional', "
                f"not {directionality!r}"
            )
        uni = directionality == "unidirectional"
        while True:
            self._check_open()
            stream_id = self.quic.get_next_available_stream_id(is_unidirectional=uni)
            limit = (
                self.remote_max_streams_unidirectional
                if uni
                else self.remote_max_streams_bidirectional
            )
            if stream_id // 4 < limit:
                break
            if not wait:
                raise Busy(f"the peer allows no more {directionality} streams for now ({limit})")
            waiter = self._loop.create_future()
            self._credit_waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self._credit_waiters.remove(waiter)
        self.quic.send_stream_data(stream_id, b"", False)  # creates it in the engine
        stream = QUICStream(self, stream_id)
        self._streams[stream_id] = stream
        return stream

    async def next_inbound_stream(self) -> QUICStream | None:
        """The next stream the peer opened; ``None`` once the connection ended."""
        while not self._inbound:
            if self._finished:
                return None
            self._inbound_waiter = self._loop.create_future()
            try:
                await self._inbound_waiter
            finally:
                self._inbound_waiter = None
        return self._inbound.pop(0)

    def _stream_for_event(self, stream_id: int) -> QUICStream | None:
        stream = self._streams.get(stream_id)
        if stream is None:
            local = (stream_id & 1) == (0 if self.is_client else 1)
            if local:
                return None  # a local stream we already forgot
            stream = QUICStream(self, stream_id)
            self._streams[stream_id] = stream
            self._inbound.append(stream)
            waiter = self._inbound_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        return stream

    def _queued(self, stream: QUICStream) -> int:
        return self.quic.queued(stream.id)

    async def _wait_send_room(self, stream: QUICStream) -> None:
        limit = self.ctx.parameters.send_buffer
        total_limit = self.options.connection_send_buffer
        while True:
            self._check_open()
            if stream._send_error is not None:
                raise stream._send_error
            if self._queued(stream) < limit and self._queued_total < total_limit:
                return
            waiter = self._loop.create_future()
            stream._send_waiter = waiter
            self._room_waiters[stream] = waiter
            try:
                await waiter
            finally:
                stream._send_waiter = None
                self._room_waiters.pop(stream, None)

    def _write(self, stream: QUICStream, data: bytes, end: bool) -> None:
        try:
            self.quic.send_stream_data(stream.id, data, end)
        except (ValueError, AssertionError) as exc:
            raise InvalidState(f"stream {stream.id}: {exc}") from exc
        if not self._handshake_complete:
            self._early_streams.add(stream.id)
            self.early_data_sent = True
        self._active.add(stream)
        self._queued_total += len(data)
        self._schedule_transmit()

    def _check_receipts_supported(self) -> None:
        if not self.quic.supports_receipts:
            raise InvalidState(
                f"delivery receipts need QUIC(engine='aioquic'), not engine={self.quic.name!r}"
            )

    def _receipt(self, stream: QUICStream) -> DeliveryReceipt:
        end = self.quic.written_offset(stream.id)
        future: asyncio.Future[None] = self._loop.create_future()
        stream._receipts.append((end, future))
        self._active.add(stream)
        self._check_receipts(stream)
        return DeliveryReceipt(future, end)

    def _check_receipts(self, stream: QUICStream) -> None:
        acked = self.quic.acked_offset(stream.id)
        while stream._receipts and stream._receipts[0][0] <= acked:
            _, future = stream._receipts.pop(0)
            if not future.done():
                future.set_result(None)

    def _retire(self, stream: QUICStream) -> None:
        self._retiring.add(stream)
        if not self.quic.has_stream(stream.id):
            self._forget_finished()  # the engine is already done with it

    def _forget_finished(self) -> None:
        # A stream leaves our table once the application is done with it and
        # the engine has discarded it (everything acknowledged both ways).
        has_stream = self.quic.has_stream
        gone = [s for s in self._retiring if not has_stream(s.id) and not s._receipts]
        for stream in gone:
            self._retiring.discard(stream)
            self._active.discard(stream)
            if self._streams.get(stream.id) is stream:
                del self._streams[stream.id]
            self.quic.forget_stream(stream.id)
        if gone and self.quic.released_events:
            self._schedule_input()  # forgetting unread bytes let held events go

    def _consumed(self, stream: QUICStream, size: int) -> None:
        quic = self.quic
        if quic.consumed(stream.id, size, self._loop.time()):
            if quic.released_events:
                self._schedule_input()  # events the engine held back until the reader caught up
            else:
                self._schedule_transmit()

    def _reset(self, stream: QUICStream, code: int) -> None:
        if self._finished:
            return
        with contextlib.suppress(ValueError, AssertionError):
            self.quic.reset_stream(stream.id, code)
        stream._fail_send(StreamReset(code, by_peer=False, what="reset"))
        self._schedule_transmit()

    def _stop(self, stream: QUICStream, code: int) -> None:
        if self._finished:
            return
        with contextlib.suppress(ValueError, AssertionError):
            self.quic.stop_stream(stream.id, code)
        self._schedule_transmit()

    def _reprioritise(self, stream: QUICStream) -> None:
        try:
            self.quic.set_priority(stream.id, stream._priority)
        except InvalidState:
            stream._priority = 0
            raise
        self._schedule_transmit()

    # Input: datagrams and timers

    def datagrams_received(self, batch: list[tuple[bytes, NetworkAddress]]) -> None:
        """Feed a batch of datagrams from the socket, then act on them once."""
        if self._finished:
            return
        now = self._loop.time()
        try:
            self.quic.receive_datagrams(batch, now)
            self._last_received = now
            self._ping_outstanding = False
            if not self._viable:
                self._set_viable(True)
            self._after_input(defer=self._handshake_complete)
        except Exception as exc:
            self._engine_failed(exc)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._finished:
            return
        now = self._loop.time()
        quic = self.quic
        try:
            timeout = quic.idle_expired(now)
            if timeout is not None:
                self._finish(ConnectionTimeout(f"QUIC idle timeout ({timeout:.1f} s)"))
                quic.handle_timer(now)
                return
            quic.handle_timer(now)
            self._housekeeping(now)
            self._after_input()
        except Exception as exc:
            self._engine_failed(exc)

    def _engine_failed(self, exc: Exception) -> None:
        """An unexpected exception inside the engine: fail the connection, never hang."""
        logger.error("%r: the QUIC engine failed", self, exc_info=exc)
        error = ProtocolError(f"the QUIC engine failed: {exc!r}")
        error.__cause__ = exc
        with contextlib.suppress(Exception):
            self.quic.close(error_code=QuicErrorCode.INTERNAL_ERROR, reason_phrase="internal error")
        self._finish(error)

    def _housekeeping(self, now: float) -> None:
        quic = self.quic
        silence = now - self._last_received
        if (
            self._viable
            and self._in_flight_since is not None
            and now - max(self._last_received, self._in_flight_since) > self._viability_deadline()
        ):
            self._set_viable(False)
        interval = self.keepalive_interval
        if (
            interval
            and silence >= interval
            and not self._ping_outstanding
            and self._handshake_complete
        ):
            self._ping_id += 1
            self._ping_outstanding = True
            quic.send_ping(self._ping_id)

    def _viability_deadline(self) -> float:
        # No answer over three probe timeouts (at least a second) means packets
        # are not flowing, well before the idle timeout gives up.
        return max(3 * self.quic.probe_timeout(), _MIN_SILENCE)

    def _set_viable(self, viable: bool) -> None:
        self._viable = viable
        self.ctx.on_viability(viable)

    def _after_input(self, *, defer: bool = False) -> None:
        self._process_events()
        if self._finished:
            return
        quic = self.quic
        if quic._retry_count != self._retries_seen:
            self._retries_seen = quic._retry_count
            self._resend_early_data("Retry")
        self._check_path()
        self._sweep()
        if defer:
            # After the tasks just woken have run: a reply they write leaves in
            # the same packets as the acknowledgement, in one build. (Handshake
            # flights, which no task answers, leave at once.)
            self._schedule_transmit()
        else:
            self.transmit()

    def _schedule_input(self) -> None:
        if self._input_handle is None and not self._finished:
            self._input_handle = self._loop.call_soon(self._released_input)

    def _released_input(self) -> None:
        self._input_handle = None
        if self._finished:
            return
        self.quic.released_events = False
        try:
            self._after_input()
        except Exception as exc:
            self._engine_failed(exc)

    def _process_events(self) -> None:
        quic = self.quic
        if TYPE_CHECKING:
            from aioquic.quic import events  # qh3's event classes have the same fields
        else:
            events = quic.events
        while (event := quic.next_event()) is not None:
            kind = type(event)
            if kind is events.StreamDataReceived:
                assert isinstance(event, events.StreamDataReceived)
                stream = self._stream_for_event(event.stream_id)
                if stream is not None:
                    stream._feed(event.data, event.end_stream)
            elif kind is events.DatagramFrameReceived:
                assert isinstance(event, events.DatagramFrameReceived)
                self.datagrams._feed(event.data)
            elif kind is events.StreamReset:
                assert isinstance(event, events.StreamReset)
                stream = self._stream_for_event(event.stream_id)
                if stream is not None:
                    stream._fail_receive(StreamReset(event.error_code, what="reset"))
            elif kind is events.StopSendingReceived:
                assert isinstance(event, events.StopSendingReceived)
                stream = self._stream_for_event(event.stream_id)
                if stream is not None:
                    stream._send_closed = True
                    stream._fail_send(StreamReset(event.error_code, what="stopped"))
            elif kind is events.HandshakeCompleted:
                assert isinstance(event, events.HandshakeCompleted)
                self._handshake_completed(event)
            elif kind is events.ConnectionTerminated:
                assert isinstance(event, events.ConnectionTerminated)
                self._terminated(event)
            elif kind is events.ConnectionIdIssued or kind is events.ConnectionIdRetired:
                self.on_connection_id(event)
            elif kind is events.ProtocolNegotiated:
                assert isinstance(event, events.ProtocolNegotiated)
                self.negotiated_alpn = event.alpn_protocol
        # A CONNECTION_CLOSE (the peer's, or ours after a protocol or TLS error
        # found here) keeps the engine closing for three PTOs before it reports
        # the end; report it now.
        close = quic.closing_event()
        if close is not None and not self._finished and not self._closing_locally:
            self._terminated(close)

    def _handshake_completed(self, event: events.HandshakeCompleted) -> None:
        self._handshake_complete = True
        self.negotiated_alpn = event.alpn_protocol
        self.session_resumed = event.session_resumed
        if self.is_client:
            self.early_data_accepted = event.early_data_accepted
            if self.early_data_sent and not event.early_data_accepted:
                self._resend_early_data("0-RTT rejected")
            error = self._check_verify_hook()
            if error is not None:
                self.quic.close(error_code=0x100 + 42, reason_phrase=str(error))
                self._finish(error)
                return
        if not self._established.done():
            self._established.set_result(None)

    def _check_verify_hook(self) -> CertificateError | None:
        hook = self.options.verify_hook
        if hook is None:
            return None
        der = self.quic.peer_certificate_der()
        info = PeerCertificate(der, self._server_name, not self.options.insecure_skip_verify)
        try:
            accepted = hook(info)
        except Exception as exc:
            return CertificateError(f"verify hook raised {exc!r}")
        return None if accepted else CertificateError("rejected by the verify hook")

    def _resend_early_data(self, why: str) -> None:
        """Queue again every byte sent as 0-RTT: the server never saw it."""
        self.early_data_resent += self.quic.resend_early_data(sorted(self._early_streams))
        logger.debug("%r: %s, 0-RTT data queued again", self, why)
        if not self._handshake_complete:
            return
        self._early_streams.clear()

    def _check_path(self) -> None:
        addr = self.quic.remote_address()
        if addr is not None and addr != self._remote_sockaddr:
            self._remote_sockaddr = addr
            self.remote_address = Address.from_sockaddr(addr)
            self.ctx.on_path_change()

    def _sweep(self) -> None:
        """After acknowledgements: release send waiters, resolve receipts, open streams."""
        total = 0
        done: list[QUICStream] = []
        for stream in self._active:
            queued = self._queued(stream)
            total += queued
            if stream._receipts:
                self._check_receipts(stream)
            if queued == 0 and not stream._receipts:
                done.append(stream)
        for stream in done:
            self._active.discard(stream)
        self._queued_total = total
        if self._room_waiters and total < self.options.connection_send_buffer:
            # Each woken sender checks the total again before it writes, so
            # the bound holds however many wake at once.
            limit = self.ctx.parameters.send_buffer
            for waiter_stream in list(self._room_waiters):
                if self._queued(waiter_stream) < limit:
                    waiter_stream._wake_sender()
        if (
            self._drained is not None
            and total == 0
            and not self._drained.done()
            and self.quic.send_settled()
        ):
            self._drained.set_result(None)
        if self._credit_waiters:
            for waiter in list(self._credit_waiters):
                if not waiter.done():
                    waiter.set_result(None)
        self._check_early_streams_done()

    def _check_early_streams_done(self) -> None:
        if self._handshake_complete and self._early_streams and self.early_data_accepted:
            self._early_streams.clear()

    # Output

    def _schedule_transmit(self) -> None:
        if self._transmit_handle is None and not self._finished:
            self._transmit_handle = self._loop.call_soon(self.transmit)

    def transmit(self) -> None:
        """Send every packet the engine has ready, then re-arm the timer."""
        handle = self._transmit_handle
        if handle is not None:
            handle.cancel()
            self._transmit_handle = None
        quic = self.quic
        now = self._loop.time()
        try:
            packets = quic.datagrams_to_send(now)
            if packets:
                self._send_packets(packets)
            if self.datagrams._room_waiter is not None:
                self.datagrams._wake()
            if self._retiring:
                self._forget_finished()  # the engine discards finished streams as it builds
            self._arm_timer(now)
        except Exception as exc:
            if not self._finished:  # after the end nothing is sent any more anyway
                self._engine_failed(exc)

    def _arm_timer(self, now: float) -> None:
        at = self.quic.get_timer()
        in_flight = self.quic.bytes_in_flight()
        if in_flight == 0:
            self._in_flight_since = None
        elif self._in_flight_since is None:
            self._in_flight_since = now
        if not self._finished:
            if self._viable and in_flight > 0:
                # Silence counts from the later of the last packet heard and the
                # moment something went unanswered (not from an idle spell).
                waiting = max(self._last_received, self._in_flight_since or now)
                deadline = waiting + self._viability_deadline()
                at = deadline if at is None else min(at, deadline)
            interval = self.keepalive_interval
            if interval and self._handshake_complete:
                deadline = self._last_received + interval
                at = deadline if at is None else min(at, deadline)
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self._loop.call_at(max(at, now), self._on_timer)

    # Ending

    def _check_open(self) -> None:
        if self.error is not None:
            raise self.error
        if self._finished:
            raise InvalidState("the QUIC connection is closed", Cancelled())

    def _terminated(self, event: events.ConnectionTerminated) -> None:
        if self._finished:
            return
        if self._closing_locally:
            self._finish(None)
            return
        self._finish(_map_close(event, self._handshake_complete))

    def _finish(self, error: NetconnError | None) -> None:
        """The connection ended: fail every waiter and tell the owner."""
        if self._finished:
            return
        self._finished = True
        if error is not None and self.error is None:
            self.error = error
        failure: NetconnError
        if self.error is not None:
            failure = self.error
        elif self._closing_locally:
            # Our own close: waiting calls learn that, not of a peer's close.
            failure = InvalidState("the QUIC connection was cancelled", Cancelled())
        else:
            failure = ConnectionClosed("the QUIC connection was closed")
        for stream in list(self._streams.values()):
            if not stream._eof:
                stream._fail_receive(failure)
            if not stream._send_closed or stream._receipts:
                stream._fail_send(failure)
            stream._wake_receiver()
            stream._wake_sender()
        for waiter in [*self._room_waiters.values(), *self._credit_waiters]:
            if not waiter.done():
                waiter.set_result(None)
        inbound = self._inbound_waiter
        if inbound is not None and not inbound.done():
            inbound.set_result(None)
        self.datagrams._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if not self._established.done():
            self._established.set_exception(failure)
            self._established.exception()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._transmit_handle is not None:
            self._transmit_handle.cancel()
            self._transmit_handle = None
        if self._input_handle is not None:
            self._input_handle.cancel()
            self._input_handle = None
        with contextlib.suppress(Exception):  # the CONNECTION_CLOSE, if the engine has one
            packets = self.quic.datagrams_to_send(self._loop.time())
            if packets:
                self._send_packets(packets)
        keylog = self.quic.configuration.secrets_log_file
        if keylog is not None:
            with contextlib.suppress(OSError):
                if self.is_client:
                    keylog.close()  # the client's configuration is its own
                else:
                    keylog.flush()  # the listener's, shared by its connections
        # aioquic writes a qlog trace only when the engine reaches its own end
        # of the draining period, which a finished channel no longer waits for.
        with contextlib.suppress(OSError, ValueError):
            self.quic.end_qlog()
        self.ctx.on_lost(self.error)
        self._on_closed(self)

    async def close(self) -> None:
        """Wait (up to ``QUIC.close_timeout``) for sent data to be acknowledged, then
        send CONNECTION_CLOSE with :attr:`application_error` (default code 0)."""
        if self._finished:
            self._on_closed(self)
            return
        if (self._queued_total or not self.quic.send_settled()) and self._handshake_complete:
            self._drained = self._loop.create_future()
            try:
                async with asyncio.timeout(self.options.close_timeout):
                    await self._drained
            except TimeoutError:
                pass
            finally:
                self._drained = None
        self._close_now()

    def abort(self) -> None:
        """Send CONNECTION_CLOSE at once and drop everything; never blocks."""
        self._close_now()

    def close_with_error(self, code: int, reason: str) -> None:
        """Close now with application error ``code`` and ``reason``."""
        self.application_error = (code, reason)
        self._close_now()

    def _close_now(self) -> None:
        if self._finished:
            self._on_closed(self)
            return
        self._closing_locally = True
        code, reason = self.application_error or (QuicErrorCode.NO_ERROR, "")
        self.quic.close(error_code=code, reason_phrase=reason)
        error = ApplicationClosed(code, reason, by_peer=False) if self.application_error else None
        self._finish(error)


def _map_close(event: events.ConnectionTerminated, established: bool) -> NetconnError:
    code, reason = event.error_code, event.reason_phrase
    if event.frame_type is None:
        return ApplicationClosed(code, reason)
    if code == QuicErrorCode.NO_ERROR:
        return ConnectionClosed(f"the peer closed the connection{': ' + reason if reason else ''}")
    if 0x100 <= code <= 0x1FF:
        alert = code - 0x100
        text = reason or f"TLS alert {alert}"
        if 42 <= alert <= 49:
            return CertificateError(text, code=None)
        return TLSError(f"TLS failed: {text} (alert {alert})")
    return ProtocolError(f"QUIC error 0x{code:x}: {reason}" if reason else f"QUIC error 0x{code:x}")
