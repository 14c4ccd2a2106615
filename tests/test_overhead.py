"""What keeps netconn's per-connection and per-packet overhead low, checked without timing."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvloop
from conftest import timeout

import netconn as nc
from netconn.stacks.udp import UDPChannel


async def test_a_udp_flow_reads_a_burst_in_one_wake_up() -> None:
    """Datagrams already queued in the kernel are read in batches, not one per loop turn."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        endpoint = nc.Endpoint.host_port("127.0.0.1", peer.getsockname()[1])
        async with nc.Connection(endpoint, nc.UDP()) as conn:
            await conn.send(b"hello")
            _, client = peer.recvfrom(100)
            for i in range(200):
                peer.sendto(i.to_bytes(2, "big"), client)
            channel: Any = conn._channel
            assert isinstance(channel, UDPChannel)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            # asyncio's own transport would hold one or two by now.
            assert channel.pending >= 64
            async with asyncio.timeout(timeout(5)):
                got = [(await conn.receive_message()).content for _ in range(200)]
            assert got == [i.to_bytes(2, "big") for i in range(200)]


def test_uvloop_handler_clean_up_after_a_peer_reset() -> None:
    """A handler failing on a reset connection is aborted without a foreign exception."""

    async def main() -> list[BaseException]:
        failures: list[BaseException] = []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: failures.append(context["exception"]))

        async def handler(conn: nc.Connection[nc.TCP]) -> None:
            try:
                while await conn.receive(1, 100):
                    pass
            except nc.ConnectionClosed:
                try:
                    conn.force_cancel()  # what Listener does when a handler raises
                except Exception as exc:
                    failures.append(exc)

        listener = nc.Listener(nc.TCP(), host="127.0.0.1")
        async with listener:
            task = asyncio.create_task(listener.run(handler))
            endpoint = nc.Endpoint.host_port("127.0.0.1", listener.port)
            for _ in range(5):
                conn = nc.Connection(endpoint, nc.TCP())
                await conn.wait_ready(timeout(5))
                await conn.send(b"x")
                conn.force_cancel()  # RST
            await asyncio.sleep(0.1)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            except BaseException as exc:  # an ExceptionGroup from the handlers
                failures.append(exc)
        return failures

    assert uvloop.run(main()) == []
