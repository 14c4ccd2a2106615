"""Stack option objects: the protocols a connection is built from."""

from .base import Message, MessageProtocol, MultiplexProtocol, Stack, StreamProtocol
from .quic import QUIC, MemoryTicketStore, QUICTicketStore, QUICVersion
from .tcp import TCP
from .tls import TLS, PeerCertificate, TLSSessionCache, TLSVersion
from .udp import UDP

__all__ = [
    "QUIC",
    "TCP",
    "TLS",
    "UDP",
    "MemoryTicketStore",
    "Message",
    "MessageProtocol",
    "MultiplexProtocol",
    "PeerCertificate",
    "QUICTicketStore",
    "QUICVersion",
    "Stack",
    "StreamProtocol",
    "TLSSessionCache",
    "TLSVersion",
]
