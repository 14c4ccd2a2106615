"""TCP: bulk data, half-close, options, local endpoints, errors mid-connection.

Ordering, receive cancellation, Busy and the buffer bound over TCP are
checked in both roles by tests/test_testing.py.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
import weakref

import netns
import pytest
from conftest import timeout
from loopback import free_port, oriented, stream_pair, transfer, wait_until

import netconn as nc


@pytest.mark.parametrize("role", ["client", "server"])
async def test_100_mb_transfer(role: str) -> None:
    async with stream_pair(nc.TCP(), nc.TCP()) as pair:
        sender, receiver = oriented(pair, role)
        async with asyncio.timeout(timeout(60)):
            await transfer(sender, receiver, 100 * 1000 * 1000)


@pytest.mark.parametrize("role", ["client", "server"])
async def test_half_close_then_answer(role: str) -> None:
    """After our FIN the peer reads to EOF and can still answer."""
    async with stream_pair(nc.TCP(), nc.TCP()) as pair:
        subject, peer = oriented(pair, role)
        await subject.send(b"question", is_complete=True)
        assert await peer.receive(1, 100) == b"question"
        assert await peer.receive() == b""
        assert peer.receive_complete
        with pytest.raises(nc.InvalidState):
            await subject.send(b"more")
        await peer.send(b"answer", is_complete=True)
        assert await subject.receive_exactly(6) == b"answer"
        assert await subject.receive() == b""
        assert isinstance(subject.state, nc.Ready) and isinstance(peer.state, nc.Ready)


async def test_ipv6_loopback() -> None:
    async with stream_pair(nc.TCP(), nc.TCP(), host="::1") as (client, server):
        assert client.remote_endpoint is not None
        assert client.remote_endpoint.family == socket.AF_INET6
        await client.send(b"six")
        assert await server.receive_exactly(3) == b"six"


def test_options_reach_the_socket() -> None:
    options = nc.TCP(
        no_delay=True,
        keepalive=True,
        keepalive_idle=7,
        keepalive_interval=3,
        keepalive_count=4,
        connection_drop_time=2.5,
        maximum_segment_size=1200,
    )
    with socket.socket() as sock:
        options.configure(sock)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2500
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG) == 1200
    with socket.socket() as sock:
        nc.TCP().configure(sock)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0


async def test_local_endpoint_and_service_class() -> None:
    port = free_port()
    params = nc.Parameters(
        local_endpoint=nc.Endpoint.host_port("127.0.0.1", port),
        service_class=nc.ServiceClass.INTERACTIVE_VOICE,
    )
    async with nc.Listener(nc.TCP(), host="127.0.0.1") as listener:
        ep = nc.Endpoint.host_port("127.0.0.1", listener.port)
        async with asyncio.timeout(timeout(5)), nc.Connection(ep, nc.TCP(), params) as conn:
            assert conn.local_endpoint == nc.Address("127.0.0.1", port)
            server = await listener.accept()
            assert server is not None
            assert server.remote_endpoint == nc.Address("127.0.0.1", port)


async def test_send_after_peer_reset_raises_a_netconn_error() -> None:
    async with stream_pair(nc.TCP(), nc.TCP()) as (client, server):
        server.force_cancel()
        with pytest.raises(nc.ConnectionClosed):
            async with asyncio.timeout(timeout(5)):
                await client.receive()
        with pytest.raises(nc.InvalidState) as caught:
            await client.send(b"x")
        assert isinstance(caught.value.__cause__, nc.ConnectionClosed)


async def test_reset_by_a_plain_socket_peer() -> None:
    """A foreign peer's RST (not netconn's) fails the connection with ConnectionClosed."""
    with socket.socket() as plain:
        plain.bind(("127.0.0.1", 0))
        plain.listen(1)
        plain.setblocking(False)
        loop = asyncio.get_running_loop()
        ep = nc.Endpoint.host_port("127.0.0.1", plain.getsockname()[1])
        conn = nc.Connection(ep, nc.TCP())
        try:
            async with asyncio.timeout(timeout(5)):
                await conn.wait_ready()
                accepted, _ = await loop.sock_accept(plain)
                with accepted:
                    await conn.send(b"hello")
                    assert await loop.sock_recv(accepted, 5) == b"hello"
                    accepted.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                with pytest.raises(nc.ConnectionClosed):
                    await conn.receive()
            assert isinstance(conn.state, nc.Failed)
        finally:
            await conn.cancel()


@pytest.mark.parametrize(
    "options",
    [
        nc.TCP(connection_drop_time=1.0),
        nc.TCP(keepalive=True, keepalive_idle=1, keepalive_interval=1, keepalive_count=2),
    ],
    ids=["user-timeout", "keepalive"],
)
async def test_dead_peer_fails_the_connection(options: nc.TCP) -> None:
    """In a private namespace the peer goes silent: the option ends the connection."""
    with netns.namespace() as name, netns.inside(name):
        async with nc.Listener(nc.TCP(), host="127.0.0.1") as listener:
            conn = nc.Connection(nc.Endpoint.host_port("127.0.0.1", listener.port), options)
            try:
                async with asyncio.timeout(timeout(20)):
                    await conn.wait_ready()
                    assert await listener.accept() is not None
                    netns.blackhole_tcp_port(name, listener.port)
                    if options.connection_drop_time is not None:
                        await conn.send(b"never acknowledged")
                    await wait_until(lambda: isinstance(conn.state, nc.Failed), 15)
                match conn.state:
                    case nc.Failed(error=error):
                        assert isinstance(error, nc.ConnectionTimeout), error
                    case other:
                        raise AssertionError(other)
            finally:
                await conn.cancel()


def test_closed_event_loops_are_freed() -> None:
    """Nothing netconn keeps per loop (the viability poller, say) holds a closed loop alive."""
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def connect_once() -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        async with nc.Listener(nc.TCP(), host="127.0.0.1") as listener:
            endpoint = nc.Endpoint.host_port("127.0.0.1", listener.port)
            async with nc.Connection(endpoint, nc.TCP()) as conn:
                await conn.wait_ready(timeout=timeout(5))
                accepted = await listener.accept()
                assert accepted is not None
                async with accepted:
                    await conn.send(b"x")
                    assert await accepted.receive(1, 1) == b"x"

    for _ in range(3):
        asyncio.run(connect_once())
    gc.collect()
    # The thread's last loop may stay referenced until another one starts.
    assert [ref() is None for ref in loops[:-1]] == [True, True]
