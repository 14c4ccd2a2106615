"""Bulk throughput of QUIC on loopback: netconn against raw aioquic.

Each round starts a server process and runs the client here, netconn and
raw aioquic (its asyncio ``connect``/``serve`` with default settings) in
alternation, and times one stream of ``--size`` bytes from the first byte to
the server's reply after FIN (so every byte was received). With
``--streams N`` the bytes are spread over N concurrent streams instead.
Prints each round, the medians and their ratio; ``--json`` writes them out.

Besides the rate it reports the CPU seconds both processes spent per
megabyte (client and server together), which depends far less than the rate
on what else the machine is running.

    python -m benchmarks.quic_bulk --size 64 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

__all__ = ["main"]

ALPN = ["bench"]
CHUNK = 256 * 1024


def _certificates(directory: str) -> tuple[str, str, str]:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    paths = tuple(os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(paths[0])
    cert.private_key_and_cert_chain_pem.write_to_path(paths[1])
    cert.private_key_pem.write_to_path(paths[2])
    return paths[0], paths[1], paths[2]


# Servers (run in a child process; they print their port and serve until killed)


async def _netconn_server(cert: str, key: str, port_queue: Any, packet_size: int | None) -> None:
    import netconn as nc

    options = nc.QUIC(alpn=ALPN, certificate=(cert, key))
    if packet_size:
        options = replace(options, max_udp_payload_size=packet_size, loopback_udp_payload_size=0)

    async def stream_sink(stream: nc.QUICStream) -> None:
        total = 0
        while data := await stream.receive(1, 1 << 20):
            total += len(data)
        await stream.send(str(total).encode(), is_complete=True)

    async def handler(conn: nc.Connection[nc.QUIC]) -> None:
        async with asyncio.TaskGroup() as group:
            async for stream in conn.inbound_streams():
                group.create_task(stream_sink(stream))

    async with nc.Listener(options, host="127.0.0.1") as listener:
        port_queue.put(listener.port)
        await listener.run(handler)


async def _aioquic_server(cert: str, key: str, port_queue: Any, packet_size: int | None) -> None:
    from aioquic.asyncio.server import serve
    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(alpn_protocols=ALPN, is_client=False)
    if packet_size:
        config.max_datagram_size = packet_size
    config.load_cert_chain(cert, key)

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        while data := await reader.read(1 << 20):
            total += len(data)
        writer.write(str(total).encode())
        writer.write_eof()

    tasks: set[asyncio.Task[None]] = set()

    def stream_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(sink(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    server = await serve("127.0.0.1", port, configuration=config, stream_handler=stream_handler)
    port_queue.put(port)
    try:
        await asyncio.Event().wait()
    finally:
        server.close()


def _run(coro: Any, use_uvloop: bool) -> Any:
    if use_uvloop:
        import uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


def _serve(
    kind: str,
    cert: str,
    key: str,
    port_queue: Any,
    use_uvloop: bool = False,
    packet_size: int | None = None,
) -> None:
    coro = _netconn_server if kind == "netconn" else _aioquic_server
    _run(coro(cert, key, port_queue, packet_size), use_uvloop)


# Clients


async def _netconn_client(
    port: int, ca: str, size: int, streams: int, packet_size: int | None
) -> float:
    import netconn as nc

    options = nc.QUIC(alpn=ALPN, server_name="localhost", ca_file=ca)
    if packet_size:
        options = replace(options, max_udp_payload_size=packet_size, loopback_udp_payload_size=0)
    block = os.urandom(CHUNK)
    async with nc.Connection(nc.Endpoint.host_port("127.0.0.1", port), options) as conn:

        async def one(nbytes: int) -> None:
            stream = await conn.open_stream()
            left = nbytes
            while left > 0:
                piece = block if left >= CHUNK else block[:left]
                await stream.send(piece)
                left -= len(piece)
            await stream.close()
            reply = await stream.receive(1, 64)
            while more := await stream.receive(1, 64):
                reply += more
            assert int(reply) == nbytes, (reply, nbytes)

        start = time.perf_counter()
        await asyncio.gather(*(one(size // streams) for _ in range(streams)))
        return time.perf_counter() - start


async def _aioquic_client(
    port: int, ca: str, size: int, streams: int, packet_size: int | None
) -> float:
    from aioquic.asyncio.client import connect
    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(alpn_protocols=ALPN, is_client=True, server_name="localhost")
    if packet_size:
        config.max_datagram_size = packet_size
    config.load_verify_locations(ca)
    config.verify_mode = ssl.CERT_REQUIRED
    block = os.urandom(CHUNK)
    async with connect("127.0.0.1", port, configuration=config) as client:

        async def one(nbytes: int) -> None:
            reader, writer = await client.create_stream()
            left = nbytes
            while left > 0:
                piece = block if left >= CHUNK else block[:left]
                writer.write(piece)
                await writer.drain()
                left -= len(piece)
            writer.write_eof()
            reply = await reader.read()
            assert int(reply) == nbytes, (reply, nbytes)

        start = time.perf_counter()
        await asyncio.gather(*(one(size // streams) for _ in range(streams)))
        return time.perf_counter() - start


CLIENTS: dict[str, Callable[[int, str, int, int, int | None], Awaitable[float]]] = {
    "netconn": _netconn_client,
    "aioquic": _aioquic_client,
}


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(
    kind: str,
    certs: tuple[str, str, str],
    size: int,
    streams: int,
    use_uvloop: bool = False,
    packet_size: int | None = None,
) -> tuple[float, float]:
    """One transfer against a fresh server process; returns (seconds, CPU seconds).

    The CPU time covers the client's transfer and the server process's whole
    life (start-up included, the same for both implementations).
    """
    ca, cert, key = certs
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    server = context.Process(
        target=_serve, args=(kind, cert, key, queue, use_uvloop, packet_size), daemon=True
    )
    children_before = _cpu_of_children()
    server.start()
    try:
        port = queue.get(timeout=30)
        cpu_before = time.process_time()
        client = asyncio.wait_for(CLIENTS[kind](port, ca, size, streams, packet_size), 600)
        seconds = _run(client, use_uvloop)
        client_cpu = time.process_time() - cpu_before
    finally:
        server.terminate()
        server.join(10)
    return seconds, client_cpu + _cpu_of_children() - children_before


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=float, default=64, help="megabytes per round (default 64)")
    parser.add_argument("--streams", type=int, default=1, help="concurrent streams (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    parser.add_argument("--only", choices=sorted(CLIENTS), help="run one implementation only")
    parser.add_argument("--uvloop", action="store_true", help="run both sides on uvloop")
    parser.add_argument(
        "--packet-size",
        type=int,
        help="UDP payload bytes for both implementations, loopback included (default:"
        " each one's own: netconn 1350, 16000 on loopback after the handshake; aioquic 1200)",
    )
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args(argv)
    size = int(args.size * 1e6)
    kinds = [args.only] if args.only else list(CLIENTS)
    results: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as directory:
        certs = _certificates(directory)
        for round_number in range(args.rounds):
            for kind in kinds if round_number % 2 == 0 else kinds[::-1]:
                seconds, cpu_seconds = run_once(
                    kind, certs, size, args.streams, args.uvloop, args.packet_size
                )
                rate = size / seconds / 1e6
                results[kind].append(rate)
                cpu[kind].append(cpu_seconds / (size / 1e6))
                print(
                    f"round {round_number + 1} {kind:8s} {rate:8.1f} MB/s ({seconds:.2f} s),"
                    f" {cpu[kind][-1] * 1000:.0f} ms CPU per MB"
                )
                sys.stdout.flush()
    summary: dict[str, Any] = {
        "size_bytes": size,
        "streams": args.streams,
        "rounds": args.rounds,
        "loop": "uvloop" if args.uvloop else "asyncio",
        "packet_size": args.packet_size,
        "median_mb_per_s": {kind: statistics.median(rates) for kind, rates in results.items()},
        "rounds_mb_per_s": results,
        "median_cpu_ms_per_mb": {kind: 1000 * statistics.median(v) for kind, v in cpu.items()},
    }
    medians = summary["median_mb_per_s"]
    if "netconn" in medians and "aioquic" in medians:
        summary["ratio"] = medians["netconn"] / medians["aioquic"]
        cpu_medians = summary["median_cpu_ms_per_mb"]
        summary["cpu_ratio"] = cpu_medians["aioquic"] / cpu_medians["netconn"]
        print(
            f"median: netconn {medians['netconn']:.1f} MB/s, aioquic {medians['aioquic']:.1f} MB/s,"
            f" ratio {summary['ratio']:.2f}x; CPU per MB: netconn"
            f" {cpu_medians['netconn']:.0f} ms, aioquic {cpu_medians['aioquic']:.0f} ms,"
            f" {summary['cpu_ratio']:.2f}x less"
        )
    if args.json:
        with open(args.json, "w") as fp:
            json.dump(summary, fp, indent=2)
    return summary


if __name__ == "__main__":
    main()
