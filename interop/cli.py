"""``python -m interop`` / ``netconn-interop``: run the cases, write the matrix."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from .cases import CASES
from .public import PUBLIC_SERVERS
from .report import to_markdown, write_reports
from .runner import COLUMNS, RunOptions, run_matrix

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="netconn-interop",
        description="Run QUIC interop cases between netconn and independent implementations "
        "on loopback, and write the results as Markdown, JSON and HTML.",
    )
    peers = sorted({p for p, _ in COLUMNS})
    parser.add_argument(
        "--peers",
        default=",".join(peers),
        help=f"comma-separated peers (default: all of {', '.join(peers)})",
    )
    parser.add_argument(
        "--roles",
        default="client,server",
        help="netconn's roles: client (peer serves), server (peer fetches)",
    )
    parser.add_argument(
        "--cases",
        default=",".join(c.name for c in CASES),
        help="comma-separated case names (default: all)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("interop-results"),
        help="folder for results.md, results.json, index.html",
    )
    parser.add_argument(
        "--size-factor",
        type=float,
        default=1.0,
        help="scale every file size (e.g. 0.1 for a quick run)",
    )
    parser.add_argument("--case-timeout", type=float, default=60.0, help="seconds per case")
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep files, logs and qlogs under this folder"
    )
    parser.add_argument(
        "--list", action="store_true", help="list cases and public servers, then exit"
    )
    parser.add_argument(
        "--public",
        default=None,
        metavar="NAMES",
        help="run the client cases against these public servers (comma-separated, "
        "or 'all'); this contacts the internet",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run from the command line; returns 0 when nothing failed, 1 otherwise."""
    args = _parser().parse_args(argv)
    if args.list:
        for case in CASES:
            print(f"{case.name:13} {case.description}")
        print()
        for server in PUBLIC_SERVERS:
            print(
                f"{server.name:10} {server.host}:{server.port} alpn={','.join(server.alpn)} "
                f"cases={','.join(sorted(server.cases))}"
            )
        return 0
    if args.public:
        from .public_run import run_public

        names = None if args.public == "all" else [n for n in args.public.split(",") if n]
        unknown_servers = set(names or ()) - {s.name for s in PUBLIC_SERVERS}
        if unknown_servers:
            print(
                f"unknown public server(s): {', '.join(sorted(unknown_servers))}", file=sys.stderr
            )
            return 2
        matrix = asyncio.run(run_public(names, [c for c in args.cases.split(",") if c]))
    else:
        peers = {p for p in args.peers.split(",") if p}
        roles = {r for r in args.roles.split(",") if r}
        unknown = peers - {p for p, _ in COLUMNS}
        if unknown:
            print(f"unknown peer(s): {', '.join(sorted(unknown))}", file=sys.stderr)
            return 2
        known_cases = {c.name for c in CASES}
        cases = [c for c in args.cases.split(",") if c]
        if set(cases) - known_cases:
            print(
                f"unknown case(s): {', '.join(sorted(set(cases) - known_cases))}", file=sys.stderr
            )
            return 2
        options = RunOptions(
            columns=[(p, r) for p, r in COLUMNS if p in peers and r in roles],
            cases=cases,
            size_factor=args.size_factor,
            case_timeout=args.case_timeout,
            workdir=args.keep,
            log=lambda line: print(line, flush=True),
        )
        matrix = asyncio.run(run_matrix(options))
    paths = write_reports(matrix, args.output)
    print()
    print(to_markdown(matrix))
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 1 if matrix.counts()["failed"] else 0
