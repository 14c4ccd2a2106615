"""The server side: one UDP socket serving many connections, routed by connection ID.

Each datagram's destination connection ID picks its connection; every
connection ID the engine issues is added to the table and every one it
retires removed, so the peer may switch IDs (and addresses) at will. A new
Initial packet of at least 1200 bytes starts a connection, after a Retry
round trip when the options ask for address validation.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from aioquic._buffer import Buffer
from aioquic.quic import events
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler
from aioquic.tls import SessionTicket

from ..endpoint import Address
from ._channel import QUICChannel
from ._client import new_engine
from ._udp import DatagramSocket, NetworkAddress

if TYPE_CHECKING:
    from ..listener import Listener
    from ..stacks.quic import QUIC

__all__ = ["start_server"]

_SMALLEST_INITIAL = 1200
_TICKETS_KEPT = 4096
_CID_LENGTH = 8


async def start_server(options: QUIC, listener: Listener[Any], host: str | None, port: int) -> None:
    """Bind the listener's sockets and serve QUIC on each."""
    if options.certificate is None:
        raise ValueError("a QUIC listener needs QUIC(certificate=(chain_pem, key_pem))")
    from ..stacks.sockets import bind_listening_sockets

    sockets = bind_listening_sockets(host, port, socket.SOCK_DGRAM, listener.parameters)
    servers: list[QUICServer] = []
    try:
        for sock in sockets:
            servers.append(QUICServer(options, listener, sock))
    except BaseException:
        for server in servers:
            server.close()
        for sock in sockets:
            sock.close()
        raise
    for server in servers:
        listener.add_closer(server.close)
    listener.set_sockets(sockets)


class QUICServer:
    """Serves QUIC on one bound UDP socket for a :class:`~netconn.Listener`."""

    def __init__(self, options: QUIC, listener: Listener[Any], sock: socket.socket) -> None:
        self._options = options
        self._listener = listener
        self._configuration = options.configuration(is_client=False)
        self._routes: dict[bytes, QUICChannel] = {}
        self._channels: set[QUICChannel] = set()
        self._retry = QuicRetryTokenHandler() if options.retry else None
        self._tickets: OrderedDict[bytes, SessionTicket] = OrderedDict()
        self._loop = asyncio.get_running_loop()
        self._local = Address.from_sockaddr(sock.getsockname())
        self._io = DatagramSocket(sock, self._datagrams, self._socket_error)
        self.retries_sent = 0
        """Retry packets sent."""

    @property
    def connections(self) -> frozenset[QUICChannel]:
        """Connections being served."""
        return frozenset(self._channels)

    def close(self) -> None:
        """Close every connection (sending CONNECTION_CLOSE) and the socket."""
        for channel in list(self._channels):
            channel.abort()
        self._io.close()
        keylog = self._configuration.secrets_log_file
        if keylog is not None:
            keylog.close()

    def _socket_error(self, exc: OSError) -> None:
        pass  # an ICMP error about one client says nothing about the others

    def _datagrams(self, batch: list[tuple[bytes, NetworkAddress]]) -> None:
        per_channel: dict[QUICChannel, list[tuple[bytes, NetworkAddress]]] = {}
        routes = self._routes
        for data, addr in batch:
            # A short header (the bulk of the traffic) starts with our own
            # connection ID: route it without parsing the header.
            channel = None if not data or data[0] & 0x80 else routes.get(data[1 : 1 + _CID_LENGTH])
            if channel is None:
                try:
                    header = pull_quic_header(Buffer(data=data), host_cid_length=_CID_LENGTH)
                except ValueError:
                    continue
                channel = routes.get(header.destination_cid)
            if channel is None:
                channel = self._new_connection(header, data, addr)
                if channel is None:
                    continue
            per_channel.setdefault(channel, []).append((data, addr))
        for channel, datagrams in per_channel.items():
            channel.datagrams_received(datagrams)

    def _new_connection(self, header: Any, data: bytes, addr: NetworkAddress) -> QUICChannel | None:
        supported = self._configuration.supported_versions
        if (
            header.packet_type != QuicPacketType.VERSION_NEGOTIATION
            and header.version is not None
            and header.version not in supported
        ):
            # Never answer a version negotiation packet with another (no reflection loops).
            self._io.send(
                [
                    (
                        encode_quic_version_negotiation(
                            source_cid=header.destination_cid,
                            destination_cid=header.source_cid,
                            supported_versions=supported,
                        ),
                        addr,
                    )
                ]
            )
            return None
        if header.packet_type != QuicPacketType.INITIAL or len(data) < _SMALLEST_INITIAL:
            return None
        if not self._listener.has_room():
            return None  # like a full accept queue; the client retransmits
        original_cid = header.destination_cid
        retry_cid: bytes | None = None
        if self._retry is not None:
            now = self._loop.time()
            if not header.token:
                retry_cid = os.urandom(_CID_LENGTH)
                token = self._retry.create_token(
                    address=addr,
                    original_destination_connection_id=header.destination_cid,
                    retry_source_connection_id=retry_cid,
                    now=now,
                )
                packet = encode_quic_retry(
                    version=header.version,
                    source_cid=retry_cid,
                    destination_cid=header.source_cid,
                    original_destination_cid=header.destination_cid,
                    retry_token=token,
                )
                self.retries_sent += 1
                self._io.send([(packet, addr)])
                return None
            try:
                original_cid = self._retry.validate_token(
                    address=addr,
                    destination_cid=header.destination_cid,
                    token=header.token,
                    now=now,
                )
            except ValueError:
                return None  # forged, expired or for another address: ignore it
            retry_cid = header.destination_cid
        engine = new_engine(
            self._options,
            configuration=self._configuration,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=retry_cid,
            session_ticket_fetcher=lambda label: self._tickets.pop(label, None),
            session_ticket_handler=self._keep_ticket,
        )
        ctx = self._listener.attempt_context()
        channel = QUICChannel(
            self._options,
            engine,
            ctx,
            send=self._io.send,
            local_address=self._local,
            remote_address=addr,
            on_closed=self._forget,
        )
        channel.on_connection_id = lambda event: self._connection_id(channel, event)
        channel.socket_stats = self._io.stats
        self._routes[header.destination_cid] = channel
        self._routes[engine.host_cid] = channel
        self._channels.add(channel)
        self._listener.accepted(channel, ctx)
        return channel

    def _keep_ticket(self, ticket: SessionTicket) -> None:
        self._tickets[ticket.ticket] = ticket
        while len(self._tickets) > _TICKETS_KEPT:
            self._tickets.popitem(last=False)

    def _connection_id(self, channel: QUICChannel, event: events.QuicEvent) -> None:
        if isinstance(event, events.ConnectionIdIssued):
            self._routes[event.connection_id] = channel
        elif (
            isinstance(event, events.ConnectionIdRetired)
            and self._routes.get(event.connection_id) is channel
        ):
            del self._routes[event.connection_id]

    def _forget(self, channel: QUICChannel) -> None:
        if channel not in self._channels:
            return
        self._channels.discard(channel)
        for cid in [cid for cid, c in self._routes.items() if c is channel]:
            del self._routes[cid]
