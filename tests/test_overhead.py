"""What keeps netconn's per-connection and per-packet overhead low, checked without timing."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from typing import Any

import uvloop
from conftest import Certs, timeout
from loopback import stream_pair

import netconn as nc
from netconn.stacks.tls import TLSChannel
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


class _Turns:
    """Counts event-loop turns: a callback that schedules itself again each turn."""

    def __init__(self) -> None:
        self.count = 0
        self._loop = asyncio.get_running_loop()
        self._handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = self._loop.call_soon(self._tick)

    def stop(self) -> None:
        self._handle.cancel()


async def _udp_echo_turns(monkeypatch: Any) -> tuple[list[int], list[int]]:
    """Loop turns from a request's arrival to its reply, under ``Listener.run``, per round trip."""
    from netconn.stacks import udp

    arrived: list[int] = []
    answered: list[int] = []
    turns: list[_Turns] = []
    received = udp._Demultiplexer.datagram_received

    def arriving(self: Any, data: bytes, addr: tuple[Any, ...]) -> None:
        arrived.append(turns[0].count if turns else -1)
        received(self, data, addr)

    monkeypatch.setattr(udp._Demultiplexer, "datagram_received", arriving)

    async def handler(conn: nc.Connection[nc.UDP]) -> None:
        async for message in conn.messages():
            answered.append(turns[0].count if turns else -1)
            await conn.send(message.content)

    listener = nc.Listener(nc.UDP(), host="127.0.0.1")
    async with listener:
        task = asyncio.create_task(listener.run(handler))
        endpoint = nc.Endpoint.host_port("127.0.0.1", listener.port)
        async with nc.Connection(endpoint, nc.UDP()) as conn, asyncio.timeout(timeout(5)):
            await conn.send(b"first")  # makes the flow and starts its handler
            await conn.receive_message()
            turns.append(_Turns())
            arrived.clear()
            answered.clear()
            for i in range(20):
                await conn.send(bytes([i]))
                assert (await conn.receive_message()).content == bytes([i])
            turns[0].stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return arrived, answered


async def test_a_udp_listener_handler_answers_in_the_turn_the_datagram_arrived(
    monkeypatch: Any,
) -> None:
    """A handler waiting in ``messages()`` runs inside the listener's read, not a turn later."""
    arrived, answered = await _udp_echo_turns(monkeypatch)
    assert len(arrived) == len(answered) == 20
    assert arrived == answered  # a plain future: each answer one turn after its arrival


def test_a_udp_listener_handler_answers_in_the_same_turn_on_uvloop(monkeypatch: Any) -> None:
    async def main() -> tuple[list[int], list[int]]:
        return await _udp_echo_turns(monkeypatch)

    arrived, answered = uvloop.run(main())
    assert len(arrived) == 20 and arrived == answered


async def test_a_udp_receiver_cancelled_after_the_hand_over_loses_nothing() -> None:
    """A datagram handed to a receiver whose task is cancelled before it resumes stays queued."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        endpoint = nc.Endpoint.host_port("127.0.0.1", peer.getsockname()[1])
        async with nc.Connection(endpoint, nc.UDP()) as conn:
            channel: Any = conn._channel
            receiver = asyncio.create_task(conn.receive_message())
            await asyncio.sleep(0)
            # From inside a task the hand-over is scheduled, not run in place.
            channel.feed(b"kept")
            receiver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiver
            async with asyncio.timeout(timeout(5)):
                assert (await conn.receive_message()).content == b"kept"


class _CountingSocket:
    """A socket whose ``recvfrom`` calls are counted, with and without a datagram."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.reads = 0
        self.empty = 0

    def recvfrom(self, size: int) -> tuple[bytes, Any]:
        self.reads += 1
        try:
            return self._sock.recvfrom(size)
        except BlockingIOError:
            self.empty += 1
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


async def test_a_udp_request_costs_one_read_on_asyncio() -> None:
    """On asyncio's loop, a wake-up that finds one datagram does not read on to EAGAIN."""
    listener = nc.Listener(nc.UDP(), host="127.0.0.1")

    async def handler(conn: nc.Connection[nc.UDP]) -> None:
        async for message in conn.messages():
            await conn.send(message.content)

    async with listener:
        task = asyncio.create_task(listener.run(handler))
        endpoint = nc.Endpoint.host_port("127.0.0.1", listener.port)
        async with nc.Connection(endpoint, nc.UDP()) as conn, asyncio.timeout(timeout(5)):
            await conn.send(b"first")
            await conn.receive_message()
            demux: Any = listener._closers[0].__self__  # type: ignore[attr-defined]
            channel: Any = conn._channel
            server_side = _CountingSocket(demux._transport._sock)
            demux._transport._sock = server_side
            client_side = _CountingSocket(channel._transport._sock)
            channel._transport._sock = client_side
            for i in range(64):
                await conn.send(bytes([i]))
                assert (await conn.receive_message()).content == bytes([i])
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    # Every 16th wake-up still reads on, to notice a burst (asyncio's own
    # transport reads once per wake-up; reading on to EAGAIN would make 64).
    for side in (server_side, client_side):
        assert side.reads - side.empty == 64
        assert side.empty <= 64 // 16 + 2


class _CountingSSL:
    """An ``SSLObject`` whose reads are counted, and those that raise ``SSLWantReadError``."""

    def __init__(self, sslobj: ssl.SSLObject) -> None:
        self._ssl = sslobj
        self.reads = 0
        self.wanting = 0

    def read(self, size: int) -> bytes:
        self.reads += 1
        try:
            return self._ssl.read(size)
        except ssl.SSLWantReadError:
            self.wanting += 1
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ssl, name)


async def test_a_tls_record_costs_one_ssl_read(certs: Certs) -> None:
    """Each received record takes one ``SSLObject.read``; none that can only raise."""
    client_stack = nc.TLS(ca_file=certs.ca)
    server_stack = nc.TLS(certificate=(certs.cert, certs.key))
    async with stream_pair(client_stack, server_stack) as (client, server):
        # Both ways first: the client's first read also takes the session tickets.
        await client.send(b"warm")
        assert await server.receive_exactly(4) == b"warm"
        await server.send(b"warm")
        assert await client.receive_exactly(4) == b"warm"
        sides = []
        for conn in (client, server):
            channel: Any = conn._channel
            assert isinstance(channel, TLSChannel)
            counting = _CountingSSL(channel._ssl)
            channel._ssl = counting  # type: ignore[assignment]
            sides.append(counting)
        async with asyncio.timeout(timeout(5)):
            for i in range(20):
                request = bytes([i]) * 64
                await client.send(request)
                data = await server.receive(1, 65536)  # as an echo server reads
                await server.send(data)
                assert await client.receive_exactly(64) == request
    # Before: 2 reads a record on the client (one raising), 3 on the server (two raising).
    assert [(side.reads, side.wanting) for side in sides] == [(20, 0), (20, 0)]


async def test_tls_flushes_leave_in_order_when_one_waiting_is_cancelled(certs: Certs) -> None:
    """Flushes queue behind the one in flight; a cancelled waiter passes its turn on."""
    sent: list[bytes] = []
    gate = asyncio.Event()

    class Inner:
        async def send(self, data: bytes, is_complete: bool) -> None:
            await gate.wait()
            sent.append(data)

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    channel = TLSChannel(nc.TLS(), Inner(), context, server_side=False)  # type: ignore[arg-type]

    async def flush(record: bytes) -> None:
        channel._outgoing.write(record)
        await channel._flush()

    async with asyncio.timeout(timeout(5)):
        first = asyncio.create_task(flush(b"1"))
        await asyncio.sleep(0)
        second = asyncio.create_task(flush(b"2"))
        third = asyncio.create_task(flush(b"3"))
        await asyncio.sleep(0)
        second.cancel()
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, third)
        with contextlib.suppress(asyncio.CancelledError):
            await second
    # The first flush took "1"; "2" and "3" were in the BIO when the next one ran.
    assert b"".join(sent) == b"123" and sent[0] == b"1"
    assert not channel._flushing and not channel._flush_waiters
