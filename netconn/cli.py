"""The ``netconn`` command: ``netconn cat`` (a netcat over every stack) and ``netconn demo``."""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from .certs import make_local_certificate
from .connection import Connection
from .endpoint import Endpoint
from .errors import ConnectionClosed, NetconnError
from .listener import Listener
from .stacks.base import Stack
from .stacks.quic import QUIC
from .stacks.tcp import TCP
from .stacks.tls import TLS
from .stacks.udp import UDP
from .stacks.websocket import WebSocket
from .state import Ready, State

__all__ = ["main"]

_STDIN_CHUNK = 65536


def _certificate(args: argparse.Namespace) -> tuple[str, str] | None:
    """The --cert/--key pair; a listener without one gets a fresh local certificate."""
    if args.cert:
        return (args.cert, args.key or args.cert)
    if not args.listen:
        return None
    local = make_local_certificate()
    print(f"netconn: using a new local certificate; clients trust {local.ca}", file=sys.stderr)
    return (local.cert, local.key)


def _build_stack(args: argparse.Namespace) -> Stack:
    tcp = TCP(no_delay=True)
    if args.udp:
        return UDP()
    secure = args.tls or args.wss or args.quic
    certificate = _certificate(args) if secure else None
    if args.quic:
        return QUIC(
            alpn=args.alpn or ["hq-interop"],
            server_name=args.server_name,
            ca_file=args.ca,
            certificate=certificate,
            insecure_skip_verify=args.insecure,
        )
    inner: Stack = tcp
    if args.tls or args.wss:
        inner = TLS(
            tcp,
            alpn=args.alpn or (),
            server_name=args.server_name,
            ca_file=args.ca,
            certificate=certificate,
            insecure_skip_verify=args.insecure,
        )
    if args.ws or args.wss:
        return WebSocket(inner, path=args.path)
    return inner


def _log_state(connection: Connection[Any], state: State) -> None:
    print(f"netconn: {state}", file=sys.stderr)


async def _stdin_chunks() -> AsyncIterator[bytes]:
    """Read stdin in a daemon thread: asyncio cannot poll regular files or every
    terminal, and a daemon thread blocked in read() does not hold up exit."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=4)  # bounds what is read ahead
    stdin = cast(io.BufferedReader, sys.stdin.buffer)

    def reader() -> None:
        while True:
            try:
                chunk = stdin.read1(_STDIN_CHUNK)
            except (OSError, ValueError):
                chunk = b""
            try:
                asyncio.run_coroutine_threadsafe(queue.put(chunk), loop).result()
            except RuntimeError:  # the loop has gone
                return
            if not chunk:
                return

    threading.Thread(target=reader, name="netconn-stdin", daemon=True).start()
    while chunk := await queue.get():
        yield chunk


async def _pump(conn: Any, message_based: bool, idle: float) -> None:
    """Copy stdin to ``conn`` and ``conn`` to stdout.

    ``conn`` is a connection or a QUIC stream. Byte streams end when both
    directions have ended (half-close aware).
    Datagram flows have no end: after stdin ends they keep printing replies
    until none came for ``idle`` seconds.
    """
    out = sys.stdout.buffer
    stdin_done = asyncio.Event()

    async def upstream() -> None:
        async for chunk in _stdin_chunks():
            await conn.send(chunk)
        if not message_based:
            await conn.send(b"", is_complete=True)
        stdin_done.set()

    async def downstream() -> None:
        while True:
            if message_based:
                try:
                    async with asyncio.timeout(idle):
                        message = await conn.receive_message()
                except TimeoutError:
                    if stdin_done.is_set():
                        return
                    continue
                except ConnectionClosed:
                    return
                data = message.content
            else:
                data = await conn.receive(1, 65536)
                if not data:
                    return
            out.write(data)
            out.flush()

    async with asyncio.TaskGroup() as group:
        up = group.create_task(upstream())
        await downstream()
        if message_based or getattr(conn, "state", Ready()) != Ready():
            up.cancel()


async def _cat(args: argparse.Namespace) -> int:
    stack = _build_stack(args)
    message_based = stack.kind == "message"
    if args.listen:
        host = args.host if args.host not in (None, "*") else None
        async with Listener(stack, host=host, port=args.port) as listener:
            print(
                f"netconn: listening on port {listener.port} ({stack.describe()})", file=sys.stderr
            )
            conn = await listener.accept()
            if conn is None:
                return 1
            print(f"netconn: connection from {conn.remote_endpoint}", file=sys.stderr)
            conn.on_state_update(_log_state)
            if stack.kind == "multiplex":
                async for stream in cast(Connection[QUIC], conn).inbound_streams():
                    await _pump(stream, False, args.idle)
                    break
            else:
                await _pump(conn, message_based, args.idle)
            await conn.cancel()
        return 0
    endpoint = Endpoint.host_port(args.host, args.port)
    conn = Connection(endpoint, stack).on_state_update(_log_state)
    conn.on_path_update(lambda c, p: print(f"netconn: path {p.describe()}", file=sys.stderr))
    async with conn:
        if stack.kind == "multiplex":
            stream = await cast(Connection[QUIC], conn).open_stream()
            await _pump(stream, False, args.idle)
        else:
            await _pump(conn, message_based, args.idle)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="netconn", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    cat = commands.add_parser("cat", help="stdin to the peer, the peer to stdout")
    which = cat.add_mutually_exclusive_group()
    which.add_argument("--tcp", action="store_true", help="plain TCP (default)")
    which.add_argument("--tls", action="store_true", help="TLS over TCP")
    which.add_argument("--udp", action="store_true", help="UDP datagrams")
    which.add_argument("--ws", action="store_true", help="WebSocket over TCP (binary messages)")
    which.add_argument("--wss", action="store_true", help="WebSocket over TLS")
    which.add_argument(
        "--quic", action="store_true", help="QUIC: one bidirectional stream (ALPN hq-interop)"
    )
    cat.add_argument("-l", "--listen", action="store_true", help="accept one connection")
    cat.add_argument("host", nargs="?", default=None, help="host to connect to or bind")
    cat.add_argument("port", type=int, help="port")
    cat.add_argument("--alpn", action="append", help="ALPN protocol to offer (repeatable)")
    cat.add_argument("--path", default="/", help="WebSocket request path (default /)")
    cat.add_argument("--server-name", help="TLS server name (SNI) to send and verify")
    cat.add_argument("--ca", help="PEM file of trusted CAs (default: system store)")
    cat.add_argument(
        "--cert",
        help="PEM certificate chain (server identity or client cert); "
        "a listener without one makes a local certificate",
    )
    cat.add_argument("--key", help="PEM private key for --cert")
    cat.add_argument(
        "--insecure", action="store_true", help="accept any certificate (testing only)"
    )
    cat.add_argument(
        "--idle",
        type=float,
        default=2.0,
        help="datagrams: after stdin ends, exit once no reply came for this many seconds",
    )

    demo = commands.add_parser("demo", help="a live loopback demo of every stack")
    demo.add_argument(
        "--megabytes", type=float, default=64.0, help="bytes per stream transfer, in MB"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``netconn`` command."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "cat":
            if not args.listen and args.host is None:
                print("netconn cat: a host is needed unless --listen", file=sys.stderr)
                return 2
            return asyncio.run(_cat(args))
        from .demo import run_demo

        return asyncio.run(run_demo(megabytes=args.megabytes))
    except NetconnError as error:
        print(f"netconn: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
