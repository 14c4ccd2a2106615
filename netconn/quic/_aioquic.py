"""The aioquic engine behind the channel's engine interface.

:class:`QUICChannel` talks to its engine through aioquic's public API
(``receive_datagram``, ``datagrams_to_send``, ``next_event``, ...) plus the
few questions below, which each engine answers from its own state. Here they
read aioquic's private state; :mod:`netconn.quic._qh3` answers them for qh3.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import TYPE_CHECKING, Any

from aioquic import tls
from aioquic.quic import events as aioquic_events
from aioquic.quic.connection import QuicConnectionState
from aioquic.quic.packet import QuicPacketType
from aioquic.quic.stream import QuicStreamSender

from ._engine import FlowControlledConnection
from ._udp import NetworkAddress

if TYPE_CHECKING:
    from ..stacks.quic import QUIC

__all__ = ["AioquicEngine", "new_aioquic_engine"]

_CLOSING_STATES = frozenset({QuicConnectionState.CLOSING, QuicConnectionState.DRAINING})


class AioquicEngine(FlowControlledConnection):
    """aioquic's connection with the answers the channel asks of an engine."""

    events: ModuleType = aioquic_events
    """The module of the event classes ``next_event`` returns."""
    name = "aioquic"
    supports_receipts = True
    released_events = False
    """Never set here: aioquic hands every event over at once (see _qh3)."""

    def receive_datagrams(self, batch: list[tuple[bytes, NetworkAddress]], now: float) -> None:
        receive = self.receive_datagram
        for data, addr in batch:
            receive(data, addr, now)

    def can_send_early(self) -> bool:
        crypto = self._cryptos.get(tls.Epoch.ZERO_RTT)
        return bool(crypto is not None and crypto.send.is_valid())

    def remote_idle_timeout(self) -> float | None:
        value = self._remote_max_idle_timeout
        return None if value is None else float(value)

    def remote_max_streams(self, unidirectional: bool) -> int:
        limit = self._remote_max_streams_uni if unidirectional else self._remote_max_streams_bidi
        return int(limit)

    def recovery_stats(self) -> tuple[float, int, int]:
        """(smoothed RTT, congestion window, bytes in flight)."""
        loss = self._loss
        return loss._rtt_smoothed, loss.congestion_window, loss.bytes_in_flight

    def bytes_in_flight(self) -> int:
        return int(self._loss.bytes_in_flight)

    def probe_timeout(self) -> float:
        return float(self._loss.get_probe_timeout())

    def key_phase(self) -> int:
        crypto = self._cryptos.get(tls.Epoch.ONE_RTT)
        return 0 if crypto is None else int(crypto.send.key_phase)

    def cipher_name(self) -> str | None:
        suite = getattr(getattr(self.tls, "key_schedule", None), "cipher_suite", None)
        return getattr(suite, "name", None)

    def peer_certificate_der(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        certificate = getattr(self.tls, "_peer_certificate", None)
        return b"" if certificate is None else certificate.public_bytes(Encoding.DER)

    def remote_address(self) -> NetworkAddress | None:
        paths = self._network_paths
        return paths[0].addr if paths else None

    def has_stream(self, stream_id: int) -> bool:
        """Whether the engine still keeps the stream (not everything acknowledged both ways)."""
        return stream_id in self._streams

    def queued(self, stream_id: int) -> int:
        """Bytes of the stream not yet acknowledged (0 once gone or reset)."""
        stream = self._streams.get(stream_id)
        if stream is None or stream.sender._reset_error_code is not None:
            return 0
        return len(stream.sender._buffer)

    def written_offset(self, stream_id: int) -> int:
        """The stream offset after the last byte written so far."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else int(stream.sender._buffer_stop)

    def acked_offset(self, stream_id: int) -> int:
        """Every byte before this offset was acknowledged."""
        stream = self._streams.get(stream_id)
        # A stream the engine discarded had everything acknowledged.
        return 1 << 62 if stream is None else int(stream.sender._buffer_start)

    def send_settled(self) -> bool:
        """Whether nothing sent waits for an acknowledgement (see :meth:`queued`)."""
        return True  # queued() already counts bytes until they are acknowledged

    def set_priority(self, stream_id: int, priority: int) -> None:
        if priority:
            self.stream_priorities[stream_id] = priority
        else:
            self.stream_priorities.pop(stream_id, None)

    def idle_expired(self, now: float) -> float | None:
        """The idle timeout in seconds once it expired (and no close is under way)."""
        if self._close_event is None and self._close_at is not None and now >= self._close_at:
            return float(self._idle_timeout())
        return None

    def closing_event(self) -> Any:
        """The ConnectionTerminated of a close under way (the peer's or ours), if any."""
        if self._close_event is not None and self._state in _CLOSING_STATES:
            return self._close_event
        return None

    def resend_early_data(self, stream_ids: Iterable[int]) -> int:
        """Queue again every byte sent as 0-RTT; return how many bytes.

        aioquic marks 0-RTT stream data as sent and, after a Retry or a
        rejection of early data, never sends it again. The bytes are still in
        each stream's send buffer (unacknowledged), so they are marked pending
        and go out in the next packets.
        """
        # The 0-RTT packets may later be declared lost; their stream frames must
        # not then be queued a second time (by then the copies sent here may be
        # acknowledged and gone from the buffer).
        for space in self._loss.spaces:
            for packet in space.sent_packets.values():
                if packet.packet_type == QuicPacketType.ZERO_RTT:
                    packet.delivery_handlers = [
                        (handler, args)
                        for handler, args in packet.delivery_handlers
                        if not isinstance(getattr(handler, "__self__", None), QuicStreamSender)
                    ]
        resent = 0
        for stream_id in stream_ids:
            engine_stream = self._streams.get(stream_id)
            if engine_stream is None:
                continue
            sender = engine_stream.sender
            if sender._buffer_start < sender.highest_offset:
                sender._pending.add(sender._buffer_start, sender.highest_offset)
                resent += sender.highest_offset - sender._buffer_start
            if sender._buffer_fin is not None and not sender._acked_fin:
                sender._pending_eof = True
            sender.buffer_is_empty = False
        return resent

    def end_qlog(self) -> None:
        """Write the qlog trace now (aioquic writes it only at the end of draining)."""
        file_logger, trace = self.configuration.quic_logger, self._quic_logger
        if file_logger is not None and trace is not None:
            try:
                file_logger.end_trace(trace)
            finally:
                self._quic_logger = None


def new_aioquic_engine(options: QUIC, **kwargs: Any) -> AioquicEngine:
    """An engine with the options' stream limits and receive windows."""
    engine = AioquicEngine(
        max_stream_window=options.max_receive_window,
        max_connection_window=2 * options.max_receive_window,
        loopback_datagram_size=options.loopback_udp_payload_size,
        **kwargs,
    )
    for limit, value in (
        (engine._local_max_streams_bidi, options.initial_max_streams_bidirectional),
        (engine._local_max_streams_uni, options.initial_max_streams_unidirectional),
    ):
        limit.value = limit.sent = value  # announced in the transport parameters
    return engine
