"""Running scenarios: a server process and a client process per measurement,
implementations in alternating order, several rounds.

How this works: for each round of a scenario, every implementation is
measured once, in an order that reverses every other round (A B, B A, ...) so
that drift in machine load hits all of them alike. A measurement starts a
fresh server process, waits for its port, runs a fresh client process against
it, then asks the server for what it recorded. Processes come from a
``forkserver`` that has already imported the libraries, so starting one
costs milliseconds and nothing leaks between measurements.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

from .api import Env, Unavailable, Unsupported
from .scenarios import STACKS, Scenario
from .workloads import WORKLOADS, Metric, Scale

__all__ = ["ImplResult", "Progress", "Ratio", "ScenarioResult", "run_scenarios"]

Status = Literal["ok", "unavailable", "unsupported", "error"]
_Pipe = multiprocessing.connection.Connection


@dataclass
class ImplResult:
    """One implementation's rounds in one scenario."""

    name: str
    """Implementation name."""
    status: Status = "ok"
    """``ok``, or why there are no numbers."""
    message: str = ""
    """Why not ``ok``."""
    rounds: list[dict[str, float] | None] = field(default_factory=list)
    """Figures of each round (``None`` for a round that failed)."""

    def median(self, key: str) -> float | None:
        """The median of ``key`` over the rounds that have it."""
        values = [r[key] for r in self.rounds if r is not None and key in r]
        return statistics.median(values) if values else None


@dataclass
class Ratio:
    """How ``subject`` compares with ``reference`` on one metric (> 1: subject better)."""

    subject: str
    reference: str
    metric: str
    rounds: list[float]
    """The ratio within each round where both ran."""

    @property
    def median(self) -> float | None:
        """The median of the per-round ratios."""
        return statistics.median(self.rounds) if self.rounds else None


@dataclass
class ScenarioResult:
    """Everything one scenario measured."""

    stack: str
    workload: str
    loop: str
    title: str
    metrics: tuple[Metric, ...]
    implementations: dict[str, ImplResult]
    ratios: list[Ratio]


class Progress:
    """A one-line progress bar on stderr (shown only when ``enabled``)."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total = total
        self.done = 0
        self.enabled = enabled
        self._start = time.monotonic()
        self._tty = sys.stderr.isatty()

    def step(self, label: str) -> None:
        """Record one finished measurement."""
        self.done += 1
        if not self.enabled:
            return
        width = 30
        filled = round(width * self.done / max(1, self.total))
        elapsed = time.monotonic() - self._start
        eta = elapsed / self.done * (self.total - self.done)
        line = (
            f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
            f"{elapsed:4.0f}s eta {eta:4.0f}s  {label}"
        )
        if self._tty:
            sys.stderr.write("\r\033[K" + line[:150])
            if self.done == self.total:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


# Child processes


def _run_loop(loop: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    else:
        asyncio.run(main())


def _describe(exc: BaseException) -> str:
    lines = traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip().splitlines()[-1]


async def _wait_readable(pipe: _Pipe) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(pipe.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(pipe.fileno())


def _server_main(
    pipe: _Pipe, stack: str, impl_name: str, workload: str, scale: Scale, env: Env
) -> None:
    scenario = Scenario(stack, WORKLOADS[workload], scale, env)
    impl = scenario.implementation(impl_name)

    async def main() -> None:
        stats: dict[str, float] = {}
        on_stream, on_datagram = scenario.workload.server(scale, stats)
        async with impl.serve(env, on_stream, on_datagram) as port:
            pipe.send(("port", port))
            await _wait_readable(pipe)
            pipe.recv()
        pipe.send(("stats", stats))

    try:
        _run_loop(env.loop, main)
    except BaseException as exc:
        pipe.send(("error", f"server: {_describe(exc)}"))


def _client_main(
    pipe: _Pipe, stack: str, impl_name: str, workload: str, scale: Scale, env: Env, port: int
) -> None:
    scenario = Scenario(stack, WORKLOADS[workload], scale, env)
    impl = scenario.implementation(impl_name)
    result: list[dict[str, float]] = []

    async def main() -> None:
        result.append(await scenario.workload.client(impl, env, port, scale))

    try:
        _run_loop(env.loop, main)
    except Unsupported as exc:
        pipe.send(("unsupported", str(exc)))
    except BaseException as exc:
        pipe.send(("error", f"client: {_describe(exc)}"))
    else:
        pipe.send(("result", result[0]))


# The parent


def _context() -> multiprocessing.context.BaseContext:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["benchmarks.scenarios", "aioquic.asyncio", "qh3.asyncio", "websockets.asyncio.server"]
    )
    return ctx


def _receive(pipe: _Pipe, timeout: float, what: str) -> tuple[str, Any]:
    if not pipe.poll(timeout):
        raise TimeoutError(f"{what}: no answer within {timeout:.0f} s")
    try:
        message: tuple[str, Any] = pipe.recv()
    except EOFError:
        raise RuntimeError(f"{what}: the process died") from None
    return message


def _stop(process: multiprocessing.process.BaseProcess) -> None:
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join()


def _measure(
    ctx: Any, scenario: Scenario, impl_name: str, timeout: float
) -> tuple[Status, dict[str, float] | None, str]:
    args = (scenario.stack, impl_name, scenario.workload.name, scenario.scale, scenario.env)
    server_pipe, server_end = ctx.Pipe()
    server = ctx.Process(target=_server_main, args=(server_end, *args), daemon=True)
    server.start()
    server_end.close()
    client = None
    try:
        kind, port = _receive(server_pipe, 30, "server start")
        if kind != "port":
            return "error", None, str(port)
        client_pipe, client_end = ctx.Pipe()
        client = ctx.Process(target=_client_main, args=(client_end, *args, port), daemon=True)
        client.start()
        client_end.close()
        kind, value = _receive(client_pipe, timeout, "client")
        server_pipe.send("stop")
        stop_kind, stats = _receive(server_pipe, 15, "server stop")
        if kind == "unsupported":
            return "unsupported", None, str(value)
        if kind != "result":
            return "error", None, str(value)
        if stop_kind != "stats":
            return "error", None, str(stats)
        return "ok", scenario.workload.combine(value, stats), ""
    except (TimeoutError, RuntimeError, OSError) as exc:
        return "error", None, str(exc)
    finally:
        for process in (client, server):
            if process is not None:
                _stop(process)


def _oriented(metric: Metric, subject: float, reference: float) -> float | None:
    if metric.higher_is_better:
        return subject / reference if reference else None
    return reference / subject if subject else None


def _ratios(scenario: Scenario, results: dict[str, ImplResult], rounds: int) -> list[Ratio]:
    out: list[Ratio] = []
    for subject, reference in scenario.bench.pairs:
        a, b = results.get(subject), results.get(reference)
        if a is None or b is None:
            continue
        for metric in scenario.workload.metrics:
            per_round: list[float] = []
            for ra, rb in zip(a.rounds, b.rounds, strict=False):
                if ra is None or rb is None or metric.key not in ra or metric.key not in rb:
                    continue
                value = _oriented(metric, ra[metric.key], rb[metric.key])
                if value is not None:
                    per_round.append(value)
            out.append(Ratio(subject, reference, metric.key, per_round))
    return out


def run_scenarios(
    scenarios: list[Scenario],
    *,
    rounds: int,
    timeout: float,
    progress: bool,
    only: list[str] | None = None,
) -> list[ScenarioResult]:
    """Run every scenario for ``rounds`` alternating rounds; ``only`` limits implementations."""
    ctx = _context()
    plans: list[tuple[Scenario, list[str], dict[str, ImplResult]]] = []
    for scenario in scenarios:
        results: dict[str, ImplResult] = {}
        runnable: list[str] = []
        for impl in STACKS[scenario.stack].implementations:
            if only is not None and impl.name not in only:
                continue
            result = ImplResult(impl.name)
            results[impl.name] = result
            try:
                impl.check()
            except (Unavailable, ImportError) as exc:
                result.status = "unavailable"
                result.message = str(exc) or "not available in this build"
                continue
            runnable.append(impl.name)
        plans.append((scenario, runnable, results))
    bar = Progress(sum(len(r) * rounds for _, r, _ in plans), enabled=progress)
    out: list[ScenarioResult] = []
    for scenario, runnable, results in plans:
        for round_number in range(rounds):
            order = runnable if round_number % 2 == 0 else runnable[::-1]
            for name in order:
                result = results[name]
                if result.status == "unsupported":
                    bar.step(f"{scenario.stack} {scenario.workload.name} {name} (unsupported)")
                    continue
                status, values, message = _measure(ctx, scenario, name, timeout)
                if status == "unsupported":
                    result.status, result.message = status, message
                elif status == "error":
                    result.message = message
                result.rounds.append(values)
                bar.step(f"{scenario.env.loop} {scenario.stack} {scenario.workload.name} {name}")
        for result in results.values():
            if result.status == "ok" and not any(r is not None for r in result.rounds):
                result.status = "error"
        out.append(
            ScenarioResult(
                scenario.stack,
                scenario.workload.name,
                scenario.env.loop,
                scenario.workload.title,
                scenario.workload.metrics,
                results,
                _ratios(scenario, results, rounds),
            )
        )
    return out
