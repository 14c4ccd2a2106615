"""QUIC in the namespace lab: the address race and NAT rebinding.

Every test builds its own client/router/server namespaces (netconn.lab) and
skips without root; CI runs as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
from collections.abc import AsyncIterator, Iterator

import pytest
from conftest import Certs, timeout
from quic_helpers import client_options, server_options
from racing_checks import assert_ipv4_won_one_stagger_later

import netconn as nc
from netconn.lab import Lab
from netconn.lab.fixtures import lab_fixture


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


async def digest_streams(conn: nc.Connection[nc.QUIC]) -> None:
    """Answer every inbound stream with the SHA-256 of what it carried, then its FIN."""

    async def digest(stream: nc.QUICStream) -> None:
        hashed = hashlib.sha256()
        while data := await stream.receive(1, 1 << 20):
            hashed.update(data)
        await stream.send(hashed.digest(), is_complete=True)

    with contextlib.suppress(nc.NetconnError):
        async with asyncio.TaskGroup() as group:
            async for stream in conn.inbound_streams():
                group.create_task(digest(stream))


@contextlib.asynccontextmanager
async def quic_server(
    lab: Lab, certs: Certs, accepted: asyncio.Queue[nc.Connection[nc.QUIC]]
) -> AsyncIterator[nc.Listener[nc.QUIC]]:
    """A QUIC listener in the server namespace (every address, one port)."""
    with lab.inside(lab.server):
        listener = nc.Listener(server_options(certs), port=0)
        await listener.start()

    async def handler(conn: nc.Connection[nc.QUIC]) -> None:
        accepted.put_nowait(conn)
        await digest_streams(conn)

    task = asyncio.create_task(listener.run(handler))
    try:
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await listener.cancel()


def ipv4_of(address: nc.Address | None) -> str | None:
    """The IPv4 address of ``address``, also when a dual-stack socket reports it v4-mapped."""
    if address is None:
        return None
    ip = ipaddress.ip_address(address.host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def udp6_sockets() -> list[str]:
    """The IPv6 UDP sockets of the calling thread's namespace."""
    with open("/proc/thread-self/net/udp6") as f:
        return f.read().splitlines()[1:]


async def test_a_blackholed_ipv6_address_loses_the_quic_race_to_ipv4(
    lab: Lab, certs: Certs
) -> None:
    stagger = 0.25
    lab.blackhole(lab.server.ipv6)
    accepted: asyncio.Queue[nc.Connection[nc.QUIC]] = asyncio.Queue()
    async with quic_server(lab, certs, accepted) as listener:
        with lab.inside(lab.client):
            conn = nc.Connection(
                lab.endpoint(lab.server, listener.port),
                client_options(certs),
                nc.Parameters(connection_attempt_delay=stagger, attempt_timeout=10.0),
            )
            async with asyncio.timeout(timeout(15)), conn:
                assert conn.remote_endpoint is not None
                assert conn.remote_endpoint.host == lab.server.ipv4
                assert_ipv4_won_one_stagger_later(conn.establishment_report, lab.server, stagger)
                # The losing attempt's socket is closed, not left waiting for an answer.
                assert udp6_sockets() == []
                stream = await conn.open_stream()
                await stream.send(b"v4", is_complete=True)
                digest = await stream.receive_exactly(32)
                assert digest == hashlib.sha256(b"v4").digest()
    assert accepted.qsize() == 1


async def test_a_quic_transfer_survives_nat_rebinding(lab: Lab, certs: Certs) -> None:
    lab.enable_nat()
    accepted: asyncio.Queue[nc.Connection[nc.QUIC]] = asyncio.Queue()
    payload = os.urandom(4 << 20)
    chunk = 256 << 10
    async with quic_server(lab, certs, accepted) as listener:
        with lab.inside(lab.client):
            target = nc.Endpoint.host_port(lab.server.ipv4, listener.port)
            async with (
                asyncio.timeout(timeout(30)),
                nc.Connection(target, client_options(certs)) as conn,
            ):
                stream = await conn.open_stream()
                await stream.send(payload[:chunk])
                # The server sees the client through the NAT, at the router's address.
                server_side = await accepted.get()
                seen: list[nc.Path] = []
                server_side.on_path_update(lambda c, path: seen.append(path))
                before = server_side.remote_endpoint
                assert before is not None and ipv4_of(before) == lab.router.interfaces["r1"][0]
                for offset in range(chunk, len(payload), chunk):
                    if offset == len(payload) // 4:
                        lab.rebind()  # a new source port
                    if offset == len(payload) // 2:
                        lab.rebind(new_address="10.77.2.3")  # a new source address too
                    await stream.send(payload[offset : offset + chunk])
                await stream.close()
                digest = await stream.receive_exactly(32)
                assert digest == hashlib.sha256(payload).digest()
                assert isinstance(conn.state, nc.Ready)
                # The server followed the client to its new port, then its new address.
                after = server_side.remote_endpoint
                assert ipv4_of(after) == "10.77.2.3"
                moved = {(ipv4_of(p.remote), p.remote.port) for p in seen if p.remote is not None}
                assert (ipv4_of(before), before.port) not in moved
                assert len(moved) >= 2, seen
                assert isinstance(server_side.state, nc.Ready)
