"""``netconn demo``: a listener and a client for every stack, over loopback.

For each stack it prints both ends' state transitions, the client's path
(interface, local and remote endpoints) and the throughput it measured.
Adding a stack to the demo is one :class:`DemoCase` in :data:`CASES`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .certs import LocalCertificate, make_local_certificate
from .connection import Connection
from .endpoint import Endpoint
from .listener import Listener
from .stacks.base import Stack
from .stacks.quic import QUIC
from .stacks.tcp import TCP
from .stacks.tls import TLS
from .stacks.udp import UDP
from .stacks.websocket import WebSocket
from .state import State

__all__ = ["CASES", "DemoCase", "DemoResult", "run_case", "run_demo"]

_CHUNK = 256 * 1024
_COUNT = struct.Struct("!Q")
_DONE = b"\x00done"


@dataclass(frozen=True, slots=True)
class DemoCase:
    """One stack in the demo: how to build its server and client sides."""

    name: str
    """Shown as the heading."""
    server: Callable[[LocalCertificate], Stack]
    """The listener's stack, given the demo's certificate."""
    client: Callable[[LocalCertificate], Stack]
    """The client's stack, given the demo's certificate."""
    transfer: Literal["stream", "message", "quic-stream"]
    """Bytes on the connection, messages on it, or bytes on one QUIC stream."""
    message_size: int = 1200
    """Bytes per message, for message transfers."""
    paced: bool = False
    """Yield after every message: for transports without flow control (UDP)."""


CASES: list[DemoCase] = [
    DemoCase("TCP", lambda c: TCP(no_delay=True), lambda c: TCP(no_delay=True), "stream"),
    DemoCase(
        "TLS over TCP",
        lambda c: TLS(certificate=(c.cert, c.key), alpn=["demo"]),
        lambda c: TLS(ca_file=c.ca, alpn=["demo"]),
        "stream",
    ),
    DemoCase("UDP", lambda c: UDP(), lambda c: UDP(), "message", paced=True),
    DemoCase(
        "WebSocket over TCP",
        lambda c: WebSocket(TCP(no_delay=True)),
        lambda c: WebSocket(TCP(no_delay=True)),
        "message",
        message_size=64 * 1024,
    ),
    DemoCase(
        "WebSocket over TLS",
        lambda c: WebSocket(TLS(certificate=(c.cert, c.key))),
        lambda c: WebSocket(TLS(ca_file=c.ca)),
        "message",
        message_size=64 * 1024,
    ),
    DemoCase(
        "QUIC stream",
        lambda c: QUIC(alpn=["demo"], certificate=(c.cert, c.key)),
        lambda c: QUIC(alpn=["demo"], ca_file=c.ca),
        "quic-stream",
    ),
]
if importlib.util.find_spec("qh3") is not None:  # an optional engine: shown when installed
    CASES.append(
        DemoCase(
            "QUIC stream, qh3 engine",
            lambda c: QUIC(alpn=["demo"], certificate=(c.cert, c.key), engine="qh3"),
            lambda c: QUIC(alpn=["demo"], ca_file=c.ca, engine="qh3"),
            "quic-stream",
        )
    )


@dataclass
class DemoResult:
    """What one case measured."""

    name: str
    client_states: list[tuple[float, str]] = field(default_factory=list)
    server_states: list[tuple[float, str]] = field(default_factory=list)
    path: str = ""
    bytes_moved: int = 0
    seconds: float = 0.0
    delivered: str = ""

    @property
    def megabytes_per_second(self) -> float:
        return self.bytes_moved / self.seconds / 1e6 if self.seconds else 0.0


def _recorder(log: list[tuple[float, str]], t0: float) -> Callable[[Any, State], None]:
    return lambda conn, state: log.append((time.perf_counter() - t0, str(state)))


async def _serve_stream(conn: Connection[Any]) -> None:
    total = 0
    while data := await conn.receive(1, _CHUNK):
        total += len(data)
    await conn.send(_COUNT.pack(total), is_complete=True)


async def _serve_quic(conn: Connection[Any]) -> None:
    async for stream in conn.inbound_streams():
        total = 0
        while data := await stream.receive(1, _CHUNK):
            total += len(data)
        await stream.send(_COUNT.pack(total), is_complete=True)
        return


async def _serve_messages(conn: Connection[Any]) -> None:
    count = 0
    while True:
        message = await conn.receive_message()
        if message.content == _DONE:
            await conn.send(_COUNT.pack(count))
            return
        count += 1


async def run_case(case: DemoCase, cert: LocalCertificate, megabytes: float) -> DemoResult:
    """Run one case over loopback and return what it measured."""
    result = DemoResult(case.name)
    t0 = time.perf_counter()
    serve = {"stream": _serve_stream, "message": _serve_messages, "quic-stream": _serve_quic}[
        case.transfer
    ]

    async def handler(conn: Connection[Any]) -> None:
        result.server_states.append((time.perf_counter() - t0, f"accepted ({conn.state})"))
        conn.on_state_update(_recorder(result.server_states, t0))
        await serve(conn)

    async with Listener(case.server(cert), host="127.0.0.1") as listener:
        serving = asyncio.create_task(listener.run(handler))
        client: Connection[Any] = Connection(
            Endpoint.host_port("localhost", listener.port), case.client(cert)
        )
        client.on_state_update(_recorder(result.client_states, t0))
        client.on_path_update(lambda conn, path: setattr(result, "path", path.describe()))
        async with client:
            size = int(megabytes * 1e6)
            start = time.perf_counter()
            if case.transfer == "stream":
                await _send_stream(client, size)
                reply = await client.receive_exactly(_COUNT.size)
                result.bytes_moved = _COUNT.unpack(reply)[0]
            elif case.transfer == "quic-stream":
                stream = await client.open_stream()
                await _send_stream(stream, size)
                reply = await stream.receive_exactly(_COUNT.size)
                result.bytes_moved = _COUNT.unpack(reply)[0]
            else:
                # Datagrams are unreliable: UDP moves an eighth as much.
                total = size // 8 if case.paced else size
                sent = await _send_messages(client, total, case.message_size, case.paced)
                received = _COUNT.unpack((await client.receive_message()).content)[0]
                result.bytes_moved = received * case.message_size
                result.delivered = f"{received}/{sent} messages delivered"
            result.seconds = time.perf_counter() - start
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
    return result


async def _send_stream(client: Any, size: int) -> None:
    """Send ``size`` bytes then end the direction, on a connection or a QUIC stream."""
    block = bytes(_CHUNK)
    left = size
    while left > 0:
        n = min(left, _CHUNK)
        await client.send(block[:n] if n < _CHUNK else block)
        left -= n
    await client.send(b"", is_complete=True)


async def _send_messages(client: Connection[Any], size: int, message_size: int, paced: bool) -> int:
    payload = bytes(message_size)
    count = max(1, size // message_size)
    for _ in range(count):
        await client.send(payload)
        if paced:
            # No flow control (UDP): yield so the receiving side keeps up.
            await asyncio.sleep(0)
    if paced:
        await asyncio.sleep(0.05)  # let the last datagrams land before the marker
    await client.send(_DONE)
    return count


def _print(result: DemoResult, out: Any) -> None:
    print(f"== {result.name} ==", file=out)
    for who, log in (("client", result.client_states), ("server", result.server_states)):
        for at, state in log:
            print(f"  {who:<6} +{at * 1000:8.1f} ms  {state}", file=out)
    print(f"  path   {result.path}", file=out)
    line = f"  moved  {result.bytes_moved / 1e6:.1f} MB in {result.seconds:.3f} s"
    line += f" = {result.megabytes_per_second:.0f} MB/s"
    if result.delivered:
        line += f" ({result.delivered})"
    print(line, file=out)


async def run_demo(megabytes: float = 64.0, out: Any = None) -> int:
    """Run every case in :data:`CASES` and print what happened. Returns an exit status."""
    out = out or sys.stdout
    cert = make_local_certificate()
    failures = 0
    for case in CASES:
        try:
            result = await run_case(case, cert, megabytes)
        except Exception as exc:
            failures += 1
            print(f"== {case.name} ==\n  FAILED: {type(exc).__name__}: {exc}", file=out)
            continue
        _print(result, out)
    return 1 if failures else 0
