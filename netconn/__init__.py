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
    TCP,
    TLS,
    UDP,
    Message,
    MessageProtocol,
    MultiplexProtocol,
    PeerCertificate,
    Stack,
    StreamProtocol,
    TLSSessionCache,
    TLSVersion,
)
from .state import TERMINAL_STATES, Cancelled, Failed, Preparing, Ready, Setup, State, Waiting

__version__ = "0.1.0"

__all__ = [
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
    "EndOfStream",
    "Endpoint",
    "EstablishmentReport",
    "Failed",
    "HostUnreachable",
    "Interface",
    "InterfaceProperties",
    "InterfaceType",
    "InvalidState",
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
    "clear_interface_configuration",
    "configure_interface",
]
