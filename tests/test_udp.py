"""UDP: flows, the listener's demultiplexing, datagram size, the bounded receive queue."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from conftest import timeout
from loopback import free_port, record_states, wait_until

import netconn as nc

UDPPair = tuple[nc.Connection[nc.UDP], nc.Connection[nc.UDP]]


@asynccontextmanager
async def udp_pair(
    client: nc.UDP | None = None, server: nc.UDP | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[UDPPair]:
    """A ready UDP client flow and the listener's flow for it (made by a first datagram)."""
    async with nc.Listener(server or nc.UDP(), host=host) as listener:
        conn = nc.Connection(nc.Endpoint.host_port(host, listener.port), client or nc.UDP())
        try:
            async with asyncio.timeout(timeout(5)):
                await conn.send(b"hello")
                flow = await listener.accept()
                assert flow is not None
                assert (await flow.receive_message()).content == b"hello"
            yield conn, flow
        finally:
            conn.force_cancel()


async def test_states_and_echo() -> None:
    async with udp_pair() as (client, server):
        assert isinstance(client.state, nc.Ready)
        assert isinstance(server.state, nc.Ready)
        assert server.remote_endpoint == client.local_endpoint
        await server.send(b"world")
        message = await client.receive_message()
        assert message.content == b"world" and message.is_complete
        states = record_states(client)
        await client.cancel()
        assert states == ["Cancelled"]
        with pytest.raises(nc.InvalidState):
            await client.receive_message()


async def test_flows_from_several_clients_are_kept_apart() -> None:
    async with nc.Listener(nc.UDP(), host="127.0.0.1") as listener:
        ep = nc.Endpoint.host_port("127.0.0.1", listener.port)
        clients = [nc.Connection(ep, nc.UDP()) for _ in range(4)]
        try:
            async with asyncio.timeout(timeout(10)):
                for round_ in range(5):
                    for number, client in enumerate(clients):
                        await client.send(f"{number}:{round_}".encode())
                flows: dict[int, nc.Connection[nc.UDP]] = {}
                for _ in clients:
                    flow = await listener.accept()
                    assert flow is not None
                    first = (await flow.receive_message()).content.decode()
                    number = int(first.split(":")[0])
                    assert first == f"{number}:0"
                    flows[number] = flow
                assert sorted(flows) == [0, 1, 2, 3]
                assert len(listener.connections) == 4
                for number, flow in flows.items():
                    assert flow.remote_endpoint == clients[number].local_endpoint
                    rest = [(await flow.receive_message()).content for _ in range(4)]
                    assert rest == [f"{number}:{r}".encode() for r in range(1, 5)]
                    await flow.send(f"for {number}".encode())
                for number, client in enumerate(clients):
                    reply = await client.receive_message()
                    assert reply.content == f"for {number}".encode()
        finally:
            for client in clients:
                client.force_cancel()


@pytest.mark.parametrize(("host", "limit"), [("127.0.0.1", 65507), ("::1", 65527)])
async def test_maximum_datagram_size(host: str, limit: int) -> None:
    async with udp_pair(host=host) as (client, server):
        assert client.maximum_datagram_size == limit
        assert server.maximum_datagram_size == limit
        for sender, receiver in ((client, server), (server, client)):
            with pytest.raises(nc.MessageTooLarge) as caught:
                await sender.send(bytes(limit + 1))
            assert (caught.value.size, caught.value.maximum) == (limit + 1, limit)
            assert isinstance(sender.state, nc.Ready)
            largest = bytes(range(256)) * (limit // 256) + bytes(limit % 256)
            await sender.send(largest)
            async with asyncio.timeout(timeout(5)):
                assert (await receiver.receive_message()).content == largest


async def test_receive_queue_is_bounded() -> None:
    """Datagrams beyond ``receive_queue`` unread ones are dropped, not buffered."""
    async with udp_pair(client=nc.UDP(receive_queue=8)) as (client, server):
        for index in range(20):
            await server.send(index.to_bytes(100, "big"))
        await wait_until(lambda: client.buffered_bytes[1] == 800)
        for _ in range(50):  # let the loop read (and drop) the other twelve
            await asyncio.sleep(0)
        assert client.buffered_bytes == (0, 800)
        async with asyncio.timeout(timeout(5)):
            got = [
                int.from_bytes((await client.receive_message()).content, "big") for _ in range(8)
            ]
            assert got == list(range(8))
            await server.send(b"marker")
            assert (await client.receive_message()).content == b"marker"


async def test_listener_flow_queue_is_bounded() -> None:
    async with udp_pair(server=nc.UDP(receive_queue=4)) as (client, server):
        for index in range(10):
            await client.send(bytes([index]))
        await wait_until(lambda: server.buffered_bytes[1] == 4)
        for _ in range(50):
            await asyncio.sleep(0)
        got = [(await server.receive_message()).content for _ in range(4)]
        assert got == [bytes([i]) for i in range(4)]
        await client.send(b"marker")
        async with asyncio.timeout(timeout(5)):
            assert (await server.receive_message()).content == b"marker"


async def _send_until_inviable(conn: nc.Connection[nc.UDP], viable: list[bool]) -> None:
    """Send to a port nobody listens on until the ICMP errors make the flow not viable."""
    for _ in range(100):
        await conn.send(b"anyone?")
        if viable[-1:] == [False]:
            return
        await asyncio.sleep(0.01)


async def test_unreachable_port_makes_the_flow_not_viable() -> None:
    """ICMP port unreachable does not end a UDP flow; it reports it not viable."""
    conn = nc.Connection(nc.Endpoint.host_port("127.0.0.1", free_port()), nc.UDP())
    viable: list[bool] = []
    conn.on_viability_update(lambda c, v: viable.append(v))
    try:
        async with asyncio.timeout(timeout(5)):
            await conn.wait_ready()
            await _send_until_inviable(conn, viable)
        assert viable == [True, False]
        assert isinstance(conn.state, nc.Ready)
    finally:
        await conn.cancel()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_flow_is_viable_again_once_the_peer_answers(loop: str) -> None:
    """After an ICMP error, the next datagram from the peer reports the flow viable,
    once, and is delivered (on uvloop the transport hands datagrams to the flow itself)."""
    import uvloop

    async def main() -> tuple[list[bool], list[bytes]]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            port = peer.getsockname()[1]
            peer.close()  # nobody there: the first sends draw port unreachable
            endpoint = nc.Endpoint.host_port("127.0.0.1", port)
            quick = nc.Parameters(viability_debounce=0.02)
            conn = nc.Connection(endpoint, nc.UDP(), quick)
            viable: list[bool] = []
            conn.on_viability_update(lambda c, v: viable.append(v))
            try:
                async with asyncio.timeout(timeout(5)):
                    await conn.wait_ready()
                    await _send_until_inviable(conn, viable)
                    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as back:
                        back.bind(("127.0.0.1", port))
                        local = conn.local_endpoint
                        assert local is not None
                        for data in (b"here", b"still here"):
                            back.sendto(data, (local.host, local.port))
                        got = [(await conn.receive_message()).content for _ in range(2)]
                    await wait_until(lambda: len(viable) == 3)  # reported after the debounce
                    await asyncio.sleep(0.05)  # and only once
                return viable, got
            finally:
                await conn.cancel()

    if loop == "uvloop":
        viable, got = uvloop.run(main())
    else:
        viable, got = asyncio.run(main())
    assert viable == [True, False, True]
    assert got == [b"here", b"still here"]


async def test_server_flow_cancel_forgets_the_flow() -> None:
    async with nc.Listener(nc.UDP(), host="127.0.0.1") as listener:
        conn = nc.Connection(nc.Endpoint.host_port("127.0.0.1", listener.port), nc.UDP())
        try:
            async with asyncio.timeout(timeout(5)):
                await conn.send(b"one")
                first = await listener.accept()
                assert first is not None
                await first.cancel()
                assert first not in listener.connections
                await conn.send(b"two")
                second = await listener.accept()
                assert second is not None and second is not first
                assert (await second.receive_message()).content == b"two"
        finally:
            await conn.cancel()


async def test_messages_iteration_ends_when_the_listener_closes() -> None:
    async with udp_pair() as (client, server):
        await client.send(b"a")
        await client.send(b"b")
        got: list[bytes] = []

        async def collect() -> None:
            async for message in server.messages():
                got.append(message.content)

        task = asyncio.create_task(collect())
        await wait_until(lambda: len(got) == 2)
        await server.cancel()
        async with asyncio.timeout(timeout(5)):
            await task
        assert got == [b"a", b"b"]


async def test_cancel_fails_a_pending_receive_and_ends_iteration() -> None:
    async with udp_pair() as (client, server):
        pending = asyncio.create_task(client.receive_message())
        got: list[bytes] = []

        async def collect() -> None:
            async for message in server.messages():
                got.append(message.content)

        iterating = asyncio.create_task(collect())
        for _ in range(3):
            await asyncio.sleep(0)
        await client.cancel()
        await server.cancel()
        async with asyncio.timeout(timeout(5)):
            with pytest.raises(nc.InvalidState, match="cancelled"):
                await pending
            await iterating  # ends quietly
        assert got == []


async def test_concurrent_receive_is_busy() -> None:
    async with udp_pair() as (client, _server):
        pending = asyncio.create_task(client.receive_message())
        await asyncio.sleep(0)
        with pytest.raises(nc.Busy):
            await client.receive_message()
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_cancelled_receive_loses_no_datagram(loop: str) -> None:
    """A receive cancelled while it waits leaves the flow as it was: the next
    receive gets the next datagram, and a new wait is not busy."""
    import uvloop

    async def main() -> list[bytes]:
        async with udp_pair() as (client, server), asyncio.timeout(timeout(5)):
            waiting = asyncio.create_task(server.receive_message())
            await asyncio.sleep(0)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await client.send(b"one")
            await client.send(b"two")
            return [(await server.receive_message()).content for _ in range(2)]

    run = uvloop.run if loop == "uvloop" else asyncio.run
    assert run(main()) == [b"one", b"two"]


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_burst_reaches_a_waiting_receiver_in_order(loop: str) -> None:
    """Datagrams read in one wake-up while a receiver waits: it gets the first
    after the read, the rest from the queue, in the order sent."""
    import uvloop

    async def main() -> list[bytes]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            endpoint = nc.Endpoint.host_port("127.0.0.1", peer.getsockname()[1])
            async with nc.Connection(endpoint, nc.UDP()) as conn, asyncio.timeout(timeout(5)):
                await conn.send(b"hello")
                _, address = peer.recvfrom(100)
                first = asyncio.create_task(conn.receive_message())
                await asyncio.sleep(0)  # it waits now
                for i in range(50):
                    peer.sendto(i.to_bytes(2, "big"), address)
                got = [(await first).content]
                got += [(await conn.receive_message()).content for _ in range(49)]
                return got

    run = uvloop.run if loop == "uvloop" else asyncio.run
    assert run(main()) == [i.to_bytes(2, "big") for i in range(50)]


async def test_listener_cancel_closes_every_flow() -> None:
    listener = nc.Listener(nc.UDP(), host="127.0.0.1")
    await listener.start()
    ep = nc.Endpoint.host_port("127.0.0.1", listener.port)
    clients = [nc.Connection(ep, nc.UDP()) for _ in range(3)]
    try:
        async with asyncio.timeout(timeout(5)):
            for client in clients:
                await client.send(b"hi")
            taken = await listener.accept()
            assert taken is not None
            await wait_until(lambda: len(listener.connections) == 3)
            flows = listener.connections
            await listener.cancel()
            assert all(isinstance(flow.state, nc.Cancelled) for flow in flows)
            assert await listener.accept() is None
            with pytest.raises(nc.InvalidState):
                await taken.receive_message()
    finally:
        for client in clients:
            client.force_cancel()
        await listener.cancel()


async def test_ipv4_flow_on_a_dual_stack_listener() -> None:
    """An IPv4 client of a listener bound to every address gets IPv4's datagram limit."""
    async with nc.Listener(nc.UDP()) as listener:
        conn = nc.Connection(nc.Endpoint.host_port("127.0.0.1", listener.port), nc.UDP())
        try:
            async with asyncio.timeout(timeout(5)):
                await conn.send(b"hello")
                flow = await listener.accept()
                assert flow is not None
                assert flow.maximum_datagram_size == 65507
                largest = bytes(65507)
                await flow.send(largest)
                assert (await conn.receive_message()).content == largest
        finally:
            await conn.cancel()


class StalledTransport(asyncio.DatagramTransport):
    """A shared-socket transport that records datagrams and never sends them."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock
        self.sent: list[bytes] = []

    def get_extra_info(self, name: str, default: object = None) -> object:
        return self.sock if name == "socket" else default

    def sendto(self, data: Any, addr: Any = None) -> None:
        self.sent.append(bytes(data))

    def is_closing(self) -> bool:
        return False


async def test_every_sender_waiting_for_room_resumes() -> None:
    """Concurrent datagram senders blocked on a full send buffer all resume, none hangs."""
    from netconn.stacks.base import AttemptContext
    from netconn.stacks.udp import UDPChannel

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        ctx = AttemptContext(None, nc.Parameters(), on_lost=lambda error: None)
        channel = UDPChannel(nc.Parameters(), ctx, 8)
        transport = StalledTransport(sock)
        channel.attach(transport, ("127.0.0.1", 9))
        channel.set_write_paused(True)
        senders = [asyncio.ensure_future(channel.send_message(bytes([i]), True)) for i in range(3)]
        for _ in range(3):
            await asyncio.sleep(0)
        assert not any(s.done() for s in senders)
        senders[0].cancel()  # one gives up; the others keep waiting
        await asyncio.sleep(0)
        channel.set_write_paused(False)
        async with asyncio.timeout(timeout(5)):
            await asyncio.gather(*senders[1:])
        assert transport.sent == [b"\x00", b"\x01", b"\x02"]


async def test_closing_wakes_senders_waiting_for_room() -> None:
    from netconn.stacks.base import AttemptContext
    from netconn.stacks.udp import UDPChannel

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        ctx = AttemptContext(None, nc.Parameters(), on_lost=lambda error: None)
        channel = UDPChannel(nc.Parameters(), ctx, 8)
        channel.attach(StalledTransport(sock), ("127.0.0.1", 9))
        channel.set_write_paused(True)
        sender = asyncio.ensure_future(channel.send_message(b"x", True))
        await asyncio.sleep(0)
        channel.abort()
        async with asyncio.timeout(timeout(5)):
            await sender  # the datagram was handed over before the wait
