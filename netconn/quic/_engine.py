"""aioquic's ``QuicConnection`` with receive credit that follows the application.

aioquic raises MAX_STREAM_DATA and MAX_DATA as data *arrives* (it doubles a
window once half of it is used), so a peer can fill an unread stream without
limit. Here credit is granted from what the application has *read*: a
stream's limit is ``read + window`` and the connection's is ``read_total +
connection window``. The windows start at the configured sizes and double
(up to a cap) while the reader keeps up (it never finds much unread) and the
window is used up quickly, and halve again when the reader falls behind, so
a fast reader gets a window near the bandwidth-delay product and a slow one
keeps the peer's data bounded by the starting window (see
:meth:`FlowControlledConnection._tuned`).

On a loopback path, whose MTU is known, packets grow once the handshake is
confirmed (:meth:`FlowControlledConnection._size_datagrams`): most of
aioquic's work is per packet.

Once the handshake is confirmed, the engine drops what aioquic keeps of
it for the connection's lifetime (see
:meth:`FlowControlledConnection._release_handshake_state`): an idle
connection then costs about half of what it does in plain aioquic.

aioquic also visits every stream for every packet it builds to see whether a
MAX_STREAM_DATA frame is due. :class:`_StreamTable` hands that loop only the
streams that have an update to send.

These overrides reach into aioquic's private methods and attributes, which is
why pyproject.toml pins aioquic to the 1.7 series (the tests exercise each
override).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from aioquic import tls
from aioquic._buffer import Buffer
from aioquic.quic.congestion.base import K_INITIAL_WINDOW
from aioquic.quic.connection import END_STATES, QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicFrameType, pull_quic_transport_parameters
from aioquic.quic.packet_builder import QuicDeliveryState, QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketPacer, QuicPacketSpace
from aioquic.quic.stream import QuicStream

__all__ = ["LARGEST_DATAGRAM", "FlowControlledConnection", "loopback_payload_size"]

_LIMIT_FRAME_CAPACITY = 1 + 2 * 8  # frame type + two varints at their largest


class _StreamTable(dict[int, QuicStream]):
    """aioquic's stream table; ``values()`` yields only streams with a credit update due.

    aioquic calls ``values()`` in exactly one place: the per-packet loop that
    writes MAX_STREAM_DATA frames.
    """

    def __init__(self) -> None:
        super().__init__()
        self.due: dict[int, QuicStream] = {}

    def values(self) -> Any:
        due = self.due
        return list(due.values()) if due else ()  # usually nothing: no list per packet


_SPARE_CRYPTO_BUFFER = 64  # TLS writes nothing after the handshake; see above
_SMALLEST_DATAGRAM = 1200  # RFC 9000 section 14: every path carries this much
# aioquic writes the length of a long header packet and of a STREAM or CRYPTO
# frame as a two-byte varint, so neither may exceed 16383 bytes.
LARGEST_DATAGRAM = 16384
_MIN_TUNING_PERIOD = 0.02  # seconds: see FlowControlledConnection._tuned
_QUEUE_WINDOW = 16  # most streams aioquic's packet loop is shown at a time
_WINDOW_BYTES = 32 * 1024  # sendable bytes that make a window big enough
_GSO_BURST = 64  # packets one segmented sendmsg carries
_TIMER_SLACK = 0.002  # seconds: twice the shortest wait of an asyncio timer (epoll)
_IP_MTU = 14  # linux/in.h: a connected socket's path MTU
_IPV6_MTU = 24  # linux/in6.h
_UDP_HEADERS = {socket.AF_INET: 20 + 8, socket.AF_INET6: 40 + 8}
_LOOPBACK_PAYLOAD: dict[int, int] = {}  # address family: loopback's largest UDP payload


_HANDSHAKE_EPOCHS = (tls.Epoch.INITIAL, tls.Epoch.HANDSHAKE)
# One key-less pair stands in for every connection's discarded keys: decrypting
# with it fails as with torn-down keys, and nothing sets it up again.
_NO_KEYS = CryptoPair()
# aioquic builds a frozenset of allowed epochs per frame type per connection;
# equal sets are shared instead.
_EPOCH_SETS: dict[frozenset[tls.Epoch], frozenset[tls.Epoch]] = {}


def loopback_payload_size(addr: Any) -> int:
    """The largest UDP payload the path to ``addr`` carries if ``addr`` is a
    loopback address (the loopback interface's MTU less the headers), else 0.

    A loopback path never leaves this host, so its MTU is known: the kernel
    reports it for a connected socket (nothing is sent to connect one). It is
    read once per address family.
    """
    try:
        ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
    except (ValueError, IndexError, TypeError):
        return 0
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if not ip.is_loopback:
        return 0
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    size = _LOOPBACK_PAYLOAD.get(family)
    if size is None:  # asked once per process: a probe socket per connection costs
        level, option = (
            (socket.IPPROTO_IP, _IP_MTU) if ip.version == 4 else (socket.IPPROTO_IPV6, _IPV6_MTU)
        )
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                probe.connect((str(ip), 9))
                mtu = probe.getsockopt(level, option)
        except OSError:  # no such option outside Linux, or no loopback for this family
            mtu = 0
        size = _LOOPBACK_PAYLOAD[family] = max(0, mtu - _UDP_HEADERS[family])
    return size


def _window_size(streams: list[QuicStream]) -> int:
    """How many streams, from the front, aioquic's packet loop is shown in one round.

    Each round ends its last packet part full, so a window holds at least
    :data:`_WINDOW_BYTES` that flow control lets go (small messages share
    packets); but each stream in it costs a frame attempt per packet, so it
    stops there, and at :data:`_QUEUE_WINDOW` streams. With bulk streams that
    is one stream per round.
    """
    sendable = 0
    size = 0
    for stream in streams[:_QUEUE_WINDOW]:
        size += 1
        sender = stream.sender
        end = min(sender._buffer_stop, stream.max_stream_data_remote)
        sendable += max(0, end - sender.next_offset)
        if sendable >= _WINDOW_BYTES:
            break
    return size


class _BurstPacer(QuicPacketPacer):
    """aioquic's pacer, with bursts that outlast the event loop's timer.

    aioquic caps a burst at 16 packets, but a pacing timer in asyncio waits
    at least a millisecond (epoll's resolution) however short the delay, so
    at high rates the sender sleeps more than it sends. A burst here covers
    two milliseconds at the pacing rate, and at least one GSO batch of 64
    packets, never more than half the congestion window.
    """

    def __init__(self, *, max_datagram_size: int) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self._nc_datagram_size = max_datagram_size

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        super().update_rate(congestion_window, smoothed_rtt)
        rate = congestion_window / max(smoothed_rtt, 1e-6)
        burst = max(_GSO_BURST * self._nc_datagram_size, _TIMER_SLACK * rate)
        self.bucket_max = max(self.bucket_max, min(congestion_window // 2, burst) / rate)


class FlowControlledConnection(QuicConnection):
    """A ``QuicConnection`` whose receive windows advance as the application reads.

    Call :meth:`consumed` whenever the application takes bytes off a stream.
    """

    def __init__(
        self,
        *,
        max_stream_window: int,
        max_connection_window: int,
        loopback_datagram_size: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self._nc_loopback_size = loopback_datagram_size
        self._nc_sized_path: Any = None
        self._loss._pacer = _BurstPacer(max_datagram_size=self._max_datagram_size)
        if self._max_datagram_size > LARGEST_DATAGRAM:
            self._set_datagram_size(LARGEST_DATAGRAM)
        self._nc_datagram_size = self._max_datagram_size  # configured, capped by the peer
        handlers: dict[int, Any] = self.__dict__["_QuicConnection__frame_handlers"]
        for frame_type, (handler, epochs) in handlers.items():
            handlers[frame_type] = (handler, _EPOCH_SETS.setdefault(epochs, epochs))
        self._nc_table = _StreamTable()
        self._streams = self._nc_table
        self._nc_stream_window = self._configuration.max_stream_data
        self._nc_max_stream_window = max(max_stream_window, self._nc_stream_window)
        self._nc_connection_window = self._configuration.max_data
        self._nc_max_connection_window = max(max_connection_window, self._nc_connection_window)
        self._nc_read: dict[int, int] = {}
        self._nc_windows: dict[int, tuple[int, float]] = {}  # stream: (window, last update)
        # The most bytes found unread when the application came to read, since
        # the last credit update: per stream, and for the connection.
        self._nc_unread_peaks: dict[int, int] = {}
        self._nc_connection_unread_peak = 0
        self._nc_read_total = 0
        self._nc_connection_update_at = 0.0
        self._nc_now = 0.0
        self._nc_ack_with_data = False
        self._nc_peer_limit: int | None = None
        self.stream_priorities: dict[int, int] = {}
        """Send priority of streams that have a non-zero one (higher first)."""

    # What the glue calls

    def consumed(self, stream_id: int, size: int, now: float) -> bool:
        """Record that the application read ``size`` bytes of ``stream_id``.

        Returns whether new credit is due (the caller should transmit soon).
        """
        self._nc_now = now
        before = self._nc_read.get(stream_id, 0)
        read = before + size
        self._nc_read[stream_id] = read
        limit = self._local_max_data
        unread = limit.used - self._nc_read_total
        if unread > self._nc_connection_unread_peak:
            self._nc_connection_unread_peak = unread
        self._nc_read_total += size
        due = False
        stream = self._streams.get(stream_id)
        if stream is not None and stream.max_stream_data_local and not stream.receiver.is_finished:
            peaks = self._nc_unread_peaks
            unread = stream.receiver.highest_offset - before
            if unread > peaks.get(stream_id, 0):
                peaks[stream_id] = unread
            window, _ = self._nc_windows.get(stream_id, (self._nc_stream_window, 0.0))
            if read + window - stream.max_stream_data_local >= window // 2:
                self._nc_table.due[stream_id] = stream
                due = True
        if self._nc_read_total + self._nc_connection_window - limit.value >= (
            self._nc_connection_window // 2
        ):
            due = True
        if due:
            self._nc_ack_with_data = True
        return due

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        super().send_stream_data(stream_id, data, end_stream)
        self._nc_ack_with_data = True

    def send_datagram_frame(self, data: bytes) -> None:
        super().send_datagram_frame(data)
        self._nc_ack_with_data = True

    def forget_stream(self, stream_id: int) -> None:
        """Drop the bookkeeping of a stream the application is done with."""
        self._nc_read.pop(stream_id, None)
        self.stream_priorities.pop(stream_id, None)
        self._nc_windows.pop(stream_id, None)
        self._nc_unread_peaks.pop(stream_id, None)
        self._nc_table.due.pop(stream_id, None)

    @property
    def queued_datagrams(self) -> int:
        """DATAGRAM frames waiting to be sent."""
        return len(self._datagrams_pending)

    # Overrides of aioquic's credit logic

    def _write_stream_limits(
        self, builder: QuicPacketBuilder, space: QuicPacketSpace, stream: QuicStream
    ) -> None:
        stream_id: int = stream.stream_id  # type: ignore[assignment]  # only crypto streams lack one
        if stream.max_stream_data_local and not stream.receiver.is_finished:
            read = self._nc_read.get(stream_id, 0)
            window, last = self._nc_windows.get(stream_id, (self._nc_stream_window, 0.0))
            if read + window - stream.max_stream_data_local >= window // 2:
                now = self._nc_now
                unread = stream.receiver.highest_offset - read
                behind = max(unread, self._nc_unread_peaks.pop(stream_id, 0))
                window = self._tuned(
                    window, self._nc_stream_window, self._nc_max_stream_window, last, now, behind
                )
                self._nc_windows[stream_id] = (window, now)
                stream.max_stream_data_local = read + window
        if stream.max_stream_data_local_sent != stream.max_stream_data_local:
            # Raises QuicPacketBuilderStop when the packet is full; the stream
            # then stays due for the next packet.
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=_LIMIT_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream_id)
            buf.push_uint_var(stream.max_stream_data_local)
            stream.max_stream_data_local_sent = stream.max_stream_data_local
        self._nc_table.due.pop(stream_id, None)

    def _on_max_stream_data_delivery(self, delivery: QuicDeliveryState, stream: QuicStream) -> None:
        super()._on_max_stream_data_delivery(delivery, stream)
        if delivery != QuicDeliveryState.ACKED and stream.stream_id in self._streams:
            self._nc_table.due[stream.stream_id] = stream  # lost: send it again

    def _write_connection_limits(self, builder: QuicPacketBuilder, space: QuicPacketSpace) -> None:
        limit = self._local_max_data
        window = self._nc_connection_window
        if self._nc_read_total + window - limit.value >= window // 2:
            now = self._nc_now
            last = self._nc_connection_update_at
            behind = max(limit.used - self._nc_read_total, self._nc_connection_unread_peak)
            self._nc_connection_unread_peak = 0
            window = self._nc_connection_window = self._tuned(
                window,
                self._configuration.max_data,
                self._nc_max_connection_window,
                last,
                now,
                behind,
            )
            self._nc_connection_update_at = now
            limit.value = self._nc_read_total + window
        bidi, uni = self._local_max_streams_bidi, self._local_max_streams_uni
        if limit.value == limit.sent and bidi.value == bidi.sent and uni.value == uni.sent:
            return  # nothing to announce (the common case, once per packet)
        # aioquic doubles MAX_DATA when half is used; hide the usage from it so
        # that only the rule above moves the limit.
        used, limit.used = limit.used, 0
        try:
            super()._write_connection_limits(builder, space)
        finally:
            limit.used = used

    # Memory held after the handshake

    def _confirm_handshake(self) -> None:
        super()._confirm_handshake()
        self._release_handshake_state()

    def _release_handshake_state(self) -> None:
        """Drop the handshake's buffers, streams and keys, which aioquic keeps.

        Once the handshake is confirmed, TLS writes no more messages (a client
        only reads NewSessionTickets; a server wrote its ticket with its last
        flight), so its three 16 KiB output buffers stay empty; the Initial
        and Handshake packet spaces are discarded, so their CRYPTO streams and
        keys (and the 0-RTT ones) are never used again. Spaces still in use
        (an Initial space a server never saw a Handshake packet for) keep theirs.
        """
        spaces = self._spaces
        done = [epoch for epoch in _HANDSHAKE_EPOCHS if spaces[epoch].discarded]
        buffers = self._crypto_buffers
        for epoch in done:
            buffers.pop(epoch, None)
            self._crypto_streams.pop(epoch, None)
            self._cryptos[epoch] = _NO_KEYS
        if tls.Epoch.INITIAL in done:
            for version in self._cryptos_initial:
                self._cryptos_initial[version] = _NO_KEYS
        one_rtt = buffers.get(tls.Epoch.ONE_RTT)
        if one_rtt is not None and one_rtt.tell() == 0:
            buffers[tls.Epoch.ONE_RTT] = Buffer(capacity=_SPARE_CRYPTO_BUFFER)
        zero_rtt = self._cryptos.get(tls.Epoch.ZERO_RTT)
        if zero_rtt is not None and not (zero_rtt.send.is_valid() or zero_rtt.recv.is_valid()):
            self._cryptos[tls.Epoch.ZERO_RTT] = _NO_KEYS

    def _parse_transport_parameters(self, data: bytes, from_session_ticket: bool = False) -> None:
        super()._parse_transport_parameters(data, from_session_ticket)
        # aioquic ignores the peer's max_udp_payload_size (RFC 9000 section
        # 18.2); never send datagrams larger than the peer accepts.
        try:
            limit = pull_quic_transport_parameters(Buffer(data=data)).max_udp_payload_size
        except Exception:  # already rejected by aioquic if malformed
            return
        if limit is not None and limit < self._max_datagram_size:
            self._max_datagram_size = max(limit, _SMALLEST_DATAGRAM)
        self._nc_datagram_size = self._max_datagram_size
        self._nc_peer_limit = limit

    def _size_datagrams(self) -> None:
        """Choose the datagram size for the current path, once the handshake is confirmed.

        On a loopback path the datagrams grow to ``loopback_datagram_size``
        (within the loopback MTU and the peer's limit): aioquic's work is
        mostly per packet, so larger packets cut its CPU per byte several
        times. Only 1-RTT packets grow: a long header's length field (two
        bytes in aioquic) cannot describe a packet above 16 KiB, and an
        Initial is padded to the full size.
        """
        path = self._network_paths[0]
        self._nc_sized_path = path
        size = self._nc_datagram_size
        if self._nc_loopback_size > size:
            loopback = min(
                loopback_payload_size(path.addr), self._nc_loopback_size, LARGEST_DATAGRAM
            )
            peer = self._nc_peer_limit
            if peer is not None:
                loopback = min(loopback, peer)
            size = max(size, loopback)
        if size != self._max_datagram_size:
            self._set_datagram_size(size)

    def _set_datagram_size(self, size: int) -> None:
        self._max_datagram_size = size
        loss = self._loss
        pacer = loss._pacer
        pacer._max_datagram_size = size
        if isinstance(pacer, _BurstPacer):
            pacer._nc_datagram_size = size
        cc: Any = loss._cc
        cc._max_datagram_size = size
        if hasattr(cc, "additive_increase_factor"):  # CUBIC's Reno-friendly step
            cc.additive_increase_factor = size
        if cc.ssthresh is None:  # still in slow start: an initial window of packets
            cc.congestion_window = max(cc.congestion_window, K_INITIAL_WINDOW * size)

    def _tuned(
        self, window: int, smallest: int, largest: int, last: float, now: float, behind: int
    ) -> int:
        """The window for a credit update that is due (half the window was read).

        It doubles (up to ``largest``) when the reader kept up, finding little
        unread (under a quarter of the window) whenever it came to read since
        the last update, and half the window went by quickly: within four
        round trips, or 20 ms, as a receiver that mostly sends ACKs measures
        a round trip shorter than its sender sees. It halves (down to
        ``smallest``) when the reader fell behind by half the window: a reader
        slower than its peer then holds at most about the window it needs,
        whatever a faster spell earlier made it.
        """
        if behind >= window // 2:
            return max(window // 2, smallest)
        if (
            last
            and window < largest
            and behind < window // 4
            and now - last < max(4 * self._smoothed_rtt(), _MIN_TUNING_PERIOD)
        ):
            return min(window * 2, largest)
        return window

    def _smoothed_rtt(self) -> float:
        rtt: float = self._loss._rtt_smoothed or self._configuration.initial_rtt
        return rtt

    def _ack_now(self, now: float) -> None:
        """Let the next packet carry the pending ACK instead of a packet of its own.

        aioquic writes an ACK only once its delay (1 ms) has passed, so a reply
        sent at once leaves without it and an ACK-only packet follows a
        millisecond later, waking the peer once more. When frames that elicit
        an ACK are about to go out anyway, the ACK rides along.
        """
        space = self._spaces.get(tls.Epoch.ONE_RTT)
        if (
            space is not None
            and space.ack_at is not None
            and space.ack_at > now
            and self._handshake_complete
        ):
            space.ack_at = now

    # Hooks for the glue

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        """aioquic's ``datagrams_to_send``, serving the stream queue a window at a time.

        For every packet it builds, aioquic walks its whole stream queue, so
        with N busy streams a full packet costs N frame attempts. Showing it
        a few streams per round keeps that bounded (see :func:`_window_size`);
        rounds go on until every stream was offered once, or the congestion
        window or the pacer stops sending. Served streams still rotate to the
        back.
        """
        self._nc_now = now
        if self._nc_ack_with_data:
            self._nc_ack_with_data = False
            self._ack_now(now)
        if self._handshake_confirmed and self._network_paths[0] is not self._nc_sized_path:
            self._size_datagrams()  # the handshake was just confirmed, or the path moved
        queue = self._streams_queue
        priorities = self.stream_priorities
        if priorities:
            queue.sort(key=lambda stream: -priorities.get(stream.stream_id, 0))  # type: ignore[arg-type]
        elif len(queue) <= 1 or _window_size(queue) == len(queue):
            return super().datagrams_to_send(now)
        packets: list[tuple[bytes, Any]] = []
        rest = queue
        served: list[QuicStream] = []
        while True:
            limit = _window_size(rest)
            size = limit
            if priorities and rest:
                # A window never mixes priorities: lower ones only get what
                # the higher ones leave of the congestion window.
                top = priorities.get(rest[0].stream_id, 0)  # type: ignore[arg-type]
                size = 1
                while size < limit and (
                    priorities.get(rest[size].stream_id, 0) == top  # type: ignore[arg-type]
                ):
                    size += 1
            window, rest = rest[:size], rest[size:]
            self._streams_queue = window
            try:
                packets += super().datagrams_to_send(now)
            finally:
                # aioquic rebuilt the window: finished streams gone, served ones last.
                served += self._streams_queue
                self._streams_queue = rest + served
            if (
                not rest
                or self._state in END_STATES
                or self._pacing_at is not None
                or self._loss.bytes_in_flight >= self._loss.congestion_window
            ):
                return packets
