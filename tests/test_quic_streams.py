"""QUIC streams: resets, back-pressure both ways, cancellation, credit, priority, receipts."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from conftest import Certs, timeout
from quic_helpers import (
    connected_pair,
    roles,
)

import netconn as nc

ROLES = ["client", "server"]

pytestmark = pytest.mark.usefixtures("quic_engine")  # every test on each engine


async def first_inbound(conn: nc.Connection[nc.QUIC]) -> nc.QUICStream:
    async for stream in conn.inbound_streams():
        return stream
    raise AssertionError("no inbound stream")


@pytest.mark.parametrize("role", ROLES)
async def test_reset_code_seen_by_peer(certs: Certs, role: str) -> None:
    async with connected_pair(certs) as pair:
        local, remote = roles(pair, role)
        stream = await local.open_stream()
        await stream.send(b"partial")
        inbound = await asyncio.wait_for(first_inbound(remote), timeout(10))
        assert await inbound.receive(7, 7) == b"partial"
        stream.reset(0x1234)
        assert stream.send_state == "reset"
        with pytest.raises(nc.StreamReset) as raised:
            await asyncio.wait_for(inbound.receive(), timeout(10))
        assert raised.value.code == 0x1234 and raised.value.by_peer
        assert inbound.receive_state == "reset"
        assert isinstance(inbound.state, nc.Failed)
        with pytest.raises(nc.StreamReset):
            await stream.send(b"more")


@pytest.mark.parametrize("role", ROLES)
async def test_stop_sending_code_seen_by_peer(certs: Certs, role: str) -> None:
    async with connected_pair(certs) as pair:
        local, remote = roles(pair, role)
        stream = await local.open_stream()
        await stream.send(b"hello")
        inbound = await asyncio.wait_for(first_inbound(remote), timeout(10))
        await inbound.receive(5, 5)
        await inbound.send(b"x")
        # The opener stops the peer's sending direction; the peer's sends fail.
        stream.stop_sending(77)
        with pytest.raises(nc.StreamReset):
            await stream.receive()

        async def send_until_stopped() -> nc.StreamReset:
            while True:
                try:
                    await inbound.send(b"y" * 1000)
                except nc.StreamReset as error:
                    return error
                await asyncio.sleep(0.01)

        error = await asyncio.wait_for(send_until_stopped(), timeout(10))
        assert error.code == 77 and error.by_peer and "stopped" in str(error)


async def test_cancelled_receive_loses_nothing(certs: Certs) -> None:
    async with connected_pair(certs) as (client, server):
        stream = await client.open_stream()
        await stream.send(b"first")
        inbound = await asyncio.wait_for(first_inbound(server), timeout(10))
        # Waiting for more than is there, then cancelled: nothing may be lost.
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await inbound.receive(100, 100)
        await stream.send(b"second", is_complete=True)
        data = b""
        while chunk := await asyncio.wait_for(inbound.receive(), timeout(10)):
            data += chunk
        assert data == b"firstsecond"


@pytest.mark.parametrize("role", ROLES)
async def test_slow_reader_bounds_both_ends(
    certs: Certs, role: str, quic_engine: nc.QUICEngine
) -> None:
    """A sender far ahead of its reader: bounded queue here, bounded buffer there."""
    send_bound = 256 * 1024
    window = 128 * 1024
    parameters = nc.Parameters(send_buffer=send_bound)
    receive_side = {"initial_max_stream_data": window, "initial_max_data": 4 * window}
    server, client = (receive_side, {}) if role == "client" else ({}, receive_side)
    async with connected_pair(certs, server=server, client=client, parameters=parameters) as pair:
        local, remote = roles(pair, role)
        stream = await local.open_stream()
        total = 8 << 20
        block = bytes(64 * 1024)
        peak_queued = 0
        sent = 0

        async def produce() -> None:
            nonlocal peak_queued, sent
            while sent < total:
                await stream.send(block)
                sent += len(block)
                peak_queued = max(peak_queued, stream.queued_bytes)
            await stream.close()

        producer = asyncio.create_task(produce())
        inbound = await asyncio.wait_for(first_inbound(remote), timeout(10))
        await asyncio.sleep(0.5)  # the reader sleeps: everything piles up, boundedly
        assert not producer.done()
        assert sent < total
        # aioquic grants credit per stream as the application reads; qh3's engine
        # stops taking data from its core once a stream window is unread, and
        # the core's own windows then stop the peer.
        bound = window if quic_engine == "aioquic" else receive_side["initial_max_data"]
        assert inbound.buffered_bytes <= bound
        assert stream.queued_bytes <= send_bound + 256 * 1024
        received = 0
        peak_buffered = inbound.buffered_bytes
        while chunk := await asyncio.wait_for(inbound.receive(1, 32 * 1024), timeout(20)):
            received += len(chunk)
            peak_buffered = max(peak_buffered, inbound.buffered_bytes)
        await asyncio.wait_for(producer, timeout(20))
        assert received == total
        assert peak_buffered <= 16 << 20  # the window grows only with a fast reader
        assert peak_queued <= send_bound + 256 * 1024


async def test_slow_reader_bounds_the_connection(certs: Certs, quic_engine: nc.QUICEngine) -> None:
    """Several streams at once to a reader that reads none: bounded in total."""
    window = 128 * 1024
    connection_window = 4 * window
    receive_side = {"initial_max_stream_data": window, "initial_max_data": connection_window}
    count, size = 6, 2 << 20
    async with connected_pair(certs, server=receive_side) as (client, server):
        streams = [await client.open_stream() for _ in range(count)]

        async def produce(stream: nc.QUICStream) -> None:
            for _ in range(size // (64 * 1024)):
                await stream.send(bytes(64 * 1024))
            await stream.close()

        producers = [asyncio.create_task(produce(stream)) for stream in streams]
        inbound: list[nc.QUICStream] = []
        arrivals = server.inbound_streams()
        await asyncio.sleep(0.5)  # nothing is read: the peer's credit runs out
        channel = server._channel
        assert isinstance(channel, nc.quic.QUICChannel)
        buffered = sum(s.buffered_bytes for s in channel._streams.values())
        # aioquic grants the connection window as the application reads; qh3's
        # engine takes a stream window out of its core, whose own windows stop
        # the peer.
        assert 0 < buffered <= connection_window
        assert not any(p.done() for p in producers)

        async def consume(stream: nc.QUICStream) -> int:
            received = 0
            while chunk := await stream.receive(1, 1 << 20):
                received += len(chunk)
            return received

        readers = []
        for _ in range(count):
            stream = await asyncio.wait_for(anext(arrivals), timeout(10))
            inbound.append(stream)
            readers.append(asyncio.create_task(consume(stream)))
        assert await asyncio.wait_for(asyncio.gather(*readers), timeout(30)) == [size] * count
        await asyncio.wait_for(asyncio.gather(*producers), timeout(10))
        if quic_engine == "qh3":
            engine: Any = channel.quic
            assert engine.unread_bytes == 0 and not engine.receive_held


async def test_thousand_concurrent_streams(certs: Certs) -> None:
    """1,000 streams at once, each with its own payload and digest."""
    count, size = 1000, 32 * 1024

    async def serve(server: nc.Connection[nc.QUIC]) -> None:
        async def one(stream: nc.QUICStream) -> None:
            digest = hashlib.sha256()
            while data := await stream.receive(1, 1 << 20):
                digest.update(data)
            await stream.send(digest.digest(), is_complete=True)

        async with asyncio.TaskGroup() as group:
            async for stream in server.inbound_streams():
                group.create_task(one(stream))

    async with connected_pair(certs, server={"initial_max_streams_bidirectional": count}) as (
        client,
        server,
    ):
        task = asyncio.create_task(serve(server))

        async def one(i: int) -> None:
            payload = i.to_bytes(4, "big") * (size // 4)
            stream = await client.open_stream()
            await stream.send(payload, is_complete=True)
            assert await stream.receive_exactly(32) == hashlib.sha256(payload).digest()

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), timeout(60))
        # Finished streams are forgotten on both sides: nothing grows per stream.
        async with asyncio.timeout(timeout(10)):
            # Polled: the engines discard streams as they build their next packets.
            while client.quic_stats()["open_streams"] or server.quic_stats()["open_streams"]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        task.cancel()


async def test_open_stream_waits_for_credit(certs: Certs) -> None:
    async with connected_pair(certs, server={"initial_max_streams_bidirectional": 2}) as (
        client,
        server,
    ):
        assert client.remote_max_streams_bidirectional == 2
        first = await client.open_stream()
        second = await client.open_stream()
        await second.send(b"open")  # the server learns of a stream from its first frame
        with pytest.raises(nc.Busy):
            await client.open_stream(wait=False)
        third = asyncio.create_task(client.open_stream())
        await asyncio.sleep(0.2)
        assert not third.done()
        # Finishing the first stream both ways frees one slot.
        await first.send(b"done", is_complete=True)
        arrivals = server.inbound_streams()
        two = [await asyncio.wait_for(anext(arrivals), timeout(10)) for _ in range(2)]
        inbound = next(s for s in two if s.id == first.id)
        assert await inbound.receive(4, 4) == b"done"
        await inbound.send(b"", is_complete=True)
        assert await first.receive() == b""
        stream = await asyncio.wait_for(third, timeout(10))
        assert stream.id == 8
        assert client.remote_max_streams_bidirectional >= 3


async def test_delivery_receipt(certs: Certs, quic_engine: nc.QUICEngine) -> None:
    async with connected_pair(certs) as (client, _server):
        stream = await client.open_stream()
        if quic_engine == "qh3":  # qh3 does not tell which bytes were acknowledged
            with pytest.raises(nc.InvalidState, match=r"receipts need .*engine='aioquic'"):
                await stream.send(b"z", receipt=True)
            assert stream.queued_bytes == 0  # refused before anything was queued
            return
        receipt = await stream.send(b"z" * 200_000, receipt=True)
        await asyncio.wait_for(receipt, timeout(10))
        assert receipt.acknowledged
        assert stream.queued_bytes == 0


async def test_priority_orders_sending(certs: Certs, quic_engine: nc.QUICEngine) -> None:
    """With the congestion window shared, the high-priority stream finishes first."""
    size = 4 << 20
    async with connected_pair(certs) as (client, server):
        low = await client.open_stream()
        high = await client.open_stream()
        if quic_engine == "qh3":  # qh3 sends its streams in turn
            with pytest.raises(nc.InvalidState, match=r"priorities need .*engine='aioquic'"):
                high.priority = 10
            assert high.priority == 0
            return
        high.priority = 10
        assert high.priority == 10
        finished: list[int] = []
        both = asyncio.Event()

        async def drain(conn: nc.Connection[nc.QUIC]) -> None:
            async def read(stream: nc.QUICStream) -> None:
                while await stream.receive(1, 1 << 20):
                    pass
                finished.append(stream.id)
                if len(finished) == 2:
                    both.set()

            async with asyncio.TaskGroup() as group:
                async for stream in conn.inbound_streams():
                    group.create_task(read(stream))

        reader = asyncio.create_task(drain(server))
        await asyncio.gather(
            low.send(bytes(size), is_complete=True), high.send(bytes(size), is_complete=True)
        )

        await asyncio.wait_for(both.wait(), timeout(30))
        assert finished == [high.id, low.id]
        reader.cancel()


async def test_concurrent_use_is_busy(certs: Certs) -> None:
    async with connected_pair(certs) as (client, _server):
        stream = await client.open_stream()
        big = asyncio.create_task(stream.send(bytes(32 << 20)))  # waits for room
        await asyncio.sleep(0.05)
        assert not big.done()
        with pytest.raises(nc.Busy):
            await stream.send(b"interleaved")
        with pytest.raises(nc.Busy):
            await stream.close()
        reader = asyncio.create_task(stream.receive())
        await asyncio.sleep(0)
        with pytest.raises(nc.Busy):
            await stream.receive()
        stream.reset(5)
        with pytest.raises(nc.StreamReset):
            await asyncio.wait_for(big, timeout(10))
        reader.cancel()
