"""The interop cases: what each one does and what counts as evidence that it passed.

Names follow the QUIC Interop Runner. Each case is run with netconn as the
client against a peer server, and with netconn as the server against a peer
client; :data:`SUPPORT` says which peer can take part in which case, and in
which role. Files are random bytes, so a matching SHA-256 proves the transfer.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    def scaled(self, factor: float) -> tuple[int, ...]:
        """``sizes`` times ``factor`` (at least 1 byte each), for quick runs."""
        return tuple(max(1, int(size * factor)) for size in self.sizes)


_KB = 1024
_MB = 1024 * 1024

CASES: tuple[Case, ...] = (
    Case("handshake", "handshake, one small file, hash and ALPN checked", (1 * _KB,)),
    Case("transfer", "several files up to 10 MB, hashes checked", (1 * _MB, 3 * _MB, 10 * _MB)),
    Case("multiplexing", "100 small files over concurrent streams", (2 * _KB,) * 100),
    Case("chacha20", "only ChaCha20-Poly1305 offered; the cipher in use checked", (64 * _KB,)),
    Case("retry", "the server sends Retry; the Retry is seen in the trace", (8 * _KB,)),
    Case("resumption", "second connection resumes the TLS session", (8 * _KB,)),
    Case("zerortt", "second connection sends its request in accepted 0-RTT", (8 * _KB,)),
    Case("http3", "files over HTTP/3, hashes checked", (1 * _KB, 64 * _KB, 1 * _MB), "h3"),
    Case("keyupdate", "a key update during a transfer, seen in the trace", (2 * _MB,)),
    Case("v2", "compatible version negotiation to QUIC v2 (RFC 9369)", (8 * _KB,)),
    Case("datagram", "DATAGRAM frames (RFC 9221) both ways, contents checked", ()),
    Case("ipv6", "handshake and transfer over ::1", (256 * _KB,)),
)

_ALL = frozenset(c.name for c in CASES)

SUPPORT: dict[tuple[str, str], frozenset[str]] = {
    # (peer, netconn's role): cases the peer can take part in.
    ("netconn", "client"): _ALL,
    ("picoquic", "client"): _ALL - {"datagram"},
    ("picoquic", "server"): _ALL - {"datagram"},
    # Caddy: HTTP/3 only (every case runs over h3), no forced Retry, no v2.
    ("caddy", "client"): _ALL - {"datagram", "retry", "v2"},
}
"""What each peer supports; anything else is reported as unsupported."""

UNSUPPORTED_WHY: dict[tuple[str, str], str] = {
    ("caddy", "retry"): "Caddy cannot be told to send Retry",
    ("caddy", "v2"): "Caddy 2.6's quic-go speaks QUIC v1 only",
    ("caddy", "datagram"): "Caddy's file server has no datagram application",
    ("picoquic", "datagram"): "picoquicdemo has no datagram application",
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
