"""Correct use of the core API: must pass ``mypy --strict``.

Nothing here runs; mypy checks it (tests/test_typing.py and the normal run).
"""

from __future__ import annotations

from typing import assert_type

import netconn as nc
from netconn.testing import ByteStream


async def client() -> None:
    ep = nc.Endpoint.host_port("localhost", 443)
    tls = nc.Connection(ep, nc.TLS(nc.TCP(no_delay=True), alpn=["h2"]))
    assert_type(tls, nc.Connection[nc.TLS])
    tls.on_state_update(lambda conn, state: None).on_path_update(lambda conn, path: None)
    tls.on_viability_update(lambda conn, viable: None)
    tls.on_better_path_update(lambda conn, better: None)
    async with tls as conn:
        assert_type(conn, nc.Connection[nc.TLS])
        await conn.send(b"hello", is_complete=True)
        await conn.send(bytearray(b"x"))
        await conn.send(memoryview(b"x"))
        assert_type(await conn.receive(at_least=1, at_most=65536), bytes)
        assert_type(await conn.receive_exactly(4), bytes)
        assert_type(conn.receive_complete, bool)
        assert_type(conn.negotiated_alpn, str | None)
        assert_type(conn.buffered_bytes, tuple[int, int])

    udp = nc.Connection(ep, nc.UDP())
    await udp.send(b"datagram")
    message = await udp.receive_message()
    assert_type(message, nc.Message)
    assert_type(message.content, bytes)
    assert_type(udp.maximum_datagram_size, int)
    async for m in udp.messages():
        assert_type(m, nc.Message)


def on_state(conn: nc.Connection[nc.TCP], state: nc.State) -> None:
    match state:
        case nc.Waiting(error=error) | nc.Failed(error=error):
            assert_type(error, nc.NetconnError)
        case nc.Ready() | nc.Setup() | nc.Preparing() | nc.Cancelled():
            pass


async def echo(conn: nc.Connection[nc.StreamProtocol]) -> None:
    """Covariance: any byte-stream connection (TCP, TLS) fits."""
    while data := await conn.receive():
        await conn.send(data)


async def server(certs: tuple[str, str]) -> None:
    tcp = nc.Connection(nc.Endpoint.host_port("127.0.0.1", 7), nc.TCP())
    tcp.on_state_update(on_state)
    await echo(tcp)
    await echo(nc.Connection(nc.Endpoint.host_port("::1", 7), nc.TLS()))
    listener = nc.Listener(nc.TLS(certificate=certs), port=0)
    async with listener:
        assert_type(listener.port, int)
        async for conn in listener:
            assert_type(conn, nc.Connection[nc.TLS])
            await echo(conn)
        await listener.run(echo)
    flows = nc.Listener(nc.UDP())
    flows.on_new_connection(lambda conn: None)
    async for flow in flows:
        assert_type(await flow.receive_message(), nc.Message)


def conformance(tcp: nc.Connection[nc.TCP], tls: nc.Connection[nc.TLS]) -> None:
    """Connections are what netconn.testing checks."""
    streams: list[ByteStream] = [tcp, tls]
    assert streams
