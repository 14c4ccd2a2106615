"""The benchmark harness's quick mode still runs end to end (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import timeout

import netconn

ROOT = Path(__file__).resolve().parent.parent
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RATES = {"bulk", "streams", "echo", "handshake", "resumed", "zero_rtt"}


def _run(out: Path, *args: str) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), *args]
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout(240), check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads((out / "results.json").read_text())
    return report


def _scenario(report: dict[str, Any], stack: str, workload: str, loop: str) -> dict[str, Any]:
    for item in report["scenarios"]:
        if (item["stack"], item["workload"], item["loop"]) == (stack, workload, loop):
            found: dict[str, Any] = item
            return found
    raise AssertionError(f"no {stack}/{workload}/{loop} in the report")


def _check_measured(item: dict[str, Any], name: str) -> None:
    impl = item["implementations"][name]
    assert impl["status"] == "ok", impl
    for metric in item["metrics"]:
        values = [r[metric["key"]] for r in impl["rounds"]]
        assert values and all(isinstance(v, float) and math.isfinite(v) for v in values), (
            metric,
            impl,
        )
        if item["workload"] in RATES:  # rates and latencies cannot be zero
            assert all(v > 0 for v in values), (metric, impl)


@pytest.mark.timeout(timeout(300))
def test_quick_mode_every_stack(tmp_path: Path) -> None:
    report = _run(tmp_path, "--stacks", "tcp,tls,udp,websocket,quic")
    machine = report["header"]["machine"]
    assert machine["cpu"] and machine["cores"] >= 1 and machine["kernel"]
    assert machine["libraries"]["aioquic"]
    expected = {
        "tcp": {"bulk", "echo", "handshake", "idle", "slow_reader"},
        "tls": {"bulk", "echo", "handshake", "resumed", "idle", "slow_reader"},
        "udp": {"echo", "datagrams"},
        "websocket": {"bulk", "echo", "handshake", "idle", "slow_reader"},
        "quic": {"bulk", "streams", "echo", "handshake", "resumed", "zero_rtt", "datagrams"},
    }
    for stack, workloads in expected.items():
        seen = {i["workload"] for i in report["scenarios"] if i["stack"] == stack}
        assert workloads <= seen, (stack, seen)
    for stack in ("tcp", "tls", "udp"):
        for item in (i for i in report["scenarios"] if i["stack"] == stack):
            _check_measured(item, "netconn")
            if item["workload"] != "resumed":  # asyncio cannot resume a TLS session
                _check_measured(item, "asyncio")
                if item["workload"] in RATES:
                    assert all(r["median"] > 0 for r in item["ratios"]), item["ratios"]
    resumed = _scenario(report, "tls", "resumed", "asyncio")["implementations"]["asyncio"]
    assert resumed["status"] == "unsupported" and resumed["rounds"][0] is None
    _check_measured(_scenario(report, "websocket", "echo", "asyncio"), "websockets")
    _check_measured(_scenario(report, "quic", "bulk", "asyncio"), "aioquic")
    _check_measured(_scenario(report, "quic", "zero_rtt", "asyncio"), "aioquic")
    # Stacks this build lacks say so and carry no numbers.
    for stack, name in (("websocket", "WebSocket"), ("quic", "QUIC")):
        netconn_side = _scenario(report, stack, "echo", "asyncio")["implementations"]["netconn"]
        if hasattr(netconn, name):
            assert netconn_side["status"] == "ok", netconn_side
        else:
            assert netconn_side["status"] == "unavailable"
            assert "not available in this build" in netconn_side["message"]
            assert netconn_side["rounds"] == []
    markdown = (tmp_path / "results.md").read_text()
    assert "## TCP (asyncio loop)" in markdown and "netconn ÷ asyncio" in markdown
    assert machine["cpu"] in markdown
    for name in ("ratios", "tcp", "tls", "udp", "websocket", "quic"):
        png = (tmp_path / f"{name}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000


@pytest.mark.timeout(timeout(200))
def test_quick_mode_both_event_loops(tmp_path: Path) -> None:
    report = _run(tmp_path, "--stacks", "tcp,udp", "--workloads", "echo", "--loop", "both")
    assert report["header"]["loops"] == ["asyncio", "uvloop"]
    for loop in ("asyncio", "uvloop"):
        for stack in ("tcp", "udp"):
            item = _scenario(report, stack, "echo", loop)
            _check_measured(item, "netconn")
            _check_measured(item, "asyncio")
    assert "Event loops side by side" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "ratios.png").read_bytes().startswith(PNG_MAGIC)
    # The reports render again from the JSON alone.
    again = tmp_path / "again"
    source = str(tmp_path / "results.json")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--from-json", source, "--out", str(again)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout(60),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert (again / "results.md").read_text() == (tmp_path / "results.md").read_text()
    assert (again / "tcp.png").read_bytes().startswith(PNG_MAGIC)


def _script(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout(120),
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.mark.timeout(timeout(150))
def test_quic_bulk_script_runs_both_implementations(tmp_path: Path) -> None:
    out = tmp_path / "bulk.json"
    _script(
        "benchmarks.quic_bulk", "--size", "1", "--rounds", "1", "--packet-size", "1350",
        "--json", str(out),
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert report["packet_size"] == 1350 and report["size_bytes"] == 1_000_000
    for name in ("netconn", "aioquic"):
        assert report["median_mb_per_s"][name] > 0
        assert report["median_cpu_ms_per_mb"][name] > 0


@pytest.mark.timeout(timeout(150))
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sides_script_pairs_every_server_with_every_client(loop: str) -> None:
    out = _script("benchmarks.sides", "--loop", loop, "--handshakes", "20", "--rounds", "1")
    pairs = [line.split()[1:4:2] for line in out.splitlines() if line.startswith("server ")]
    assert sorted(pairs) == [[s, c] for s in ("asyncio", "netconn") for c in ("asyncio", "netconn")]
    assert out.count("server CPU") == 4
