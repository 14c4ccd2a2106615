"""The ``netconn`` command: ``cat`` both ways over each stack, and the demo."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import timeout

from netconn.certs import make_local_certificate
from netconn.demo import CASES, run_demo


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def _netconn(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``python -m netconn ARGS`` with pipes; kill and reap it on the way out."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen(
        [sys.executable, "-m", "netconn", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        yield proc
    finally:
        proc.kill()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()
        proc.wait()


def _listening(server: subprocess.Popen[bytes], port: int) -> None:
    assert server.stderr is not None
    line = server.stderr.readline().decode()
    assert f"listening on port {port}" in line, line


@pytest.mark.parametrize("stack", ["--tcp", "--tls", "--quic", "--ws", "--wss"])
def test_cat_copies_both_ways(stack: str, tmp_path: Path) -> None:
    port = _free_port(socket.SOCK_DGRAM if stack == "--quic" else socket.SOCK_STREAM)
    cert = make_local_certificate(directory=str(tmp_path))
    secure = stack in ("--tls", "--wss", "--quic")
    server_tls = ["--cert", cert.cert, "--key", cert.key] if secure else []
    client_tls = ["--ca", cert.ca] if secure else []
    # WebSocket moves messages: each side exits once its stdin ended and replies stopped.
    idle = ["--idle", "1"]
    with _netconn("cat", stack, *idle, "--listen", "127.0.0.1", str(port), *server_tls) as server:
        _listening(server, port)
        assert server.stdin is not None
        server.stdin.write(b"from server\n")
        server.stdin.close()  # the server half-closes once its stdin ends
        with _netconn("cat", stack, *idle, "localhost", str(port), *client_tls) as client:
            client_out, client_err = client.communicate(b"from client\n", timeout(20))
        assert server.stdout is not None and server.stderr is not None
        server_out = server.stdout.read()
        server.wait(timeout(20))
        server_err = server.stderr.read()
    assert server_out == b"from client\n", server_err
    assert client_out == b"from server\n", client_err
    assert b"ready" in client_err
    assert b"path satisfied lo[loopback] 127.0.0.1:" in client_err
    assert client.returncode == 0 and server.returncode == 0


def test_cat_listener_makes_a_certificate_when_none_is_given() -> None:
    port = _free_port(socket.SOCK_STREAM)
    with _netconn("cat", "--tls", "--listen", "127.0.0.1", str(port)) as server:
        assert server.stderr is not None
        line = server.stderr.readline().decode()
        assert "clients trust" in line, line
        ca = line.rsplit(" ", 1)[1].strip()
        _listening(server, port)
        assert server.stdin is not None
        server.stdin.close()
        with _netconn("cat", "--tls", "--ca", ca, "localhost", str(port)) as client:
            _, err = client.communicate(b"hi\n", timeout(20))
        assert b"ready" in err, err
        assert server.stdout is not None
        assert server.stdout.read() == b"hi\n"


def test_cat_over_udp_sends_datagrams_both_ways() -> None:
    port = _free_port(socket.SOCK_DGRAM)
    with _netconn("cat", "--udp", "--listen", "127.0.0.1", str(port)) as server:
        _listening(server, port)
        with _netconn("cat", "--udp", "--idle", "1", "localhost", str(port)) as client:
            assert client.stdin and client.stdout and server.stdin and server.stdout
            client.stdin.write(b"ping\n")
            client.stdin.flush()
            assert server.stdout.readline() == b"ping\n"  # the flow exists now
            server.stdin.write(b"pong\n")
            server.stdin.flush()
            assert client.stdout.readline() == b"pong\n"
            client.stdin.close()
            assert client.wait(timeout(10)) == 0  # exits once replies stop


def test_cat_reports_a_refused_port_clearly() -> None:
    port = _free_port(socket.SOCK_STREAM)
    with _netconn("cat", "127.0.0.1", str(port)) as client:
        _, err = client.communicate(b"", timeout(20))
    assert client.returncode == 1
    assert b"ConnectionRefused" in err


async def test_demo_runs_every_stack() -> None:
    out = io.StringIO()
    status = await run_demo(megabytes=1, out=out)
    text = out.getvalue()
    assert status == 0, text
    assert "QUIC stream, qh3 engine" in [c.name for c in CASES]  # qh3 is installed for the tests
    for case in CASES:
        assert f"== {case.name} ==" in text
    assert "FAILED" not in text
    assert text.count(" ready\n") == len(CASES), text  # each client
    assert text.count("accepted (ready)") == len(CASES), text  # each server
    assert text.count("path   satisfied lo[loopback] 127.0.0.1:") == len(CASES)
    assert text.count("MB/s") == len(CASES)
