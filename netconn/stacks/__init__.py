"""Stack option objects: the protocols a connection is built from."""

from .base import Message, MessageProtocol, MultiplexProtocol, Stack, StreamProtocol
from .tcp import TCP
from .tls import TLS, PeerCertificate, TLSSessionCache, TLSVersion
from .udp import UDP

__all__ = [
    "TCP",
    "TLS",
    "UDP",
    "Message",
    "MessageProtocol",
    "MultiplexProtocol",
    "PeerCertificate",
    "Stack",
    "StreamProtocol",
    "TLSSessionCache",
    "TLSVersion",
]
