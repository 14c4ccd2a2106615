"""Misuse of the core API: each line marked ``# E: <code>`` must fail mypy with that code.

tests/test_typing.py checks that exactly these lines fail, with these codes.
"""

from __future__ import annotations

import netconn as nc

ep = nc.Endpoint.host_port("localhost", 443)


async def wrong_protocol_methods(
    tcp: nc.Connection[nc.TCP], tls: nc.Connection[nc.TLS], udp: nc.Connection[nc.UDP]
) -> None:
    await udp.receive()  # E: misc
    await udp.receive_exactly(4)  # E: misc
    await tcp.receive_message()  # E: misc
    await tls.receive_message()  # E: misc
    print(tcp.maximum_datagram_size)  # E: misc
    print(tls.maximum_datagram_size)  # E: misc
    print(udp.receive_complete)  # E: misc


async def wrong_arguments(tcp: nc.Connection[nc.TCP]) -> None:
    await tcp.send("text")  # E: arg-type
    await tcp.receive(at_least="1")  # E: arg-type
    tcp.on_state_update(lambda conn: None)  # E: arg-type, misc
    tcp.on_viability_update(print_path)  # E: arg-type
    nc.TCP(no_delay="yes")  # E: arg-type
    nc.TLS(nc.TCP(), alpn=b"h2")  # E: arg-type


def print_path(conn: nc.Connection[nc.TCP], path: nc.Path) -> None:
    print(path)


async def echo(conn: nc.Connection[nc.StreamProtocol]) -> None:
    await conn.send(await conn.receive())


async def wrong_stack(udp: nc.Connection[nc.UDP]) -> None:
    await echo(udp)  # E: arg-type
    tls: nc.Connection[nc.TLS] = nc.Connection(ep, nc.TCP())  # E: arg-type
    await tls.cancel()
    listener = nc.Listener(nc.UDP())
    async for conn in listener:
        await conn.receive()  # E: misc


def frozen_options(tcp: nc.TCP, state: nc.Waiting) -> None:
    tcp.no_delay = True  # E: misc
    state.error = nc.NetconnError()  # E: misc


async def tcp_handler(conn: nc.Connection[nc.TCP]) -> None:
    await conn.send(b"x")


async def wrong_handler_and_options() -> None:
    await nc.Listener(nc.UDP()).run(tcp_handler)  # E: arg-type
    nc.Parameters(send_buffer="1")  # E: arg-type
    conn = nc.Connection(ep, nc.TCP())
    conn.on_path_update(lambda c, path: print(path.bogus))  # E: attr-defined
