"""The interop cases: what each one does and what counts as evidence that it passed.

Names follow the QUIC Interop Runner. Each case is run with netconn as the
client against a peer server, and with netconn as the server against a peer
client; :data:`SUPPORT` says which peer can take part in which case, and in
which role. Files are random bytes, so a matching SHA-256 proves the transfer.
"""

from __future__ import annotations

from dataclasses import dataclass

from netconn.lab.relay import Impairment, Schedule

__all__ = ["CASES", "SUPPORT", "UNSUPPORTED_WHY", "Case", "case_named", "supports"]


@dataclass(frozen=True)
class Case:
    """One interop case."""

    name: str
    """Its name in the matrix (the QUIC Interop Runner's, where it has one)."""
    description: str
    """What it checks, in one line."""
    sizes: tuple[int, ...]
    """Bytes of each file the client fetches."""
    alpn: str = "hq-interop"
    """The application protocol (servers that speak only HTTP/3 get ``h3``)."""
    impairment: Impairment | None = None
    """What a relay between client and server does to datagrams, each way."""
    schedule: Schedule | None = None
    """Faults the relay injects at given datagram counts; with no impairment either: direct."""
    connections: int = 1
    """Connections the client makes, one after the other, each fetching every file."""
    min_size: int = 1
    """Smallest a scaled file may get (a fault must happen during the transfer)."""
    idle_timeout: float = 10.0
    """Seconds of silence before a netconn endpoint gives up on the connection; default 10."""
    time_factor: float = 1.0
    """Multiplies the run's time limit for one case (and for one peer client run); default 1."""

    @property
    def relayed(self) -> bool:
        """Whether the case runs through a relay (:class:`netconn.lab.relay.UDPRelay`)."""
        return self.impairment is not None or self.schedule is not None

    def scaled(self, factor: float) -> tuple[int, ...]:
        """``sizes`` times ``factor`` (at least ``min_size`` each), for quick runs."""
        return tuple(max(self.min_size, int(size * factor)) for size in self.sizes)


_KB = 1024
_MB = 1024 * 1024

# With 30% of datagrams lost (or corrupted) each way, a handshake packet lost three
# times in a row waits 1 + 2 + 4 PTOs (RFC 9002 section 6.2.1), and one RTT sample
# taken from a retransmission can make the PTO 1.5 s: over 10 s of silence. The
# QUIC Interop Runner gives this case 300 s; peers default to 30 s idle timeouts.
_LOSSY_IDLE_TIMEOUT = 30.0
# rebind-addr moves the client to these in turn (all of 127.0.0.0/8 is loopback).
_OTHER_LOOPBACK = ("127.0.0.2", "127.0.0.3", "127.0.0.4")
# The Interop Runner's loss and corruption never hit more than 3 datagrams in a row one way.
_MAX_LOST_IN_A_ROW = 3

CASES: tuple[Case, ...] = (
    Case("handshake", "handshake, one small file, hash and ALPN checked", (1 * _KB,)),
    Case("transfer", "several files up to 10 MB, hashes checked", (1 * _MB, 3 * _MB, 10 * _MB)),
    Case("multiplexing", "100 small files over concurrent streams", (2 * _KB,) * 100),
    Case("chacha20", "only ChaCha20-Poly1305 offered; the cipher in use checked", (64 * _KB,)),
    Case("retry", "the server sends Retry; the Retry is seen in the trace", (8 * _KB,)),
    Case("resumption", "second connection resumes the TLS session", (8 * _KB,)),
    Case("zerortt", "second connection sends its request in accepted 0-RTT", (8 * _KB,)),
    Case("http3", "files over HTTP/3, hashes checked", (1 * _KB, 64 * _KB, 1 * _MB), "h3"),
    Case("keyupdate", "the client updates its keys, then 2 MB flow; seen in the trace", (2 * _MB,)),
    Case("v2", "compatible version negotiation to QUIC v2 (RFC 9369)", (8 * _KB,)),
    Case("datagram", "DATAGRAM frames (RFC 9221) both ways, contents checked", ()),
    Case("ipv6", "handshake and transfer over ::1", (256 * _KB,)),
    # The network cases, through a relay that injects the fault (netconn.lab.relay).
    Case(
        "handshakeloss",
        "5 handshakes with 30% loss each way (at most 3 in a row)",
        (1 * _KB,),
        impairment=Impairment(loss=0.30, max_lost_in_a_row=_MAX_LOST_IN_A_ROW),
        connections=5,
        idle_timeout=_LOSSY_IDLE_TIMEOUT,
        time_factor=3.0,
    ),
    Case(
        "transferloss",
        "transfer with 2% loss each way",
        (2 * _MB,),
        impairment=Impairment(loss=0.02, max_lost_in_a_row=_MAX_LOST_IN_A_ROW),
        min_size=256 * _KB,
    ),
    Case(
        "handshakecorruption",
        "5 handshakes with 30% of datagrams corrupted (at most 3 in a row)",
        (1 * _KB,),
        impairment=Impairment(corrupt=0.30, max_corrupted_in_a_row=_MAX_LOST_IN_A_ROW),
        connections=5,
        idle_timeout=_LOSSY_IDLE_TIMEOUT,
        time_factor=3.0,
    ),
    Case(
        "transfercorruption",
        "transfer with 2% of datagrams corrupted",
        (2 * _MB,),
        impairment=Impairment(corrupt=0.02),
        min_size=256 * _KB,
    ),
    Case(
        "longrtt",
        "handshake and transfer over a 750 ms round trip",
        (256 * _KB,),
        impairment=Impairment(delay=0.375),
    ),
    Case(
        "blackhole",
        "2 s of total blackout in the middle of a transfer",
        (3 * _MB,),
        schedule=Schedule(blackout_after=100, blackout_for=2.0),
        min_size=1 * _MB,
    ),
    Case(
        "amplificationlimit",
        "client datagrams 2-7 dropped; the server sends at most 3x what it received",
        (8 * _KB,),
        schedule=Schedule(drop_from_client=frozenset(range(2, 8))),
    ),
    Case(
        "rebind-port",
        "the client's port changes 3 times, every 8 datagrams it sends",
        (2 * _MB,),
        schedule=Schedule(rebind_every=8),
        min_size=512 * _KB,
    ),
    Case(
        "rebind-addr",
        "the client's address changes 3 times, every 8 datagrams it sends",
        (2 * _MB,),
        schedule=Schedule(rebind_every=8, rebind_addresses=_OTHER_LOOPBACK),
        min_size=512 * _KB,
    ),
)

_ALL = frozenset(c.name for c in CASES)

SUPPORT: dict[tuple[str, str], frozenset[str]] = {
    # (peer, netconn's role): cases the peer can take part in.
    ("netconn", "client"): _ALL,
    ("picoquic", "client"): _ALL - {"datagram"},
    ("picoquic", "server"): _ALL - {"datagram"},
    # Caddy: HTTP/3 only (every case runs over h3), no forced Retry, no v2, no migration.
    ("caddy", "client"): _ALL - {"datagram", "retry", "v2", "rebind-port", "rebind-addr"},
}
"""What each peer supports; anything else is reported as unsupported."""

_NO_MIGRATION = "quic-go in Caddy 2.6 has no connection migration (quic-go issue 234)"

UNSUPPORTED_WHY: dict[tuple[str, str], str] = {
    ("caddy", "retry"): "Caddy cannot be told to send Retry",
    ("caddy", "v2"): "Caddy 2.6's quic-go speaks QUIC v1 only",
    ("caddy", "datagram"): "Caddy's file server has no datagram application",
    ("picoquic", "datagram"): "picoquicdemo has no datagram application",
    ("caddy", "rebind-port"): _NO_MIGRATION,
    ("caddy", "rebind-addr"): _NO_MIGRATION,
}


def case_named(name: str) -> Case:
    """The case called ``name``; raises ``KeyError`` listing the known ones."""
    for case in CASES:
        if case.name == name:
            return case
    raise KeyError(f"no case {name!r}; known: {', '.join(c.name for c in CASES)}")


def supports(peer: str, role: str, case: str) -> bool:
    """Whether ``peer`` can take part in ``case`` with netconn as ``role``."""
    return case in SUPPORT.get((peer, role), frozenset())
