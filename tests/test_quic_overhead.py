"""What netconn's QUIC glue costs per packet and per connection on aioquic, counted
without timing: packets and engine calls per echo, bytes kept per idle connection."""

from __future__ import annotations

import asyncio
import gc
import socket
import tracemalloc
from typing import Any

from aioquic import tls
from conftest import Certs, timeout
from quic_helpers import ALPN, client_options, connected_pair, endpoint, server_options, serving

import netconn as nc

_ROUNDS = 200


def _count_builds(conn: nc.Connection[nc.QUIC]) -> list[int]:
    """Count the engine's packet builds (``datagrams_to_send`` calls) on ``conn``."""
    engine: Any = conn._quic_channel().quic
    calls = [0]
    build = engine.datagrams_to_send

    def counted(now: float) -> Any:
        calls[0] += 1
        return build(now)

    engine.datagrams_to_send = counted
    return calls


async def test_echo_is_one_packet_and_one_build_each_way(certs: Certs) -> None:
    """A reply carries the ACK of the request (no ACK-only packets follow a
    millisecond later), and the server builds its packets once per request:
    after the handler has written the reply, not also right after the input."""

    async with connected_pair(certs) as (client, server):

        async def echo() -> None:
            stream = await anext(aiter(server.inbound_streams()))
            while data := await stream.receive(1, 65536):
                await stream.send(data)

        task = asyncio.create_task(echo())
        stream = await client.open_stream()
        request = bytes(64)
        for _ in range(10):  # the handshake's last packets, the stream's opening
            await stream.send(request)
            await stream.receive_exactly(len(request))
        await asyncio.sleep(0.05)  # every ACK timer of the warm-up has fired
        before = client.quic_stats()["socket"], server.quic_stats()["socket"]
        builds = _count_builds(server)
        async with asyncio.timeout(timeout(30)):
            for _ in range(_ROUNDS):
                await stream.send(request)
                assert await stream.receive_exactly(len(request)) == request
        after = client.quic_stats()["socket"], server.quic_stats()["socket"]
        task.cancel()
    sent = [a["datagrams_sent"] - b["datagrams_sent"] for a, b in zip(after, before, strict=True)]
    # Without the ACK riding along, a delayed ACK-only packet follows many replies.
    assert sent[0] <= _ROUNDS + 5, sent
    assert sent[1] <= _ROUNDS + 5, sent
    assert builds[0] <= _ROUNDS + 5, builds


_IDLE = 20


async def test_idle_connection_memory(certs: Certs) -> None:
    """Once the handshake is confirmed, an idle connection keeps no handshake state:
    no 16 KiB crypto buffers, no Initial/Handshake streams or keys, shared
    frame tables. Counted with tracemalloc, client and server together."""

    async def echo_one(conn: nc.Connection[nc.QUIC]) -> None:
        async for stream in conn.inbound_streams():
            await stream.send(await stream.receive_exactly(1))

    async with serving(server_options(certs), echo_one) as listener:
        options = client_options(certs)
        held: list[nc.Connection[nc.QUIC]] = []

        async def open_one() -> None:
            conn = nc.Connection(endpoint(listener), options)
            held.append(conn)
            stream = await conn.open_stream()
            await stream.send(b"x")
            await stream.receive_exactly(1)

        try:
            async with asyncio.timeout(timeout(30)):
                await open_one()  # imports, caches and the listener's first allocations
                gc.collect()
                tracemalloc.start()
                try:
                    before = tracemalloc.get_traced_memory()[0]
                    for _ in range(_IDLE):
                        await open_one()
                    await asyncio.sleep(0.05)  # the last ACKs and tickets
                    gc.collect()
                    used = tracemalloc.get_traced_memory()[0] - before
                finally:
                    tracemalloc.stop()
            engines = [conn._quic_channel().quic for conn in held[1:]]
            engines += [conn._quic_channel().quic for conn in listener.connections]
        finally:
            for conn in held:
                conn.force_cancel()
    for engine in engines:
        assert engine._handshake_confirmed
        assert set(engine._crypto_buffers) == {tls.Epoch.ONE_RTT}
        assert engine._crypto_buffers[tls.Epoch.ONE_RTT].capacity < 1024
        assert set(engine._crypto_streams) == {tls.Epoch.ONE_RTT}
        assert not engine._cryptos[tls.Epoch.INITIAL].send.is_valid()
    handlers = [e.__dict__["_QuicConnection__frame_handlers"] for e in engines[:2]]
    assert handlers[0][0x06][1] is handlers[1][0x06][1]  # one set for CRYPTO's epochs
    # Both sides of a connection, with the glue and the listener's share:
    # about 250 KB with aioquic's handshake state kept, about 125 KB without.
    per_pair = used / _IDLE
    assert per_pair < 175_000, per_pair


def test_pacing_bursts_cover_the_timer_granularity() -> None:
    """After the shortest wait an asyncio timer makes (1 ms, epoll's resolution),
    the pacer lets out a millisecond's worth of packets at its rate, however
    high: a sender that is not ahead of its rate never sleeps more than it sends."""
    from netconn.quic._engine import _BurstPacer

    size = 1350
    pacer = _BurstPacer(max_datagram_size=size)
    congestion_window, rtt = 2_000_000, 0.010  # 200 MB/s: 148 packets per millisecond
    pacer.update_rate(congestion_window, rtt)
    start = 100.0
    pacer.evaluation_time, pacer.bucket_time = start, 0.0
    now = start + 0.001
    sent = 0
    while pacer.next_send_time(now) is None and sent < 10_000:
        pacer.update_after_send(now)
        sent += 1
    per_millisecond = congestion_window / rtt / 1000 / size
    assert sent >= per_millisecond - 1, (sent, per_millisecond)
    # Never more than half the congestion window at once.
    pacer.update_rate(100 * size, rtt)
    assert pacer.bucket_max <= 50 * size / (100 * size / rtt) + 1e-9


def _count_frame_attempts(conn: nc.Connection[nc.QUIC]) -> list[int]:
    """Count aioquic's STREAM frame attempts (one per stream offered a packet) on ``conn``."""
    engine: Any = conn._quic_channel().quic
    calls = [0]
    write = engine._write_stream_frame

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return write(*args, **kwargs)

    engine._write_stream_frame = counted
    return calls


async def _send_on_streams(
    client: nc.Connection[nc.QUIC], server: nc.Connection[nc.QUIC], count: int, size: int
) -> int:
    """Send ``size`` bytes on each of ``count`` streams at once; return the client's packets."""

    async def sink() -> None:
        async with asyncio.TaskGroup() as group:
            async for stream in server.inbound_streams():
                group.create_task(_drain(stream))

    async def _drain(stream: nc.QUICStream) -> None:
        total = 0
        while data := await stream.receive(1, 1 << 20):
            total += len(data)
        await stream.send(total.to_bytes(8, "big"), is_complete=True)

    async def one(stream: nc.QUICStream) -> None:
        await stream.send(bytes(size), is_complete=True)
        assert int.from_bytes(await stream.receive_exactly(8), "big") == size

    task = asyncio.create_task(sink())
    try:
        streams = [await client.open_stream() for _ in range(count)]
        before = client.quic_stats()["socket"]["datagrams_sent"]
        async with asyncio.timeout(timeout(60)), asyncio.TaskGroup() as group:
            for stream in streams:
                group.create_task(one(stream))
        return int(client.quic_stats()["socket"]["datagrams_sent"] - before)
    finally:
        task.cancel()


async def test_busy_streams_cost_few_frame_attempts_per_packet(certs: Certs) -> None:
    """aioquic offers every packet to every stream in its queue; netconn shows it
    only as many as fill a round, so 50 bulk streams cost about one attempt per
    packet, not 16 (or 50)."""
    small = {"loopback_udp_payload_size": 0}  # network-sized packets
    async with connected_pair(certs, server=small, client=small) as (client, server):
        attempts = _count_frame_attempts(client)
        packets = await _send_on_streams(client, server, count=50, size=64 * 1024)
    assert packets > 2_000  # 3.2 MB
    assert attempts[0] <= 2 * packets, (attempts, packets)


async def test_small_messages_on_many_streams_share_packets(certs: Certs) -> None:
    """Rounds of a few streams each must not put every small message in a packet of its own."""
    async with connected_pair(certs) as (client, server):
        packets = await _send_on_streams(client, server, count=100, size=100)
    # 100 frames of about 110 bytes fit in 9 full packets; ACKs of the replies add a few.
    assert packets <= 25, packets


async def test_a_backlog_reaches_quic_in_bounded_batches() -> None:
    """A socket read empty on one wake-up hands its datagrams over in pieces, so a
    backlog of megabytes is never held as one batch (a slow reader's peak memory)."""
    from netconn.quic import _udp

    sizes: list[int] = []
    read = asyncio.Event()  # set by the wake-up, which hands over every piece first

    def on_batch(batch: list[tuple[bytes, Any]]) -> None:
        sizes.append(sum(len(data) for data, _ in batch))
        read.set()

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    io = _udp.DatagramSocket(receiver, on_batch, lambda exc: None)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for _ in range(1000):  # before the loop runs the reader: one backlog
                sender.sendto(bytes(1200), receiver.getsockname())
        await asyncio.wait_for(read.wait(), timeout(5))
    finally:
        io.close()
    assert sum(sizes) > 2 * _udp._BATCH_BYTES, sizes  # the bound was needed
    assert max(sizes) <= _udp._BATCH_BYTES + 65535, sizes


# Packet size on a loopback path


def _engine(**options: Any) -> Any:
    """A client engine (no handshake) built from ``options``."""
    from netconn.quic._client import new_engine

    quic = nc.QUIC(alpn=ALPN, **options)
    return new_engine(quic, configuration=quic.configuration(is_client=True, server_name="x"))


def _on_path(engine: Any, host: str) -> int:
    """Put ``engine`` on a path to ``host`` and return the datagram size it picks."""
    from aioquic.quic.connection import QuicNetworkPath

    engine._network_paths = [QuicNetworkPath((host, 4433), is_validated=True)]
    engine._size_datagrams()
    return int(engine._max_datagram_size)


def test_loopback_payload_size() -> None:
    """Only a loopback address has a known path MTU (IPv4-mapped ones included)."""
    from netconn.quic._engine import loopback_payload_size

    loopback = loopback_payload_size(("127.0.0.1", 443))
    assert loopback > 1200
    assert loopback_payload_size(("127.1.2.3", 443)) == loopback
    assert loopback_payload_size(("::ffff:127.0.0.1", 443, 0, 0)) == loopback
    assert loopback_payload_size(("192.0.2.1", 443)) == 0
    assert loopback_payload_size(("2001:db8::1", 443, 0, 0)) == 0
    assert loopback_payload_size(("localhost", 443)) == 0  # a name, not an address


def test_datagrams_grow_on_a_loopback_path_only() -> None:
    """Handshake packets keep max_udp_payload_size; once it is confirmed, a loopback
    path gets loopback_udp_payload_size (congestion control and pacer with it),
    within the peer's limit and aioquic's two-byte frame lengths."""
    engine = _engine()
    assert engine._max_datagram_size == 1350
    assert _on_path(engine, "192.0.2.1") == 1350
    assert _on_path(engine, "127.0.0.1") == 16000
    assert engine._loss._pacer._max_datagram_size == 16000
    assert engine._loss._cc._max_datagram_size == 16000
    assert engine._loss.congestion_window >= 10 * 16000
    assert _on_path(engine, "192.0.2.1") == 1350  # the path moved off loopback

    assert _on_path(_engine(loopback_udp_payload_size=0), "127.0.0.1") == 1350
    assert _on_path(_engine(loopback_udp_payload_size=60000), "127.0.0.1") == 16384
    big = _engine(max_udp_payload_size=32000)  # aioquic cannot write longer frames
    assert big._max_datagram_size == 16384
    assert big._loss._pacer._max_datagram_size == 16384

    from aioquic._buffer import Buffer
    from aioquic.quic.packet import QuicTransportParameters, push_quic_transport_parameters

    limited = _engine()
    buf = Buffer(capacity=256)
    push_quic_transport_parameters(buf, QuicTransportParameters(max_udp_payload_size=9000))
    limited._parse_transport_parameters(buf.data, from_session_ticket=True)
    assert _on_path(limited, "127.0.0.1") == 9000


async def test_loopback_bulk_takes_few_packets(certs: Certs) -> None:
    """8 MiB on one stream over loopback: about 16 KB per packet, so a few hundred
    packets (network-sized ones take over 6,000), and few ACK packets back."""
    async with connected_pair(certs) as (client, server):
        packets = await _send_on_streams(client, server, count=1, size=8 << 20)
        acks = server.quic_stats()["socket"]["datagrams_sent"]
    assert packets <= (8 << 20) // 15_000 + 20, packets
    assert acks <= packets, acks


async def test_large_udp_payload_setting_works_end_to_end(certs: Certs) -> None:
    """max_udp_payload_size above what aioquic's frames can describe is capped, not broken."""
    big = {"max_udp_payload_size": 32000, "loopback_udp_payload_size": 0}
    async with connected_pair(certs, server=big, client=big) as (client, server):
        assert await _send_on_streams(client, server, count=1, size=2 << 20) > 0


# Receive windows


class _Builder:
    """Enough of aioquic's packet builder for the engine to write a MAX_STREAM_DATA frame."""

    def start_frame(self, *args: Any, **kwargs: Any) -> Any:
        from aioquic._buffer import Buffer

        return Buffer(capacity=32)


def test_receive_window_follows_the_reader() -> None:
    """A stream's window doubles when half of it was read within a few round trips
    and the reader never found a quarter of it unread; it halves (not below its
    start) when the reader fell half a window behind."""
    window, largest = 64 * 1024, 1 << 20
    engine = _engine(initial_max_stream_data=window, max_receive_window=largest)
    engine._loss._rtt_smoothed = 0.010
    tuned = engine._tuned
    assert tuned(window, window, largest, 1.0, 1.005, 1000) == 2 * window  # quick, kept up
    assert tuned(window, window, largest, 1.0, 2.0, 0) == window  # half a window took 1 s
    assert tuned(window, window, largest, 0.0, 1.0, 0) == window  # the first update
    assert tuned(2 * window, window, largest, 1.0, 1.005, window // 2) == 2 * window
    assert tuned(4 * window, window, largest, 1.0, 1.005, 2 * window) == 2 * window
    assert tuned(window, window, largest, 1.0, 1.005, window) == window
    assert tuned(largest, window, largest, 1.0, 1.001, 0) == largest


def test_a_reader_that_was_behind_since_the_last_update_does_not_grow() -> None:
    """What the reader found unread at each read counts, not only at the update:
    a reader that catches up in a burst has not kept up."""
    window = 64 * 1024
    engine = _engine(initial_max_stream_data=window, max_receive_window=1 << 20)
    engine._loss._rtt_smoothed = 0.010
    stream = engine._get_or_create_stream_for_send(0)
    calls: list[int] = []
    tuned = engine._tuned

    def recorded(*args: Any) -> int:
        calls.append(args[-1])
        return int(tuned(*args))

    engine._tuned = recorded
    now = 1.0
    engine._nc_windows[0] = (window, now)
    stream.receiver.highest_offset = window  # the peer filled the window
    for _ in range(window // 2 // 4096):  # the reader drains half of it in a burst
        now += 0.0001
        engine.consumed(0, 4096, now)
    stream.receiver.highest_offset = window // 2  # pretend nothing more is unread now
    engine._write_stream_limits(_Builder(), None, stream)
    assert calls == [window]  # the most it found unread, not the 0 unread at the update
    assert engine._nc_windows[0][0] == window
    assert stream.max_stream_data_local == window // 2 + window


async def test_a_paced_slow_reader_keeps_the_starting_window(certs: Certs) -> None:
    """A reader at a steady 8 MB/s behind a faster sender: its stream window never
    grows past the start, so what waits unread stays within it."""
    window = 256 * 1024
    receive_side = {"initial_max_stream_data": window, "initial_max_data": 4 * window}
    async with connected_pair(certs, server=receive_side) as (client, server):
        stream = await client.open_stream()
        total = 4 << 20

        async def produce() -> None:
            for _ in range(total // (64 * 1024)):
                await stream.send(bytes(64 * 1024))
            await stream.close()

        producer = asyncio.create_task(produce())
        inbound = await asyncio.wait_for(anext(aiter(server.inbound_streams())), timeout(10))
        engine: Any = server._quic_channel().quic
        loop = asyncio.get_running_loop()
        start = loop.time()
        received = peak = largest = 0
        async with asyncio.timeout(timeout(30)):
            while chunk := await inbound.receive(1, 16 * 1024):
                received += len(chunk)
                peak = max(peak, inbound.buffered_bytes)
                largest = max(largest, engine._nc_windows.get(inbound.id, (window, 0.0))[0])
                ahead = received / 8e6 - (loop.time() - start)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            await producer
    assert received == total
    assert largest == window, largest
    assert peak <= window, peak


class _Channel:
    """What a QUICStream asks of its channel while it only receives."""

    is_client = True
    error = None
    consumed = 0

    def _consumed(self, stream: Any, size: int) -> None:
        self.consumed += size

    def _retire(self, stream: Any) -> None:
        pass


async def test_a_stream_keeps_the_pieces_it_receives() -> None:
    """Received data stays as the engine's objects: a whole piece is read back
    without a copy, a read piece leaves at once, and tiny pieces share one object."""
    from netconn.quic._stream import QUICStream

    channel = _Channel()
    stream = QUICStream(channel, 0)  # type: ignore[arg-type]
    piece = bytes(16000)
    stream._feed(piece, False)
    assert await stream.receive(1, 65536) is piece
    for _ in range(10):
        stream._feed(bytes(16000), False)
    assert len(await stream.receive(1, 16000)) == 16000
    assert len(stream._chunks) == 9
    assert len(await stream.receive(1, 20000)) == 20000  # one copy across two pieces
    assert len(stream._chunks) == 8 and stream.buffered_bytes == 8 * 16000 - 4000
    assert len(await stream.receive(1, 1 << 20)) == 8 * 16000 - 4000
    for _ in range(1000):
        stream._feed(b"x", False)
    assert len(stream._chunks) == 1
    assert await stream.receive(1, 4096) == b"x" * 1000
    assert channel.consumed == 16000 * 11 + 1000
