"""The workloads, written once against :mod:`benchmarks.api` for every implementation.

Each workload has a client (run in the client process, returns its
measurements), a server side (stream and datagram handlers run in the server
process, which may record figures in ``stats``), and the metrics it reports.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .api import (
    ConnectOptions,
    DatagramHandler,
    Env,
    Implementation,
    Session,
    Stream,
    StreamHandler,
    peak_rss,
    reset_peak_rss,
    rss,
)

__all__ = ["FULL", "QUICK", "WORKLOADS", "Metric", "Scale", "Workload"]

MiB = 1 << 20
_CHUNK = 256 * 1024
_HEADER = struct.Struct("!Q")


@dataclass(frozen=True, slots=True)
class Scale:
    """How much each workload does: the quick mode and the full run differ only here."""

    bulk_bytes: int
    """Bytes sent on one stream by ``bulk``."""
    streams: int
    """Concurrent streams in ``streams``."""
    stream_bytes: int
    """Bytes per stream in ``streams``."""
    echo_rounds: int
    """Request/response round trips timed by ``echo``."""
    handshakes: int
    """Connections made one after another by the handshake workloads."""
    idle_connections: int
    """Connections held open by ``idle``."""
    slow_bytes: int
    """Bytes the fast sender pushes in ``slow_reader``."""
    slow_rate: float
    """Bytes per second the slow reader reads."""
    datagram_seconds: float
    """Seconds the ``datagrams`` sender sends."""
    datagram_size: int = 1200
    """Payload bytes per datagram."""
    message_size: int = 64
    """Request and response size of ``echo``, in bytes."""


QUICK = Scale(
    bulk_bytes=2 * MiB,
    streams=10,
    stream_bytes=100_000,
    echo_rounds=200,
    handshakes=8,
    idle_connections=40,
    slow_bytes=2 * MiB,
    slow_rate=32e6,
    datagram_seconds=0.2,
)
"""Seconds in total: keeps the harness working, measures nothing worth quoting."""

FULL = Scale(
    bulk_bytes=128 * MiB,
    streams=100,
    stream_bytes=100_000,
    echo_rounds=5000,
    handshakes=200,
    idle_connections=1000,
    slow_bytes=32 * MiB,
    slow_rate=32e6,
    datagram_seconds=2.0,
)
"""The full run recorded in README.md."""


@dataclass(frozen=True, slots=True)
class Metric:
    """One reported figure."""

    key: str
    """Key in the measurement dict."""
    label: str
    """What it is, for tables and plots."""
    unit: str
    """Its unit."""
    higher_is_better: bool
    """Whether a larger value is better (ratios are oriented so that > 1 favours the subject)."""


Client = Callable[[Implementation, Env, int, Scale], Awaitable[dict[str, float]]]
Server = Callable[[Scale, dict[str, float]], tuple[StreamHandler, DatagramHandler]]


def _combine_client(client: dict[str, float], server: dict[str, float]) -> dict[str, float]:
    return {**client, **server}


@dataclass(frozen=True, slots=True)
class Workload:
    """One kind of measurement."""

    name: str
    """Short name, e.g. ``"bulk"``."""
    title: str
    """What it measures, for reports."""
    metrics: tuple[Metric, ...]
    """Reported figures; the first is the headline."""
    client: Client
    """Runs in the client process and returns measurements."""
    server: Server
    """Builds the server's handlers; they may record figures in the stats dict."""
    combine: Callable[[dict[str, float], dict[str, float]], dict[str, float]] = _combine_client
    """Merges client measurements and server stats into the reported figures."""


# Server handlers


async def _read_counted(stream: Stream) -> None:
    """The bulk protocol, server side: an 8-byte length, that many bytes, then a 1-byte ack."""
    (size,) = _HEADER.unpack(await stream.recv_exactly(_HEADER.size))
    left = size
    while left > 0:
        data = await stream.recv(min(left, _CHUNK))
        if not data:
            raise EOFError(f"stream ended {left} bytes early")
        left -= len(data)
    await stream.send(b"k", end=True)


async def _echo(stream: Stream) -> None:
    while data := await stream.recv(65536):
        await stream.send(data)


def _echo_datagram(data: bytes) -> bytes:
    return data


def _ignore_datagram(data: bytes) -> None:
    return None


def _bulk_server(scale: Scale, stats: dict[str, float]) -> tuple[StreamHandler, DatagramHandler]:
    return _read_counted, _ignore_datagram


def _echo_server(scale: Scale, stats: dict[str, float]) -> tuple[StreamHandler, DatagramHandler]:
    return _echo, _echo_datagram


def _idle_server(scale: Scale, stats: dict[str, float]) -> tuple[StreamHandler, DatagramHandler]:
    gc.collect()
    base = rss()
    stats["server_kib_per_conn"] = 0.0
    count = [0]

    async def on_stream(stream: Stream) -> None:
        count[0] += 1
        if count[0] == scale.idle_connections:
            gc.collect()
            per_conn = (rss() - base) / scale.idle_connections / 1024
            stats["server_kib_per_conn"] = per_conn
        await _echo(stream)

    return on_stream, _echo_datagram


def _slow_server(scale: Scale, stats: dict[str, float]) -> tuple[StreamHandler, DatagramHandler]:
    async def on_stream(stream: Stream) -> None:
        gc.collect()
        reset_peak_rss()
        base = rss()
        (size,) = _HEADER.unpack(await stream.recv_exactly(_HEADER.size))
        start = time.perf_counter()
        got = 0
        while got < size:
            data = await stream.recv(16 * 1024)
            if not data:
                raise EOFError("stream ended early")
            got += len(data)
            ahead = got / scale.slow_rate - (time.perf_counter() - start)
            if ahead > 0.001:
                await asyncio.sleep(ahead)
        # The kernel syncs the peak counter lazily: a few pages below ``base`` means 0.
        stats["reader_peak_mib"] = max(0, peak_rss() - base) / MiB
        await stream.send(b"k", end=True)

    return on_stream, _ignore_datagram


def _count_server(scale: Scale, stats: dict[str, float]) -> tuple[StreamHandler, DatagramHandler]:
    stats["received"] = 0

    def on_datagram(data: bytes) -> None:
        stats["received"] += 1
        return None

    return _echo, on_datagram


# Clients


async def _bulk(impl: Implementation, env: Env, port: int, scale: Scale) -> dict[str, float]:
    session = await impl.connect(env, port, ConnectOptions())
    try:
        stream = await session.stream()
        elapsed = await _send_counted(stream, scale.bulk_bytes)
    finally:
        await session.close()
    return {"mbps": scale.bulk_bytes / elapsed / 1e6}


async def _send_counted(stream: Stream, size: int) -> float:
    """The bulk protocol, client side; returns seconds until the server acknowledged it all."""
    chunk = bytes(min(_CHUNK, size))
    start = time.perf_counter()
    await stream.send(_HEADER.pack(size))
    left = size
    while left > 0:
        n = min(left, len(chunk))
        left -= n
        await stream.send(chunk if n == len(chunk) else chunk[:n], end=left == 0)
    ack = await stream.recv_exactly(1)
    if ack != b"k":
        raise RuntimeError(f"bad acknowledgement {ack!r}")
    return time.perf_counter() - start


async def _streams(impl: Implementation, env: Env, port: int, scale: Scale) -> dict[str, float]:
    session = await impl.connect(env, port, ConnectOptions())
    try:
        start = time.perf_counter()

        async def one() -> None:
            stream = await session.stream()
            await _send_counted(stream, scale.stream_bytes)

        await asyncio.gather(*(one() for _ in range(scale.streams)))
        elapsed = time.perf_counter() - start
    finally:
        await session.close()
    return {"mbps": scale.streams * scale.stream_bytes / elapsed / 1e6}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _echo_client(impl: Implementation, env: Env, port: int, scale: Scale) -> dict[str, float]:
    session = await impl.connect(env, port, ConnectOptions())
    try:
        stream = await session.stream()
        request = bytes(i % 256 for i in range(scale.message_size))
        samples: list[float] = []
        for i in range(scale.echo_rounds + 20):
            start = time.perf_counter()
            await stream.send(request)
            reply = await stream.recv_exactly(len(request))
            if i >= 20:  # the first round trips warm caches and windows
                samples.append(time.perf_counter() - start)
            if reply != request:
                raise RuntimeError("echo reply differs from the request")
    finally:
        await session.close()
    return {
        "p50_us": _percentile(samples, 0.50) * 1e6,
        "p99_us": _percentile(samples, 0.99) * 1e6,
    }


def _handshake_client(options: ConnectOptions) -> Client:
    async def run(impl: Implementation, env: Env, port: int, scale: Scale) -> dict[str, float]:
        if options.resume:
            # The first connection finds no session and makes a full handshake.
            warm = await impl.connect(env, port, options)
            await _ping(await warm.stream())
            await warm.close()
        times: list[float] = []
        start = time.perf_counter()
        for _ in range(scale.handshakes):
            t0 = time.perf_counter()
            session = await impl.connect(env, port, options)
            try:
                await _ping(await session.stream())
                times.append(time.perf_counter() - t0)
                if options.resume and not session.resumed:
                    raise RuntimeError("the session was not resumed")
            finally:
                await session.close()
        elapsed = time.perf_counter() - start
        return {
            "per_s": scale.handshakes / elapsed,
            "ready_ms_p50": statistics.median(times) * 1e3,
        }

    return run


async def _ping(stream: Stream) -> None:
    await stream.send(b"x")
    if await stream.recv_exactly(1) != b"x":
        raise RuntimeError("bad echo")


async def _idle(impl: Implementation, env: Env, port: int, scale: Scale) -> dict[str, float]:
    sessions: list[Session] = []
    gc.collect()
    base = rss()
    limit = asyncio.Semaphore(32)

    async def open_one() -> None:
        async with limit:
            session = await impl.connect(env, port, ConnectOptions())
            sessions.append(session)
            await _ping(await session.stream())

    try:
        await asyncio.gather(*(open_one() for _ in range(scale.idle_connections)))
        await asyncio.sleep(0.2)
        gc.collect()
        used = rss() - base
    finally:
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)
    return {"kib_per_conn": used / scale.idle_connections / 1024}


async def _slow(impl: Implementation, env: Env, port: int, scale: Scale) -> dict[str, float]:
    session = await impl.connect(env, port, ConnectOptions())
    try:
        stream = await session.stream()
        gc.collect()
        reset_peak_rss()
        base = rss()
        await _send_counted(stream, scale.slow_bytes)
        peak = max(0, peak_rss() - base)
    finally:
        await session.close()
    return {"sender_peak_mib": peak / MiB}


async def _datagrams(impl: Implementation, env: Env, port: int, scale: Scale) -> dict[str, float]:
    session = await impl.connect(env, port, ConnectOptions())
    try:
        datagrams = session.datagrams()
        payload = bytes(scale.datagram_size)
        sent = 0
        start = time.perf_counter()
        deadline = start + scale.datagram_seconds
        while time.perf_counter() < deadline:
            for _ in range(64):
                await datagrams.send(payload)
            sent += 64
            await asyncio.sleep(0)  # let the loop write what is queued
        elapsed = time.perf_counter() - start
        await asyncio.sleep(0.1)
    finally:
        await session.close()
    return {"sent": float(sent), "seconds": elapsed}


def _combine_datagrams(client: dict[str, float], server: dict[str, float]) -> dict[str, float]:
    received = server.get("received", 0.0)
    return {
        "delivered_per_s": received / client["seconds"],
        "delivery_ratio": received / client["sent"] if client["sent"] else 0.0,
        "sent_per_s": client["sent"] / client["seconds"],
    }


_MBPS = Metric("mbps", "throughput", "MB/s", True)
_RATE = Metric("per_s", "connections", "conn/s", True)
_READY = Metric("ready_ms_p50", "time to first echo, p50", "ms", False)

WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("bulk", "bulk throughput, one stream", (_MBPS,), _bulk, _bulk_server),
        Workload(
            "streams", "bulk throughput, concurrent streams", (_MBPS,), _streams, _bulk_server
        ),
        Workload(
            "echo",
            "request/response latency",
            (
                Metric("p50_us", "latency p50", "us", False),
                Metric("p99_us", "latency p99", "us", False),
            ),
            _echo_client,
            _echo_server,
        ),
        Workload(
            "handshake",
            "full handshakes (connect, 1-byte echo, close)",
            (_RATE, _READY),
            _handshake_client(ConnectOptions()),
            _echo_server,
        ),
        Workload(
            "resumed",
            "resumed handshakes (connect, 1-byte echo, close)",
            (_RATE, _READY),
            _handshake_client(ConnectOptions(resume=True)),
            _echo_server,
        ),
        Workload(
            "zero_rtt",
            "0-RTT handshakes (echo sent as early data)",
            (_RATE, _READY),
            _handshake_client(ConnectOptions(resume=True, early_data=True)),
            _echo_server,
        ),
        Workload(
            "datagrams",
            "datagram rate and delivery",
            (
                Metric("delivered_per_s", "delivered", "datagrams/s", True),
                Metric("delivery_ratio", "delivery ratio", "fraction", True),
                Metric("sent_per_s", "sent", "datagrams/s", True),
            ),
            _datagrams,
            _count_server,
            combine=_combine_datagrams,
        ),
        Workload(
            "idle",
            "memory of idle connections",
            (
                Metric("kib_per_conn", "client RSS per connection", "KiB", False),
                Metric("server_kib_per_conn", "server RSS per connection", "KiB", False),
            ),
            _idle,
            _idle_server,
        ),
        Workload(
            "slow_reader",
            "fast sender to a slow reader: peak RSS above idle",
            (
                Metric("sender_peak_mib", "sender peak", "MiB", False),
                Metric("reader_peak_mib", "reader peak", "MiB", False),
            ),
            _slow,
            _slow_server,
        ),
    )
}
"""Every workload by name."""
