"""Measure path reporting and racing in the lab: ``python -m netconn.lab.measure``.

Needs root. Prints the median and worst of ``--runs`` repetitions of:

- the lab's build and teardown;
- Happy Eyeballs with the server's IPv6 address blackholed (time to ready);
- a link going down -> ``PathMonitor`` update, and -> connection inviable;
- data sent into a blackhole -> TCP inviable (``TCP_INFO``), and back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator, Callable

from .. import Connection, Endpoint, Listener, NetconnError, Parameters, PathMonitor, PathStatus
from ..stacks import TCP
from . import Lab

__all__ = ["main"]


@contextlib.asynccontextmanager
async def _echo(lab: Lab) -> AsyncIterator[int]:
    with lab.inside(lab.server):
        listener = Listener(TCP(), port=0)
        await listener.start()

    async def echo(conn: Connection[TCP]) -> None:
        with contextlib.suppress(NetconnError):
            while data := await conn.receive(1, 65536):
                await conn.send(data)

    task = asyncio.create_task(listener.run(echo))
    try:
        yield listener.port
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await listener.cancel()


async def _wait(predicate: Callable[[], bool], limit: float = 30.0) -> float:
    """Seconds until ``predicate()`` holds (polled every millisecond)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not predicate():
        if loop.time() - start > limit:
            raise TimeoutError("the lab did not report in time")
        await asyncio.sleep(0.001)
    return loop.time() - start


async def _race(stagger: float) -> float:
    with Lab() as lab:
        lab.blackhole(lab.server.ipv6)
        async with _echo(lab) as port:
            with lab.inside(lab.client):
                params = Parameters(connection_attempt_delay=stagger)
                async with Connection(lab.endpoint(lab.server, port), TCP(), params) as conn:
                    return conn.establishment_report.duration


async def _link_down(debounce: float) -> tuple[float, float]:
    with Lab() as lab:
        async with _echo(lab) as port:
            with lab.inside(lab.client):
                params = Parameters(viability_debounce=debounce)
                endpoint = Endpoint.host_port(lab.server.ipv4, port)
                async with (
                    PathMonitor(debounce=0.05) as monitor,
                    Connection(endpoint, TCP(), params) as conn,
                ):
                    loop = asyncio.get_running_loop()
                    start = loop.time()
                    lab.set_link(lab.client, up=False)
                    await _wait(
                        lambda: (
                            monitor.current_path is not None
                            and monitor.current_path.status is PathStatus.UNSATISFIED
                        )
                    )
                    to_monitor = loop.time() - start
                    await _wait(lambda: not conn.is_viable)
                    return to_monitor, loop.time() - start


async def _tcp_stall(debounce: float) -> tuple[float, float]:
    with Lab() as lab:
        async with _echo(lab) as port:
            with lab.inside(lab.client):
                params = Parameters(viability_debounce=debounce)
                endpoint = Endpoint.host_port(lab.server.ipv4, port)
                async with Connection(endpoint, TCP(), params) as conn:
                    rule = lab.blackhole(lab.server.ipv4)
                    await conn.send(b"into the void")
                    down = await _wait(lambda: not conn.is_viable)
                    lab.remove(rule)
                    up = await _wait(lambda: conn.is_viable)
                    return down, up


def _row(name: str, values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    return f"{name:<56} median {statistics.median(ms):8.1f} ms   max {ms[-1]:8.1f} ms"


async def _main(runs: int) -> None:
    builds: list[float] = []
    for _ in range(runs):
        start = time.monotonic()
        with Lab():
            pass
        builds.append(time.monotonic() - start)
    print(_row("lab build + teardown", builds))
    for stagger in (0.25, 0.1):
        durations = [await _race(stagger) for _ in range(runs)]
        print(_row(f"race, IPv6 blackholed, stagger {stagger * 1000:.0f} ms: ready", durations))
    for debounce in (0.0, 0.5):
        results = [await _link_down(debounce) for _ in range(runs)]
        print(
            _row("link down -> PathMonitor unsatisfied (debounce 50 ms)", [r[0] for r in results])
        )
        print(
            _row(
                f"link down -> inviable (viability_debounce {debounce} s)", [r[1] for r in results]
            )
        )
    stalls = [await _tcp_stall(0.0) for _ in range(runs)]
    print(_row("TCP data blackholed -> inviable (TCP_INFO, no debounce)", [s[0] for s in stalls]))
    print(_row("blackhole removed -> viable again", [s[1] for s in stalls]))


def main() -> None:
    """Run the measurements and print one line per figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("--runs", type=int, default=5, help="repetitions of each (default 5)")
    args = parser.parse_args()
    reason = Lab.unavailable_reason()
    if reason is not None:
        raise SystemExit(reason)
    asyncio.run(_main(args.runs))


if __name__ == "__main__":
    main()
