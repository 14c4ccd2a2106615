"""netconn: typed asyncio connections over TCP, TLS, UDP, WebSocket and QUIC.

One :class:`Connection` type, parameterised by the top of its protocol stack,
modelled on Apple's ``NetworkConnection``::

    import netconn as nc

    async with nc.Connection(nc.Endpoint.host_port("example.com", 443), nc.TLS()) as conn:
        await conn.send(b"hello")
        data = await conn.receive(at_least=1, at_most=65536)
"""

from .connection import Attempt, Connection, EstablishmentReport
from .endpoint import Address, Endpoint
from .errors import (
    ApplicationClosed,
    Busy,
    CertificateError,
    ConnectError,
    ConnectionClosed,
    ConnectionRefused,
    ConnectionTimeout,
    DecodeError,
    DNSError,
    EndOfStream,
    HandshakeRejected,
    HostUnreachable,
    InvalidState,
    MessageTooLarge,
    NetconnError,
    NoSatisfyingPath,
    ProtocolError,
    StreamReset,
    TLSError,
)
from .listener import Listener
from .parameters import Parameters, ServiceClass
from .path import (
    Interface,
    InterfaceProperties,
    InterfaceType,
    Path,
    PathStatus,
    clear_interface_configuration,
    configure_interface,
)
from .pathmonitor import PathMonitor
from .stacks import (
    JSON,
    TCP,
    TLS,
    TLV,
    UDP,
    CloseCode,
    Codec,
    Coder,
    HandshakeRequest,
    JSONCodec,
    LengthPrefix,
    Message,
    MessageProtocol,
    MultiplexProtocol,
    PeerCertificate,
    Stack,
    StreamProtocol,
    TLSSessionCache,
    TLSVersion,
    WebSocket,
    WebSocketHandshake,
)
from .state import TERMINAL_STATES, Cancelled, Failed, Preparing, Ready, Setup, State, Waiting

__version__ = "0.1.0"

__all__ = [
    "JSON",
    "TCP",
    "TERMINAL_STATES",
    "TLS",
    "TLV",
    "UDP",
    "Address",
    "ApplicationClosed",
    "Attempt",
    "Busy",
    "Cancelled",
    "CertificateError",
    "CloseCode",
    "Codec",
    "Coder",
    "ConnectError",
    "Connection",
    "ConnectionClosed",
    "ConnectionRefused",
    "ConnectionTimeout",
    "DNSError",
    "DecodeError",
    "EndOfStream",
    "Endpoint",
    "EstablishmentReport",
    "Failed",
    "HandshakeRejected",
    "HandshakeRequest",
    "HostUnreachable",
    "Interface",
    "InterfaceProperties",
    "InterfaceType",
    "InvalidState",
    "JSONCodec",
    "LengthPrefix",
    "Listener",
    "Message",
    "MessageProtocol",
    "MessageTooLarge",
    "MultiplexProtocol",
    "NetconnError",
    "NoSatisfyingPath",
    "Parameters",
    "Path",
    "PathMonitor",
    "PathStatus",
    "PeerCertificate",
    "Preparing",
    "ProtocolError",
    "Ready",
    "ServiceClass",
    "Setup",
    "Stack",
    "State",
    "StreamProtocol",
    "StreamReset",
    "TLSError",
    "TLSSessionCache",
    "TLSVersion",
    "Waiting",
    "WebSocket",
    "WebSocketHandshake",
    "clear_interface_configuration",
    "configure_interface",
]
