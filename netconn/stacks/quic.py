"""QUIC options: ``QUIC(alpn=[...], ...)``, a multiplexed, encrypted transport.

The options object builds the engine's ``QuicConfiguration`` (aioquic's, or
qh3's with ``engine="qh3"``); the connection itself runs in
:mod:`netconn.quic`, which owns the UDP socket, the streams and the datagrams.
"""

from __future__ import annotations

import importlib
import os
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from ..endpoint import Address
from ..errors import TLSError
from .base import AttemptContext, Channel, MultiplexProtocol
from .tls import PeerCertificate

if TYPE_CHECKING:
    from aioquic.quic.configuration import QuicConfiguration

    from ..listener import Listener
    from ..quic import QUICChannel

__all__ = ["QUIC", "MemoryTicketStore", "QUICEngine", "QUICTicketStore", "QUICVersion"]

QUICEngine = Literal["aioquic", "qh3"]
"""The sans-I/O QUIC implementation a connection runs on."""

QUICVersion = Literal["v1", "v2"]
"""QUIC version 1 (RFC 9000) or 2 (RFC 9369)."""

_VERSION_NUMBERS: dict[str, int] = {"v1": 0x00000001, "v2": 0x6B3343CF}


class QUICTicketStore(Protocol):
    """Where a client keeps session tickets for resumption and 0-RTT.

    Tickets are opaque objects of the QUIC engine; a store only keeps them
    under the key it is given (server name and port).
    """

    def get(self, key: tuple[str, int]) -> Any | None:
        """The ticket for ``key``, or ``None``."""

    def put(self, key: tuple[str, int], ticket: Any) -> None:
        """Keep ``ticket`` for ``key`` (replacing an older one)."""


class MemoryTicketStore:
    """A bounded in-memory :class:`QUICTicketStore` (the newest ``size`` tickets)."""

    def __init__(self, size: int = 256) -> None:
        self._tickets: dict[tuple[str, int], Any] = {}
        self._size = size

    def get(self, key: tuple[str, int]) -> Any | None:
        return self._tickets.get(key)

    def put(self, key: tuple[str, int], ticket: Any) -> None:
        self._tickets.pop(key, None)
        self._tickets[key] = ticket
        while len(self._tickets) > self._size:
            del self._tickets[next(iter(self._tickets))]

    def __len__(self) -> int:
        return len(self._tickets)


@dataclass(frozen=True, slots=True)
class QUIC(MultiplexProtocol):
    """QUIC options (client and server). ``alpn`` is required.

    TLS settings mean what they mean on :class:`~netconn.TLS`: certificates
    and host names are verified by default, and only
    ``insecure_skip_verify=True`` turns that off.
    """

    resolve_kind = "datagram"

    alpn: Sequence[str] = ()
    """Application protocols to offer (client) or accept (server); at least one."""
    server_name: str | None = None
    """Name to send (SNI) and verify; default: the endpoint's host."""
    ca_file: str | None = None
    """PEM file of trusted CAs; default: the system store (via ``certifi`` in aioquic)."""
    ca_data: str | None = None
    """PEM text of trusted CAs."""
    certificate: tuple[str, str] | None = None
    """(certificate chain PEM file, private key PEM file): required on a server."""
    verify_hook: Callable[[PeerCertificate], bool] | None = None
    """Client: called with the server's certificate after the handshake; False rejects it."""
    insecure_skip_verify: bool = False
    """Client: accept any certificate and host name. Only for testing."""
    idle_timeout: float = 30.0
    """Seconds without any packet from the peer before the connection fails; default 30."""
    initial_max_data: int = 4 << 20
    """Bytes the peer may send across all streams before we read any; default 4 MiB."""
    initial_max_stream_data: int = 1 << 20
    """Bytes the peer may send on one stream before we read any; default 1 MiB."""
    max_receive_window: int = 16 << 20
    """Cap, in bytes, for a stream's window as it grows with a fast reader; default 16 MiB.
    The connection's window grows to twice this."""
    initial_max_streams_bidirectional: int = 128
    """Bidirectional streams the peer may open at once; default 128."""
    initial_max_streams_unidirectional: int = 128
    """Unidirectional streams the peer may open at once; default 128."""
    max_datagram_frame_size: int | None = None
    """Enable DATAGRAM frames (RFC 9221) up to this many bytes; default off."""
    max_udp_payload_size: int = 1350
    """Bytes per UDP datagram sent, at least 1200 and never above the peer's
    max_udp_payload_size; default 1350. Larger sizes cut CPU per byte where the path
    allows them; nothing probes the path MTU. On aioquic at most 16384 (its frames
    carry two-byte lengths); see also ``loopback_udp_payload_size``."""
    loopback_udp_payload_size: int = 16000
    """Bytes per UDP datagram once the handshake is confirmed, when the peer is on a
    loopback address (127.0.0.0/8, ::1): the path is this host's loopback interface,
    whose MTU the kernel reports (64 KiB by default). Capped by that MTU, the peer's
    max_udp_payload_size and 16384; default 16000 (four to a GSO send); at or below
    ``max_udp_payload_size`` (0, say) it has no effect. Engine aioquic only (qh3 sends
    ``max_udp_payload_size`` everywhere)."""
    congestion_control: Literal["reno", "cubic"] | None = None
    """Congestion controller; default: the engine's own (NewReno on aioquic; qh3 has
    one built-in controller and refuses a choice)."""
    versions: Sequence[QUICVersion] = ("v1",)
    """Versions in preference order. A client starts with v1 if listed and moves
    to a preferred v2 by compatible version negotiation (RFC 9368)."""
    keepalive_interval: float | None = None
    """Seconds of silence after which a PING is sent; default none."""
    chacha20_only: bool = False
    """Offer only the ChaCha20-Poly1305 cipher suite; default false."""
    qlog_dir: str | None = None
    """Write one qlog file per connection into this directory; default none."""
    keylog_file: str | None = None
    """Append TLS secrets here (NSS key log format); default none."""
    ticket_store: QUICTicketStore | None = None
    """Client: keep and reuse session tickets here (resumption, 0-RTT); default none."""
    early_data: bool = False
    """Client: with a 0-RTT ticket, become ready before the handshake ends and send
    early. Early data can be replayed by an attacker; use it for idempotent requests."""
    retry: bool = False
    """Server: validate client addresses with a Retry packet first; default false."""
    connection_send_buffer: int = 8 << 20
    """Bytes queued across all streams before ``send`` waits; default 8 MiB. Each
    stream also waits above ``Parameters.send_buffer``."""
    datagram_queue: int = 256
    """Datagrams held for sending, and unread received ones, per connection; default 256."""
    close_timeout: float = 5.0
    """Seconds a graceful close waits for sent data to be acknowledged; default 5."""
    engine: QUICEngine = "aioquic"
    """The QUIC implementation: ``"aioquic"`` (default) or ``"qh3"`` (aioquic's API on
    a Rust core; needs the ``qh3`` package). Options qh3 cannot honour raise
    ``ValueError`` here; see :mod:`netconn.quic._qh3`."""

    def __post_init__(self) -> None:
        if not self.alpn:
            raise ValueError("QUIC needs at least one ALPN protocol")
        if not self.versions or any(v not in _VERSION_NUMBERS for v in self.versions):
            raise ValueError(f"versions must be a non-empty sequence of 'v1'/'v2': {self.versions}")
        if self.max_udp_payload_size < 1200:
            raise ValueError("max_udp_payload_size must be at least 1200")
        if self.loopback_udp_payload_size < 0:
            raise ValueError("loopback_udp_payload_size must not be negative")
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if self.engine == "qh3":
            from ..quic._qh3 import check_options

            check_options(self)
        elif self.engine != "aioquic":
            raise ValueError(f"engine must be 'aioquic' or 'qh3', not {self.engine!r}")

    @property
    def version_numbers(self) -> list[int]:
        """The versions as wire numbers, in preference order."""
        return [_VERSION_NUMBERS[v] for v in self.versions]

    def configuration(
        self, *, is_client: bool, server_name: str | None = None
    ) -> QuicConfiguration:
        """Build the engine's configuration these options describe (qh3's has the
        same fields; it is typed as aioquic's).

        Raises :class:`~netconn.TLSError` when a certificate, key or CA file
        cannot be read or parsed.
        """
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        package = "qh3" if self.engine == "qh3" else "aioquic"
        cipher_suite = importlib.import_module(f"{package}.tls").CipherSuite
        configuration = importlib.import_module(f"{package}.quic.configuration")
        config: Any = configuration.QuicConfiguration(
            alpn_protocols=list(self.alpn),
            is_client=is_client,
            idle_timeout=self.idle_timeout,
            max_data=self.initial_max_data,
            max_stream_data=self.initial_max_stream_data,
            max_datagram_frame_size=self.max_datagram_frame_size,
            max_datagram_size=self.max_udp_payload_size,
            server_name=server_name,
        )
        if self.congestion_control is not None:
            config.congestion_control_algorithm = self.congestion_control
        numbers = self.version_numbers
        config.supported_versions = numbers
        if is_client:
            # Start with v1 when offered (every server speaks it) and let the
            # server upgrade to the preferred version.
            config.original_version = (
                _VERSION_NUMBERS["v1"] if "v1" in self.versions else numbers[0]
            )
        if self.chacha20_only:
            config.cipher_suites = [cipher_suite.CHACHA20_POLY1305_SHA256]
        try:
            if self.certificate is not None:
                config.load_cert_chain(*self.certificate)
            if self.ca_file or self.ca_data:
                # Read and parse now (aioquic would only at the handshake) so a
                # missing or broken file fails here, and hand aioquic canonical
                # PEM (its own splitter trips over anything after the last one).
                pem = (self.ca_data or "").encode()
                if self.ca_file:
                    with open(self.ca_file, "rb") as fp:
                        pem = fp.read() + b"\n" + pem
                cas = x509.load_pem_x509_certificates(pem)
                config.load_verify_locations(
                    cadata=b"".join(ca.public_bytes(Encoding.PEM) for ca in cas)
                )
        except (OSError, ValueError) as exc:
            raise TLSError(f"cannot load the certificates or trust anchors: {exc}") from exc
        if is_client and self.insecure_skip_verify:
            config.verify_mode = ssl.CERT_NONE
        if self.qlog_dir:
            from aioquic.quic.logger import QuicFileLogger

            os.makedirs(self.qlog_dir, exist_ok=True)
            config.quic_logger = QuicFileLogger(self.qlog_dir)
        if self.keylog_file:
            config.secrets_log_file = open(self.keylog_file, "a")  # noqa: SIM115 - lives with the connection
        return cast("QuicConfiguration", config)

    async def open_channel(self, ctx: AttemptContext, address: Address) -> QUICChannel:
        from ..quic._client import connect

        return await connect(self, ctx, address)

    async def accept_channel(self, ctx: AttemptContext, inner: Channel) -> Channel:
        from ..quic import QUICChannel

        assert isinstance(inner, QUICChannel)
        await inner.wait_established()
        return inner

    async def start_listener(self, listener: Listener[Any], host: str | None, port: int) -> None:
        from ..quic._server import start_server

        await start_server(self, listener, host, port)
