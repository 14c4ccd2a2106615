"""``python -m benchmarks``: run the scenarios and write JSON, Markdown and PNG reports."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import shlex
import sys
import tempfile
from typing import Any

from netconn.certs import make_local_certificate

from .api import Env
from .machine import CpuTimes, machine_info
from .report import from_json, markdown, plot, to_json
from .runner import ScenarioResult, run_scenarios
from .scenarios import STACKS, scenarios
from .workloads import FULL, QUICK, WORKLOADS

__all__ = ["main"]


def _list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark netconn against the raw libraries it wraps, in alternating rounds.",
    )
    parser.add_argument(
        "--stacks",
        type=_list,
        default=list(STACKS),
        help=f"comma-separated stacks (default: all: {','.join(STACKS)})",
    )
    parser.add_argument(
        "--workloads",
        type=_list,
        default=None,
        help=f"comma-separated workloads (default: all that apply: {','.join(WORKLOADS)})",
    )
    parser.add_argument(
        "--only", type=_list, default=None, help="comma-separated implementations to run"
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5; quick 1)")
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop", "both"],
        default="asyncio",
        help="event loop for servers and clients; 'both' runs every scenario on each",
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness")
    parser.add_argument("--out", default="bench-results", help="output directory")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--progress",
        choices=["auto", "on", "off"],
        default="auto",
        help="progress bar on stderr (auto: when stderr is a terminal)",
    )
    parser.add_argument(
        "--timeout", type=float, default=None, help="seconds one client run may take"
    )
    parser.add_argument(
        "--from-json",
        metavar="PATH",
        default=None,
        help="run nothing: render the Markdown and plots of an earlier results.json",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; return the exit status (1 if a measurement failed)."""
    args = _parser().parse_args(argv)
    if args.from_json is not None:
        with open(args.from_json) as f:
            header, results = from_json(f.read())
        return _write(args, header, results)
    unknown = [s for s in args.stacks if s not in STACKS]
    unknown += [w for w in args.workloads or [] if w not in WORKLOADS]
    if unknown:
        print(f"unknown stack or workload: {', '.join(unknown)}", file=sys.stderr)
        return 2
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    loops = ["asyncio", "uvloop"] if args.loop == "both" else [args.loop]
    progress = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    timeout = args.timeout if args.timeout is not None else (60.0 if args.quick else 300.0)
    cpu = CpuTimes()
    header = {
        "command": "python -m benchmarks " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "mode": "quick" if args.quick else "full",
        "rounds": rounds,
        "loops": loops,
        "machine": machine_info(),
        "scale": {},
    }
    with tempfile.TemporaryDirectory(prefix="netconn-bench-") as directory:
        cert = make_local_certificate(directory=directory)
        plan = []
        for loop in loops:
            env = Env(ca=cert.ca, cert=cert.cert, key=cert.key, loop=loop)
            base = QUICK if args.quick else FULL
            plan += scenarios(args.stacks, args.workloads, quick=args.quick, env=env, base=base)
        header["scale"] = {s.stack: dataclasses.asdict(s.scale) for s in plan}
        results = run_scenarios(
            plan, rounds=rounds, timeout=timeout, progress=progress, only=args.only
        )
    header["cpu_during_run"] = cpu.summary()
    return _write(args, header, results)


def _write(args: argparse.Namespace, header: dict[str, Any], results: list[ScenarioResult]) -> int:
    os.makedirs(args.out, exist_ok=True)
    report = markdown(header, results)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        f.write(to_json(header, results))
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(report)
    if not args.no_plots:
        plot(results, args.out)
    print(report)
    failed = [
        f"{r.stack}/{r.workload}/{i.name}"
        for r in results
        for i in r.implementations.values()
        if i.status == "error" or (i.status == "ok" and any(x is None for x in i.rounds))
    ]
    if failed:
        print(f"failed measurements: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
