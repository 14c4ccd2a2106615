"""mypy --strict accepts correct typed-message code and rejects the wrong message type.

Each snippet is checked by mypy in a subprocess. In the must-fail snippet,
every line marked ``# E: code`` must get exactly that error, and no other
line may get one.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

HEADER = """\
from __future__ import annotations

from dataclasses import dataclass

import netconn as nc


@dataclass
class Chat:
    text: str


@dataclass
class Other:
    number: int

"""

MUST_PASS = (
    HEADER
    + """
async def use(ep: nc.Endpoint) -> None:
    chat = nc.Connection(ep, nc.Coder(Chat, nc.WebSocket(nc.TLS())))
    await chat.send(Chat("hi"))
    received: Chat = await chat.receive()
    text: str = received.text
    framed: nc.Connection[nc.Coder[Chat]] = nc.Connection(ep, nc.Coder(Chat, nc.TLV()))
    await framed.send(Chat(text))
    datagrams = nc.Connection(ep, nc.Coder(Other, nc.UDP()))
    number: int = (await datagrams.receive()).number
    await datagrams.send(Other(number))
    await nc.Connection(ep, nc.Coder(Chat, nc.LengthPrefix(nc.TLS()))).send(Chat("x"))

    # The byte-stream and message signatures keep working.
    ws = nc.Connection(ep, nc.WebSocket())
    await ws.send("text")
    await ws.send(b"binary", is_complete=False)
    message: nc.Message = await ws.receive_message()
    await ws.close_with(4000, "bye")
    tlv = nc.Connection(ep, nc.TLV())
    await tlv.send(b"typed", type=3)
    tcp = nc.Connection(ep, nc.TCP())
    await tcp.send(b"bytes", is_complete=True)
    data: bytes = await tcp.receive(1, 100)
    await nc.Connection(ep, nc.UDP()).send(memoryview(data + message.content))
"""
)

MUST_FAIL = (
    HEADER
    + """
async def misuse(ep: nc.Endpoint) -> None:
    chat = nc.Connection(ep, nc.Coder(Chat, nc.WebSocket()))
    await chat.send(Other(1))  # E: arg-type
    await chat.send(b"raw bytes")  # E: arg-type
    wrong: Other = await chat.receive()  # E: assignment
    await chat.receive_message()  # E: misc
    nc.Coder(Chat, nc.TCP())  # E: arg-type
    await nc.Connection(ep, nc.TCP()).send("text")  # E: arg-type
    await nc.Connection(ep, nc.UDP()).send(b"x", type=1)  # E: call-arg
    await nc.Connection(ep, nc.TCP()).close_with(1000)  # E: misc
"""
)


def run_mypy(tmp_path: Path, name: str, source: str) -> list[tuple[int, str, str]]:
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--config-file=",
            "--strict",
            "--python-version=3.11",
            "--show-error-codes",
            "--no-error-summary",
            "--cache-dir",
            str(tmp_path / "cache"),
            str(path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    errors = []
    for line in result.stdout.splitlines():
        match = re.match(rf".*{name}\.py:(\d+): error: (.*)  \[([a-z-]+)\]$", line)
        if match:
            errors.append((int(match.group(1)), match.group(3), match.group(2)))
        elif ": error:" in line:
            raise AssertionError(f"unexpected mypy output: {line}")
    assert result.returncode in (0, 1), result.stderr + result.stdout
    return errors


def expected_errors(source: str) -> list[tuple[int, str]]:
    return [
        (number, match.group(1))
        for number, line in enumerate(source.splitlines(), start=1)
        if (match := re.search(r"# E: ([a-z-]+)$", line))
    ]


def test_correct_coder_use_passes_and_wrong_types_fail(tmp_path: Path) -> None:
    # One test (two mypy runs sharing a cache) to keep the cost of mypy low.
    assert run_mypy(tmp_path, "must_pass", MUST_PASS) == []
    expected = expected_errors(MUST_FAIL)
    assert len(expected) == 8
    errors = run_mypy(tmp_path, "must_fail", MUST_FAIL)
    assert [(line, code) for line, code, _ in errors] == expected
    # The wrong message type is named against the coder's type.
    assert '"Other"' in errors[0][2] and '"Chat"' in errors[0][2]
    assert '"bytes"' in errors[1][2] and '"Chat"' in errors[1][2]
