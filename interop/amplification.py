"""The anti-amplification limit (RFC 9000 section 8.1), checked on a relay's trace.

Until a server has validated the client's address it may send at most three
times the bytes it has received from that address. Both sides are counted as
UDP payloads, whole datagrams (coalesced packets and padding included), the
way RFC 9000 section 8.1 counts them. The address counts as validated once a
client datagram carrying a Handshake packet has reached the server (RFC 9000
section 8.1); this module reads the unprotected long header fields to find
it, for QUIC v1 and v2. No library here parses QUIC headers without keys,
hence the few lines below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "RFC_FACTOR",
    "TOLERATED_FACTOR",
    "Amplification",
    "check_amplification",
    "packet_types",
    "validates",
]

RFC_FACTOR = 3
"""RFC 9000 section 8.1: at most three times what was received."""

TOLERATED_FACTOR = 4
"""The QUIC Interop Runner lets a server's last datagram reach 4x before it fails the case."""

_V1 = 0x00000001
_V2 = 0x6B3343CF
# Long header type bits: RFC 9000 section 17.2 (v1) and RFC 9369 section 3.2 (v2).
_TYPES = {
    _V1: ("initial", "0rtt", "handshake", "retry"),
    _V2: ("retry", "initial", "0rtt", "handshake"),
}


def _varint(data: bytes, at: int) -> tuple[int, int]:
    """(value, next offset) of the QUIC variable-length integer at ``at``."""
    length = 1 << (data[at] >> 6)
    if at + length > len(data):
        raise IndexError("truncated varint")
    value = data[at] & 0x3F
    for byte in data[at + 1 : at + length]:
        value = value << 8 | byte
    return value, at + length


def packet_types(datagram: bytes) -> tuple[str, ...]:
    """The packet types coalesced in ``datagram``, in order.

    Long header packets are named ``initial``, ``0rtt``, ``handshake``,
    ``retry``, ``version_negotiation``; a short header packet is ``1rtt``;
    anything unreadable (unknown version, truncated) is ``unknown`` and ends
    the walk.
    """
    types: list[str] = []
    at = 0
    while at < len(datagram):
        first = datagram[at]
        if not first & 0x80:
            types.append("1rtt")  # a short header packet runs to the end of the datagram
            break
        try:
            version = int.from_bytes(datagram[at + 1 : at + 5], "big")
            if at + 5 > len(datagram):
                raise IndexError("truncated header")
            if version == 0:
                types.append("version_negotiation")
                break
            names = _TYPES.get(version)
            if names is None:
                types.append("unknown")
                break
            kind = names[(first & 0x30) >> 4]
            at += 5
            at += 1 + datagram[at]  # destination connection ID
            at += 1 + datagram[at]  # source connection ID
            types.append(kind)
            if kind == "retry":
                break
            if kind == "initial":
                token_length, at = _varint(datagram, at)
                at += token_length
            length, at = _varint(datagram, at)
            at += length
        except IndexError:
            types.append("unknown")
            break
    return tuple(types)


def validates(datagram: bytes) -> bool:
    """Whether a client datagram carries a Handshake packet, validating the client's address."""
    return "handshake" in packet_types(datagram)


@dataclass(frozen=True)
class Amplification:
    """What a trace says about the server's sending before address validation."""

    received: int
    """Client bytes (UDP payloads) the server had received before validation."""
    sent: int
    """Server bytes (UDP payloads) sent before validation."""
    ratio: float
    """The highest sent / received at any server datagram (``inf`` if sent on nothing)."""
    validated: bool
    """Whether a client Handshake packet reached the server in the trace."""

    def over(self, factor: float) -> bool:
        """Whether the server ever had more than ``factor`` times what it had received."""
        return self.ratio > factor


def check_amplification(trace: Sequence[tuple[bool, bytes | int]]) -> Amplification:
    """Check ``trace``: ``(from_client, datagram)`` pairs in the order the relay forwarded them.

    A datagram may be given as its size when its contents do not matter: a
    size from the client never validates. Counting stops at the first client
    datagram that carries a Handshake packet. Each server datagram is compared
    with everything the client had delivered before it, which is never less
    than what the server had read when it sent it: the check cannot fail a
    server that kept to the limit.
    """
    received = sent = 0
    ratio = 0.0
    for from_client, datagram in trace:
        size = datagram if isinstance(datagram, int) else len(datagram)
        if from_client:
            if not isinstance(datagram, int) and validates(datagram):
                return Amplification(received, sent, ratio, True)
            received += size
        else:
            sent += size
            ratio = max(ratio, sent / received if received else float("inf"))
    return Amplification(received, sent, ratio, False)
