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
    DNSError,
    EndOfStream,
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
from .path import Interface, InterfaceType, Path, PathStatus
from .quic import DatagramsNotEnabled, DeliveryReceipt, Directionality, QUICDatagrams, QUICStream
from .stacks import (
    QUIC,
    TCP,
    TLS,
    UDP,
    MemoryTicketStore,
    Message,
    MessageProtocol,
    MultiplexProtocol,
    PeerCertificate,
    QUICTicketStore,
    QUICVersion,
    Stack,
    StreamProtocol,
    TLSSessionCache,
    TLSVersion,
)
from .state import TERMINAL_STATES, Cancelled, Failed, Preparing, Ready, Setup, State, Waiting

__version__ = "0.1.0"

__all__ = [
    "QUIC",
    "TCP",
    "TERMINAL_STATES",
    "TLS",
    "UDP",
    "Address",
    "ApplicationClosed",
    "Attempt",
    "Busy",
    "Cancelled",
    "CertificateError",
    "ConnectError",
    "Connection",
    "ConnectionClosed",
    "ConnectionRefused",
    "ConnectionTimeout",
    "DNSError",
    "DatagramsNotEnabled",
    "DeliveryReceipt",
    "Directionality",
    "EndOfStream",
    "Endpoint",
    "EstablishmentReport",
    "Failed",
    "HostUnreachable",
    "Interface",
    "InterfaceType",
    "InvalidState",
    "Listener",
    "MemoryTicketStore",
    "Message",
    "MessageProtocol",
    "MessageTooLarge",
    "MultiplexProtocol",
    "NetconnError",
    "NoSatisfyingPath",
    "Parameters",
    "Path",
    "PathStatus",
    "PeerCertificate",
    "Preparing",
    "ProtocolError",
    "QUICDatagrams",
    "QUICStream",
    "QUICTicketStore",
    "QUICVersion",
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
]
