"""The lab's UDP relay over loopback: delay, loss, reordering, corruption, rebinding,
its schedule of faults and its trace."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from conftest import timeout

from netconn.lab.relay import Schedule, Trace, UDPRelay


class Recorder(asyncio.DatagramProtocol):
    """Keeps what arrives, with the sender; echoes if asked."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.received: list[tuple[bytes, Any]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's datagram transports do not all subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append((data, addr))
        if self.echo and self.transport is not None:
            self.transport.sendto(data, addr)


@contextlib.asynccontextmanager
async def setup(
    schedule: Schedule | None = None, trace: Trace | None = None
) -> AsyncIterator[tuple[UDPRelay, Recorder, Recorder]]:
    """An echo server, a relay in front of it, and a client connected to the relay."""
    loop = asyncio.get_running_loop()
    server_t, server = await loop.create_datagram_endpoint(
        lambda: Recorder(echo=True), local_addr=("127.0.0.1", 0)
    )
    upstream = server_t.get_extra_info("sockname")
    relay = await UDPRelay(upstream, seed=7, schedule=schedule, trace=trace).start()
    client_t, client = await loop.create_datagram_endpoint(
        lambda: Recorder(echo=False), remote_addr=relay.address
    )
    try:
        yield relay, server, client
    finally:
        client_t.close()
        relay.close()
        server_t.close()


def send_numbered(client: Recorder, count: int) -> None:
    """Send ``count`` datagrams at once, each its number in two bytes."""
    assert client.transport is not None
    for i in range(count):
        client.transport.sendto(i.to_bytes(2, "big"))


def numbers(recorder: Recorder) -> list[int]:
    """The numbers of the datagrams ``recorder`` received, in order."""
    return [int.from_bytes(data, "big") for data, _ in recorder.received]


async def until(predicate: Callable[[], bool], seconds: float = 5) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout(seconds)
    while not predicate():
        if loop.time() > deadline:
            pytest.fail("timed out")
        await asyncio.sleep(0.005)


async def test_delay_applies_in_each_direction() -> None:
    async with setup() as (relay, _server, client):
        relay.to_upstream.delay = 0.05
        relay.to_client.delay = 0.05
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert client.transport is not None
        client.transport.sendto(b"ping")
        await until(lambda: len(client.received) == 1)
        assert loop.time() - start >= 0.1  # a lower bound: the relay never sends early
        assert client.received[0][0] == b"ping"
        assert relay.stats_to_upstream.forwarded == relay.stats_to_client.forwarded == 1


async def test_loss_and_blackhole() -> None:
    async with setup() as (relay, server, client):
        assert client.transport is not None
        relay.to_upstream.loss = 0.5
        send_numbered(client, 200)
        await until(lambda: relay.stats_to_upstream.dropped + len(server.received) == 200)
        assert 40 < len(server.received) < 160
        relay.to_upstream.loss = 0.0
        relay.to_upstream.blackhole = True
        before = len(server.received)
        client.transport.sendto(b"void")
        await asyncio.sleep(0.05)
        assert len(server.received) == before


async def test_reordering_changes_the_order() -> None:
    async with setup() as (relay, server, client):
        relay.to_upstream.reorder = 0.3
        relay.to_upstream.reorder_delay = 0.02
        send_numbered(client, 100)
        await until(lambda: len(server.received) == 100)
        order = numbers(server)
        assert sorted(order) == list(range(100)) and order != list(range(100))
        assert relay.stats_to_upstream.reordered > 0


async def test_corruption_flips_a_byte_near_the_start() -> None:
    async with setup() as (relay, server, client):
        assert client.transport is not None
        relay.to_upstream.corrupt = 1.0
        payload = bytes(100)
        client.transport.sendto(payload)
        await until(lambda: len(server.received) == 1)
        received = server.received[0][0]
        changed = [i for i in range(100) if received[i] != payload[i]]
        assert len(changed) == 1 and changed[0] < 50


async def test_rebind_gives_the_upstream_a_new_source_port() -> None:
    async with setup() as (relay, server, client):
        assert client.transport is not None
        client.transport.sendto(b"one")
        await until(lambda: len(client.received) == 1)
        first = server.received[0][1]
        relay.rebind()
        client.transport.sendto(b"two")
        await until(lambda: len(client.received) == 2)
        second = server.received[1][1]
        assert first[0] == second[0] and first[1] != second[1]
        assert [data for data, _ in client.received] == [b"one", b"two"]


async def test_held_datagrams_are_bounded() -> None:
    async with setup() as (relay, server, client):
        relay._max_queue = 10
        relay.to_upstream.delay = 0.2
        send_numbered(client, 50)
        await until(lambda: relay.stats_to_upstream.dropped + relay._held["up"] == 50)
        assert relay.stats_to_upstream.dropped == 40
        await until(lambda: len(server.received) == 10)


async def test_loss_never_drops_more_than_allowed_in_a_row() -> None:
    async with setup() as (relay, server, client):
        relay.to_upstream.loss = 0.9
        relay.to_upstream.max_lost_in_a_row = 3
        send_numbered(client, 200)
        await until(lambda: relay.stats_to_upstream.dropped + len(server.received) == 200)
        got = [-1, *numbers(server)]
        assert len(got) > 40  # far fewer at 90% loss without the limit
        assert max(b - a for a, b in itertools.pairwise(got)) == 4  # 3 lost, then one


async def test_corruption_never_hits_more_than_allowed_in_a_row() -> None:
    async with setup() as (relay, server, client):
        relay.to_upstream.corrupt = 0.9
        relay.to_upstream.max_corrupted_in_a_row = 3
        send_numbered(client, 200)
        await until(lambda: len(server.received) == 200)
        # Loopback keeps the order, so the i-th datagram received is the i-th sent.
        intact = [i for i, (data, _) in enumerate(server.received) if data == i.to_bytes(2, "big")]
        assert relay.stats_to_upstream.corrupted > 100  # 90% would corrupt ~180
        assert max(b - a for a, b in itertools.pairwise([-1, *intact])) <= 4


async def test_schedule_drops_numbered_client_datagrams_and_the_trace_stops_when_told() -> None:
    trace = Trace(until=lambda data: data == b"end")
    async with setup(Schedule(drop_from_client=frozenset({2})), trace) as (relay, _, client):
        assert client.transport is not None
        for data in (b"one", b"two", b"three", b"end", b"after"):
            client.transport.sendto(data)
            await asyncio.sleep(0.05)
        assert [data for data, _ in client.received] == [b"one", b"three", b"end", b"after"]
        assert relay.stats_to_upstream.dropped == 1
        assert trace.ended
        # Client datagrams whole, answers as sizes, up to and including b"end".
        expected = [(True, b"one"), (False, 3), (True, b"three"), (False, 5), (True, b"end")]
        assert trace.datagrams == expected


async def test_scheduled_rebinds_move_the_client_to_new_addresses() -> None:
    schedule = Schedule(rebind_every=10, max_rebinds=2, rebind_addresses=("127.0.0.2", "127.0.0.3"))
    async with setup(schedule) as (relay, server, client):
        send_numbered(client, 50)
        await until(lambda: len(server.received) == 50)
        hosts = [addr[0] for _, addr in server.received]
        assert hosts == ["127.0.0.1"] * 10 + ["127.0.0.2"] * 10 + ["127.0.0.3"] * 30
        assert relay.rebinds == 2 and len(relay.source_addresses) == 3


async def test_scheduled_blackout_happens_once_and_ends() -> None:
    async with setup(Schedule(blackout_after=5, blackout_for=0.5)) as (relay, _, client):
        send_numbered(client, 10)
        await asyncio.sleep(0.8)
        # The 6th answer started it: each later datagram is lost one way or the other.
        assert len(client.received) == 5
        assert relay.stats_to_client.dropped + relay.stats_to_upstream.dropped == 5
        send_numbered(client, 10)
        await until(lambda: len(client.received) == 15)  # and it did not come back
