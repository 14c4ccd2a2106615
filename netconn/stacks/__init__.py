"""Stack option objects: the protocols a connection is built from."""

from .base import Message, MessageProtocol, MultiplexProtocol, Stack, StreamProtocol
from .coder import JSON, Codec, Coder, JSONCodec
from .framing import TLV, LengthPrefix
from .quic import QUIC, MemoryTicketStore, QUICEngine, QUICTicketStore, QUICVersion
from .tcp import TCP
from .tls import TLS, PeerCertificate, TLSSessionCache, TLSVersion
from .udp import UDP
from .websocket import CloseCode, HandshakeRequest, WebSocket, WebSocketHandshake

__all__ = [
    "JSON",
    "QUIC",
    "TCP",
    "TLS",
    "TLV",
    "UDP",
    "CloseCode",
    "Codec",
    "Coder",
    "HandshakeRequest",
    "JSONCodec",
    "LengthPrefix",
    "MemoryTicketStore",
    "Message",
    "MessageProtocol",
    "MultiplexProtocol",
    "PeerCertificate",
    "QUICEngine",
    "QUICTicketStore",
    "QUICVersion",
    "Stack",
    "StreamProtocol",
    "TLSSessionCache",
    "TLSVersion",
    "WebSocket",
    "WebSocketHandshake",
]
