"""What keeps netconn's per-connection and per-packet overhead low, checked without timing."""

from __future__ import annotations

import asyncio
import contextlib
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


async def test_an_ip_literal_is_established_by_one_task() -> None:
    """No race task and no attempt task: the establishment task connects by itself."""
    listener = nc.Listener(nc.TCP(), host="127.0.0.1")
    async with listener:
        loop = asyncio.get_running_loop()
        made: list[str] = []
        factory = loop.get_task_factory()

        def counting(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
            made.append(coro.__qualname__)
            if factory is not None:
                return factory(loop, coro, **kwargs)
            return asyncio.Task(coro, loop=loop, **kwargs)

        loop.set_task_factory(counting)
        try:
            endpoint = nc.Endpoint.host_port("127.0.0.1", listener.port)
            conn = nc.Connection(endpoint, nc.TCP())
            conn.start()
            established = [name for name in made if name.startswith("Connection")]
            await conn.wait_ready(timeout(5))
        finally:
            loop.set_task_factory(factory)
        assert established == ["Connection._run"]
        assert [n for n in made if n.startswith(("Race", "Connection"))] == ["Connection._run"]
        await conn.cancel()


async def test_the_path_is_evaluated_on_first_use(monkeypatch: Any) -> None:
    """Ready costs no path evaluation; reading ``current_path`` makes one, once."""
    from netconn.path import connection_path as real

    evaluations: list[object] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        evaluations.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr("netconn.pathmonitor.connection_path", counted)
    listener = nc.Listener(nc.TCP(), host="127.0.0.1")
    async with listener:
        endpoint = nc.Endpoint.host_port("127.0.0.1", listener.port)
        async with nc.Connection(endpoint, nc.TCP()) as conn:
            assert evaluations == []
            path = conn.current_path
            assert path is not None and path.remote == conn.remote_endpoint
            assert conn.current_path is path
            assert len(evaluations) == 1
        # A connection with a path callback still hears of its path at ready.
        seen: list[nc.Path] = []
        conn = nc.Connection(endpoint, nc.TCP()).on_path_update(lambda c, p: seen.append(p))
        async with conn:
            assert len(seen) == 1 and conn.current_path is seen[0]


async def test_an_idle_tcp_connection_holds_few_python_objects() -> None:
    """Bytes of Python objects netconn's own code allocates per idle client connection.

    Deterministic for one Python version: tracemalloc counts allocations, not RSS.
    Averaged over the client and the server end of each connection.
    """
    import tracemalloc

    listener = nc.Listener(nc.TCP(), host="127.0.0.1", backlog=64)
    async with listener:
        server_side: list[nc.Connection[nc.TCP]] = []
        listener.on_new_connection(server_side.append)
        endpoint = nc.Endpoint.host_port("127.0.0.1", listener.port)
        stack = nc.TCP()
        conns = []
        warm = nc.Connection(endpoint, stack)
        await warm.wait_ready(timeout(5))
        count = 40
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for _ in range(count):
                conn = nc.Connection(endpoint, stack)
                await conn.wait_ready(timeout(5))
                conns.append(conn)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        own = [tracemalloc.Filter(True, f"{nc.__path__[0]}/*")]
        client = sum(
            stat.size_diff
            for stat in after.filter_traces(own).compare_to(before.filter_traces(own), "filename")
        )
        # Server-side connections are counted too: halve for one end.
        per_connection = client / count / 2
        assert per_connection < 1800, per_connection  # about 1,660 now
        for conn in [warm, *conns]:
            conn.force_cancel()


def test_udp_on_uvloop_runs_on_its_own_transport_within_the_queue_bound() -> None:
    """On uvloop, client flows and listeners use uvloop's datagram transport."""

    async def main() -> tuple[bytes, bytes, int, int]:
        listener = nc.Listener(nc.UDP(receive_queue=8), host="127.0.0.1")
        async with listener:
            endpoint = nc.Endpoint.host_port("127.0.0.1", listener.port)
            async with nc.Connection(endpoint, nc.UDP()) as conn:
                await conn.send(b"hi")
                async with asyncio.timeout(timeout(5)):
                    server = await listener.accept()
                    assert server is not None
                    got = (await server.receive_message()).content
                    await server.send(b"back")
                    back = (await conn.receive_message()).content
                for _ in range(50):
                    await conn.send(b"x")
                channel: Any = server._channel
                assert isinstance(channel, UDPChannel)
                for _ in range(round(timeout(5) / 0.01)):
                    if channel.pending + channel.dropped >= 50:
                        break
                    await asyncio.sleep(0.01)
                return got, back, channel.pending, channel.dropped

    got, back, pending, dropped = uvloop.run(main())
    assert (got, back) == (b"hi", b"back")
    assert pending == 8 and dropped == 42


async def test_listener_run_hands_connections_straight_to_handlers() -> None:
    """Under run(), a ready connection starts its handler without passing the queue."""
    listener = nc.Listener(nc.TCP(), host="127.0.0.1")
    async with listener:
        endpoint = nc.Endpoint.host_port("127.0.0.1", listener.port)
        early = nc.Connection(endpoint, nc.TCP())
        await early.wait_ready(timeout(5))
        async with asyncio.timeout(timeout(5)):
            while listener._ready.qsize() < 1:  # noqa: ASYNC110 - a queue has no event
                await asyncio.sleep(0.01)
        served: list[bytes] = []
        queued: list[int] = []

        async def handler(conn: nc.Connection[nc.TCP]) -> None:
            queued.append(listener._ready.qsize())
            served.append(await conn.receive(1, 10))
            await conn.send(b"ok")

        task = asyncio.create_task(listener.run(handler))
        await asyncio.sleep(0)  # run() starts
        listener.on_new_connection(lambda conn: queued.append(listener._ready.qsize()))
        late = nc.Connection(endpoint, nc.TCP())
        async with asyncio.timeout(timeout(5)):
            await late.wait_ready()
            for conn in (early, late):
                await conn.send(b"hi")
                assert await conn.receive_exactly(2) == b"ok"
        # The late one was never queued, not even while its callbacks ran.
        assert served == [b"hi", b"hi"] and queued == [0, 0, 0]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for conn in (early, late):
            await conn.cancel()
