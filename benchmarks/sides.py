"""TCP handshakes with the server's and the client's library chosen apart.

Which end limits the handshake rate, and what each end's process spends per
handshake (CPU time, user and system)::

    python -m benchmarks.sides --loop uvloop --handshakes 2000 --rounds 2

Every pairing of netconn and asyncio streams runs in turn; each round is a
fresh client process against one server process per pairing.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .api import ConnectOptions, Env, Stream
from .asyncio_impl import AsyncioStreams
from .netconn_impl import NetconnStream
from .workloads import _echo

_ENV = Env(ca="", cert="", key="")


def _impl(name: str) -> NetconnStream | AsyncioStreams:
    return NetconnStream(tls=False) if name == "netconn" else AsyncioStreams(tls=False)


def _run(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    factory = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main())


def _cpu() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _serve(impl: str, loop: str) -> None:
    """Print the port, serve until stdin closes, then print the CPU time spent serving."""

    async def main() -> None:
        async def on_stream(stream: Stream) -> None:
            await _echo(stream)

        async with _impl(impl).serve(_ENV, on_stream, lambda data: data) as port:
            print(port, flush=True)
            running = asyncio.get_running_loop()
            done = running.create_future()

            def stop() -> None:
                if not done.done():
                    done.set_result(None)

            running.add_reader(0, stop)
            start = _cpu()
            await done
            user, system = (end - begin for end, begin in zip(_cpu(), start, strict=True))
            print(f"{user} {system}", flush=True)

    _run(loop, main)


def _connect(impl: str, loop: str, port: int, count: int) -> None:
    """Make ``count`` handshakes; print the rate and the CPU time spent."""

    async def main() -> None:
        client = _impl(impl)
        start, began = _cpu(), time.perf_counter()
        for _ in range(count):
            session = await client.connect(_ENV, port, ConnectOptions())
            await (await session.stream()).send(b"x")
            await session.close()
        elapsed = time.perf_counter() - began
        user, system = (end - begin for end, begin in zip(_cpu(), start, strict=True))
        print(f"{count / elapsed} {user} {system}")

    _run(loop, main)


def _pairing(server: str, client: str, loop: str, count: int, rounds: int) -> None:
    me = [sys.executable, "-m", "benchmarks.sides"]
    serving = subprocess.Popen(
        [*me, "--serve", server, "--loop", loop], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert serving.stdin is not None and serving.stdout is not None
    port = serving.stdout.readline().decode().strip()
    made = 0
    for _ in range(rounds):
        out = subprocess.run(
            [*me, "--connect", client, "--loop", loop, "--port", port, "--handshakes", str(count)],
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        rate, user, system = (float(x) for x in out.split())
        made += count
        print(
            f"server {server:8} client {client:8} {loop}: {rate:7,.0f} handshakes/s; "
            f"client CPU {user / count * 1e6:.0f} us user + {system / count * 1e6:.0f} us system"
        )
    serving.stdin.close()
    user, system = (float(x) for x in serving.stdout.readline().split())
    serving.wait()
    print(
        f"  server CPU {user / made * 1e6:.0f} us user + {system / made * 1e6:.0f} us system"
        " per handshake"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--handshakes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", choices=("netconn", "asyncio"))
    parser.add_argument("--connect", choices=("netconn", "asyncio"))
    parser.add_argument("--port", type=int)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve, args.loop)
    elif args.connect:
        _connect(args.connect, args.loop, args.port, args.handshakes)
    else:
        for server in ("asyncio", "netconn"):
            for client in ("asyncio", "netconn"):
                _pairing(server, client, args.loop, args.handshakes, args.rounds)


if __name__ == "__main__":
    main()
