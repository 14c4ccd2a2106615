"""The stack is the type: QUIC-only methods type-check on Connection[QUIC] only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import timeout

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
import netconn as nc

async def use(conn: nc.Connection[nc.QUIC]) -> bytes:
    stream: nc.QUICStream = await conn.open_stream("unidirectional")
    receipt: nc.DeliveryReceipt = await stream.send(b"x", receipt=True)
    await receipt
    await stream.send(b"x", is_complete=True)
    async for inbound in conn.inbound_streams():
        return await inbound.receive()
    await conn.datagrams.send(b"d")
    size: int = conn.usable_datagram_frame_size
    conn.keepalive = 1.5
    return b"" if size else b"-"
"""

BAD = """
import netconn as nc

async def misuse(tcp: nc.Connection[nc.TCP], udp: nc.Connection[nc.UDP]) -> None:
    await tcp.open_stream()
    tcp.inbound_streams()
    await udp.datagrams.send(b"x")
    print(tcp.usable_datagram_frame_size)
"""


def run_mypy(directory: Path, source: str) -> subprocess.CompletedProcess[str]:
    path = directory / "case.py"
    path.write_text(source)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--cache-dir",
            str(ROOT / ".mypy_cache"),
            str(path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout(120),
    )


def test_quic_methods_type_check_on_quic(tmp_path: Path) -> None:
    result = run_mypy(tmp_path, GOOD)
    assert result.returncode == 0, result.stdout + result.stderr


def test_quic_methods_rejected_on_other_stacks(tmp_path: Path) -> None:
    result = run_mypy(tmp_path, BAD)
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    # One error per misuse, each on its own line, each about the self type.
    assert [int(line.split(":")[1]) for line in errors] == [5, 6, 7, 8], result.stdout
    assert all("self" in line or "Connection[QUIC]" in line for line in errors), result.stdout
