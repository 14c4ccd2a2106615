"""The client side: one UDP socket per connection, connected to the server."""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import TYPE_CHECKING, Any

from ..endpoint import Address
from ..errors import ConnectionRefused, HostUnreachable, mapped
from ..stacks.base import AttemptContext
from ..stacks.sockets import apply_parameters, check_path
from ._aioquic import AioquicEngine, new_aioquic_engine
from ._channel import QUICChannel
from ._udp import DatagramSocket

if TYPE_CHECKING:
    from ..stacks.quic import QUIC

__all__ = ["connect", "new_engine"]


def new_engine(options: QUIC, **kwargs: Any) -> AioquicEngine:
    """The options' engine with their stream limits and receive windows.

    Every engine answers the channel's questions as :class:`AioquicEngine`
    does (qh3's is typed as it).
    """
    if options.engine == "qh3":
        from ._qh3 import new_qh3_engine

        engine: AioquicEngine = new_qh3_engine(options, **kwargs)
        return engine
    return new_aioquic_engine(options, **kwargs)


async def connect(options: QUIC, ctx: AttemptContext, address: Address) -> QUICChannel:
    """Open a socket, run the handshake, return the channel.

    With ``options.early_data`` and a ticket that allows 0-RTT, returns as
    soon as the early keys exist; the handshake finishes in the background.
    Cancelling aborts the attempt and closes the socket.
    """
    check_path(address, ctx.parameters)
    server_name = options.server_name
    if server_name is None:
        server_name = ctx.endpoint.host if ctx.endpoint is not None else address.host
    key = (server_name, address.port)
    config = options.configuration(is_client=True, server_name=server_name)
    store = options.ticket_store
    if store is not None:
        config.session_ticket = store.get(key)
    engine = new_engine(
        options,
        configuration=config,
        session_ticket_handler=(lambda ticket: store.put(key, ticket))
        if store is not None
        else None,
    )
    try:
        with mapped(f"connect to {address}"):
            sock = socket.socket(address.family, socket.SOCK_DGRAM)
    except BaseException:
        if config.secrets_log_file is not None:
            config.secrets_log_file.close()
        raise
    try:
        with mapped(f"connect to {address}"):
            apply_parameters(sock, ctx.parameters, address.family)
            sock.connect(address.sockaddr)
            peer = sock.getpeername()
            local = Address.from_sockaddr(sock.getsockname())
        io: DatagramSocket | None = None

        def closed(channel: QUICChannel) -> None:
            if io is not None:
                io.close()

        channel = QUICChannel(
            options,
            engine,
            ctx,
            send=lambda packets: io.send(packets) if io is not None else None,
            local_address=local,
            remote_address=peer,
            on_closed=closed,
            server_name=server_name,
        )

        def socket_error(exc: OSError) -> None:
            if exc.errno == errno.ECONNREFUSED and not channel._handshake_complete:
                channel._finish(ConnectionRefused(f"connect to {address}: nothing listens there"))
            elif (
                exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH)
                and not channel._handshake_complete
            ):
                channel._finish(HostUnreachable(f"connect to {address}: {exc.strerror}"))
            # After the handshake an ICMP error says little: loss recovery and
            # the viability check decide.

        io = DatagramSocket(sock, channel.datagrams_received, socket_error, connected=True)
        channel.socket_stats = io.stats
    except BaseException:
        sock.close()
        if config.secrets_log_file is not None:
            config.secrets_log_file.close()
        raise
    try:
        engine.connect(peer, now=asyncio.get_running_loop().time())
        channel.transmit()
        if not (options.early_data and channel.can_send_early):
            await channel.wait_established()
    except BaseException:
        channel.abort()
        raise
    return channel
