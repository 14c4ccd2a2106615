"""The qh3 engine (``QUIC(engine="qh3")``): qh3's connection behind the channel's interface.

qh3 keeps aioquic's API over a native core. The channel drives it exactly as
it drives aioquic (:mod:`netconn.quic._aioquic` lists the questions an engine
answers); this module answers them from qh3's connection and its core. Some
of that reaches into qh3's private methods, which is why pyproject.toml pins
qh3 to the 2.1 series (the QUIC tests run on this engine too). It adapts:

Receive credit. qh3's core grants MAX_DATA / MAX_STREAM_DATA as the Python
side takes received data out of it, and qh3's connection takes everything out
as each datagram is processed, so by itself it would let a peer fill an
unread stream without limit. Here the core's connection window is half of
``QUIC.initial_max_data``, and :class:`Qh3Engine` stops taking events out of
the core once the application has ``initial_max_stream_data`` (at least a
quarter of the core's window) received and unread; the core's fixed windows
then stop the peer. The cost: while the application is that far behind,
*every* event of the connection waits in the core (data on other streams,
datagrams, resets, the peer's close), and an application that waits on one
stream while leaving that much unread on others stalls until it reads them
(aioquic's engine grants credit per stream instead). The windows also do not
grow with a fast reader, so ``max_receive_window`` has no effect on qh3.

Stream limits. qh3 announces fixed initial MAX_STREAMS (and DATAGRAM support
on every client); the options' values are handed to its core when it is
created and replace qh3's in the transport parameters.

Receiving. A batch of datagrams from one address goes to the core in one call.

DATAGRAM frames. qh3's core queues them without limit and sends every one on
the next transmit, ignoring the congestion window; the engine counts what it
handed over since, so ``QUIC.datagram_queue`` bounds the queue as on aioquic.

Options qh3 cannot honour are refused by :func:`check_options` when the
options are built.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import fields
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import InvalidState
from ._udp import NetworkAddress

if TYPE_CHECKING:
    from ..stacks.quic import QUIC

__all__ = ["check_options", "new_qh3_engine"]

# Options qh3 cannot honour, each with its default and why.
_REFUSED: dict[str, str] = {
    "congestion_control": "qh3 runs one built-in congestion controller",
    "qlog_dir": "qh3 traces datagrams only, without frames",
    "early_data": "0-RTT needs engine='aioquic'",
}

# Positions in qh3's QuicConnectionCore(...) arguments.
_ARG_PROBE_DATAGRAM_SIZE = 9
_ARG_MAX_DATAGRAM_FRAME_SIZE = 12
_ARG_CONNECTION_WINDOW = 14
_ARG_LOCAL_MAX_STREAMS_BIDI = 21
_ARG_LOCAL_MAX_STREAMS_UNI = 22
_CORE_ARGS = 28


def _qh3() -> ModuleType:
    try:
        return importlib.import_module("qh3.quic.connection")
    except ImportError as exc:
        raise ValueError(
            "QUIC(engine='qh3') needs the qh3 package (pip install qh3, or netconn[bench])"
        ) from exc


def check_options(options: QUIC) -> None:
    """Raise ``ValueError`` naming the first option qh3 cannot honour (or a missing qh3)."""
    _qh3()
    defaults = {f.name: f.default for f in fields(options)}
    for name, why in _REFUSED.items():
        if getattr(options, name) != defaults[name]:
            raise ValueError(f"QUIC option {name}= is not supported with engine='qh3': {why}")


def _engine_class() -> type:
    module = _qh3()
    events = importlib.import_module("qh3.quic.events")
    packet = importlib.import_module("qh3.quic.packet")
    hazmat = importlib.import_module("qh3._hazmat")
    transport_parameters = importlib.import_module(
        "qh3.tls"
    ).ExtensionType.QUIC_TRANSPORT_PARAMETERS
    base: Any = module.QuicConnection

    class Qh3Engine(base):  # type: ignore[misc]
        """qh3's ``QuicConnection`` with bounded receive buffering and the engine interface."""

        name = "qh3"
        supports_receipts = False  # qh3 does not tell which stream bytes were acknowledged

        def __init__(self, *, options: QUIC, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.events = events
            self._nc_options = options
            # The core's connection window is half of initial_max_data. The
            # streams may hold one stream window unread (a receive_exactly of
            # that much must complete, as on aioquic), and at least a quarter
            # of the core's: their buffers cost about three times their
            # contents in RSS at their peak.
            self._nc_window = max(options.initial_max_data // 2, 1)
            self._nc_budget = max(options.initial_max_stream_data, self._nc_window // 4, 1)
            self._nc_taker = _Taker(self)
            self._nc_unread: dict[int, int] = {}
            self._nc_unread_total = 0
            self._nc_held = False
            self._nc_datagrams = 0
            self.released_events = False
            """Set when events held back for a slow reader were handed over."""

        # Creating the core with the options' limits

        def _create_core(self, remote_addr: Any, initial_dcid: bytes, now: float) -> None:
            real = getattr(module, "QuicConnectionCore")  # noqa: B009 - replaced below
            options = self._nc_options

            def core(*args: Any) -> Any:
                assert len(args) == _CORE_ARGS, "qh3's QuicConnectionCore changed"
                values = list(args)
                values[_ARG_CONNECTION_WINDOW] = self._nc_window
                values[_ARG_PROBE_DATAGRAM_SIZE] = False  # max_udp_payload_size is the size
                values[_ARG_MAX_DATAGRAM_FRAME_SIZE] = options.max_datagram_frame_size
                values[_ARG_LOCAL_MAX_STREAMS_BIDI] = options.initial_max_streams_bidirectional
                values[_ARG_LOCAL_MAX_STREAMS_UNI] = options.initial_max_streams_unidirectional
                return real(*values)

            setattr(module, "QuicConnectionCore", core)  # noqa: B010 - for this call only
            try:
                super()._create_core(remote_addr, initial_dcid, now)
            finally:
                setattr(module, "QuicConnectionCore", real)  # noqa: B010

        def _create_tls(self, remote_source_cid: bytes | None) -> Any:
            bridge = super()._create_tls(remote_source_cid)
            serialize = bridge.serialize_transport_parameters

            def ours() -> bytes:
                return self._nc_transport_parameters(serialize())

            bridge.serialize_transport_parameters = ours  # a version change builds them again
            bridge.tls.handshake_extensions = [
                (kind, ours() if kind == transport_parameters else data)
                for kind, data in bridge.tls.handshake_extensions
            ]
            return bridge

        def _nc_transport_parameters(self, data: bytes) -> bytes:
            # qh3 announces fixed stream limits, and DATAGRAM support on every
            # client: announce what the options say instead.
            options = self._nc_options
            parameters = packet.pull_quic_transport_parameters(hazmat.Buffer(data=data))
            parameters.initial_max_data = self._nc_window
            parameters.initial_max_streams_bidi = options.initial_max_streams_bidirectional
            parameters.initial_max_streams_uni = options.initial_max_streams_unidirectional
            parameters.max_datagram_frame_size = options.max_datagram_frame_size
            buf = hazmat.Buffer(capacity=len(data) + 64)
            packet.push_quic_transport_parameters(buf, parameters)
            return bytes(buf.data)

        def _receive_version_negotiation(self, data: bytes, address: Any, now: float) -> bool:
            handled = bool(super()._receive_version_negotiation(data, address, now))
            close: Any = getattr(self, "_close_event", None)
            if handled and close is not None and close.frame_type is None:
                # qh3 reports "no common version" like an application's close.
                mapped = events.ConnectionTerminated(close.error_code, 0, close.reason_phrase)
                pending: Any = getattr(self, "_events", ())
                for index, event in enumerate(pending):
                    if event is close:
                        pending[index] = mapped
                self._close_event = mapped
            return handled

        # Receive credit follows the application

        def _drain_core(self) -> None:
            core: Any = getattr(self, "_core", None)
            if core is None:
                super()._drain_core()
                return
            # Until the handshake is over, and once the connection closes,
            # everything is taken; in between, only up to the budget.
            limited = self._close_event is None and core.state == "connected"
            if limited and self._nc_held:
                return
            taker = self._nc_taker
            taker.core = core
            taker.limited = limited
            self._core = taker
            try:
                super()._drain_core()
            finally:
                if self._core is taker:
                    self._core = core
                taker.core = None

        def _nc_took(self, stream_id: int, size: int) -> None:
            self._nc_unread[stream_id] = self._nc_unread.get(stream_id, 0) + size
            self._nc_unread_total += size
            if self._nc_unread_total >= self._nc_budget:
                self._nc_held = True

        def consumed(self, stream_id: int, size: int, now: float) -> bool:
            """The application took ``size`` bytes of ``stream_id``; True: transmit soon."""
            left = self._nc_unread.get(stream_id, 0) - size
            if left > 0:
                self._nc_unread[stream_id] = left
            else:
                self._nc_unread.pop(stream_id, None)
            self._nc_unread_total -= size
            return self._release()

        def forget_stream(self, stream_id: int) -> None:
            self._nc_unread_total -= self._nc_unread.pop(stream_id, 0)
            self._release()

        def _release(self) -> bool:
            """Take held events out of the core once the reader caught up; True if it did
            (``released_events`` then tells the channel to process them)."""
            if not self._nc_held or self._nc_unread_total >= self._nc_budget:
                return False
            self._nc_held = False
            if getattr(self, "_core", None) is None:
                return False
            self._drain_core()  # the core grants credit for what it hands over
            self.released_events = True
            return True

        @property
        def unread_bytes(self) -> int:
            """Bytes handed to the application and not yet read."""
            return self._nc_unread_total

        @property
        def receive_held(self) -> bool:
            """Whether events wait in the core until the application reads."""
            return self._nc_held

        # The engine interface (see netconn.quic._aioquic)

        def receive_datagrams(self, batch: list[tuple[bytes, NetworkAddress]], now: float) -> None:
            # After the handshake qh3 hands a list to its core in one call
            # (receive_datagram parses every packet header in Python first).
            if len(batch) == 1:
                data, addr = batch[0]
                self.receive_many_datagrams([data], addr, now)
                return
            start = 0
            while start < len(batch):
                addr = batch[start][1]
                end = start + 1
                while end < len(batch) and batch[end][1] == addr:
                    end += 1
                self.receive_many_datagrams([d for d, _ in batch[start:end]], addr, now)
                start = end

        def can_send_early(self) -> bool:
            return False  # refused in check_options

        def remote_idle_timeout(self) -> float | None:
            parameters = self._applied_transport_parameters
            if parameters is None or not parameters.max_idle_timeout:
                return None
            return float(parameters.max_idle_timeout) / 1000

        def remote_max_streams(self, unidirectional: bool) -> int:
            core = self._core
            if core is None:
                return 0
            return int(core.stream_limits[1 if unidirectional else 0])

        def recovery_stats(self) -> tuple[float, int, int]:
            core = self._core
            if core is None:
                return 0.0, 0, 0
            return core.smoothed_rtt or 0.0, core.congestion_window, core.bytes_in_flight

        def bytes_in_flight(self) -> int:
            core = self._core
            return 0 if core is None else int(core.bytes_in_flight)

        def probe_timeout(self) -> float:
            core = self._core
            rtt = (core.smoothed_rtt if core is not None else None) or 0.333
            return 3 * rtt + 0.025

        def key_phase(self) -> int:
            core = self._core
            phase = None if core is None else core.send_key_phase
            return int(phase or 0)

        def cipher_name(self) -> str | None:
            cipher = self.get_cipher()
            return None if cipher is None else str(cipher.name)

        def peer_certificate_der(self) -> bytes:
            certificate = self.get_peercert()
            return b"" if certificate is None else bytes(certificate.public_bytes())

        def remote_address(self) -> NetworkAddress | None:
            core = self._core
            return None if core is None else core.active_path[2]

        def has_stream(self, stream_id: int) -> bool:
            return self.queued(stream_id) > 0

        def queued(self, stream_id: int) -> int:
            """Bytes of the stream not yet sent once (qh3 keeps the rest until acknowledged)."""
            return int(self.get_send_buffer_size(stream_id))

        def send_settled(self) -> bool:
            return self.bytes_in_flight() == 0

        def written_offset(self, stream_id: int) -> int:
            return 0  # never asked: supports_receipts is False

        def acked_offset(self, stream_id: int) -> int:
            return 1 << 62  # no receipt is ever taken on qh3

        def set_priority(self, stream_id: int, priority: int) -> None:
            if priority:
                raise InvalidState(
                    "stream priorities need QUIC(engine='aioquic'); qh3 sends streams in turn"
                )

        def idle_expired(self, now: float) -> float | None:
            core = self._core
            if self._close_event is not None or core is None:
                return None
            timer = core.get_timer()
            if timer is not None and timer[0] == "idle" and now >= timer[1]:
                return float(self._configuration.idle_timeout)
            return None

        def closing_event(self) -> Any:
            core = self._core
            if self._close_event is not None and core is not None and core.state != "connected":
                return self._close_event
            return None

        def resend_early_data(self, stream_ids: Iterable[int]) -> int:
            return 0  # qh3 sends data written before a Retry again itself

        def end_qlog(self) -> None:
            pass  # refused in check_options

        # qh3's core queues DATAGRAM frames without limit and sends all of
        # them on the next datagrams_to_send (congestion control aside): what
        # waits is what was handed over since then.

        def send_datagram_frame(self, data: bytes) -> None:
            super().send_datagram_frame(data)
            self._nc_datagrams += 1

        def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
            packets: list[tuple[bytes, NetworkAddress]] = super().datagrams_to_send(now)
            self._nc_datagrams = 0
            return packets

        @property
        def queued_datagrams(self) -> int:
            """DATAGRAM frames waiting to be sent."""
            return self._nc_datagrams

    return Qh3Engine


class _Taker:
    """Stands in for qh3's core while its connection takes events out of it.

    Counts the stream bytes taken (the core grants credit for them) and, when
    limited, hands out no more events once the application's unread bytes
    reach the budget; the rest wait in the core.
    """

    __slots__ = ("core", "engine", "limited")

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.core: Any = None
        self.limited = False

    def next_event(self) -> Any:
        engine = self.engine
        if self.limited and engine._nc_held:
            return None
        native = self.core.next_event()
        if native is not None and native[0] == "stream_data" and native[2]:
            engine._nc_took(native[1], len(native[2]))
        return native

    def __getattr__(self, name: str) -> Any:
        return getattr(self.core, name)


_ENGINE_CLASS: type | None = None


def new_qh3_engine(options: QUIC, **kwargs: Any) -> Any:
    """A qh3 engine for ``options`` (``kwargs`` as for qh3's ``QuicConnection``)."""
    global _ENGINE_CLASS
    if _ENGINE_CLASS is None:
        _ENGINE_CLASS = _engine_class()
    return _ENGINE_CLASS(options=options, **kwargs)
