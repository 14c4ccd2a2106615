"""The interop runner: its matrix against local peers, its reports, its CLI, its layers."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from conftest import Certs, timeout

import netconn as nc
from interop.cases import CASES, SUPPORT
from interop.cli import main
from interop.peers import (
    PICOQUIC,
    Certificates,
    find_peer,
    picoquic_client,
    picoquic_server,
)
from interop.public import PUBLIC_SERVERS, PublicServer, public_server
from interop.public_run import PUBLIC_CASES, run_public
from interop.report import to_html, to_markdown, write_reports
from interop.results import Matrix, Outcome, Result
from interop.runner import COLUMNS, CaseFailed, RunOptions, _check_hashes, _Env, run_matrix
from netconn.lab.relay import Schedule, UDPRelay
from netconn.quic.h3 import H3Client, serve_h3
from netconn.quic.hq import HQ_NOT_FOUND, hq_get, resolve_under, serve_hq

CASE_NAMES = [c.name for c in CASES]


# Interop problems seen on the peer's side, which the matrix reports as failures:
# after a 2 s blackout picoquic's server sends nothing more (its own qlog shows
# no probe until the idle timeout); picoquic's own client fails the same way
# through the relay (test_relay_blackout_stalls_picoquic_against_itself).
# The test accepts either outcome for these cells.
KNOWN_PEER_ISSUES = {("picoquic", "client", "blackhole")}
# Under 30% loss picoquic's server sometimes stops too: in a few runs in 100 its
# qlog shows a response lost, a path MTU probe (PING padded to 1440 bytes) whose
# ACK is lost, then bytes in flight and nothing sent until its 30 s idle timeout,
# while netconn's client has nothing left unacknowledged. Only that outcome, an
# idle timeout on netconn's side, is accepted for this cell.
PEER_STALLS = {("picoquic", "client", "handshakeloss")}


@pytest.mark.timeout(300)  # about a minute alone; more on a busy 2-core machine
async def test_matrix_against_local_peers(tmp_path: Path) -> None:
    """Every case each local peer supports passes, on evidence; the rest say why not."""
    for name in ("picoquic", "caddy"):
        info = find_peer(name)
        if not info.installed:
            pytest.fail(f"{name} is not installed: {info.hint}", pytrace=False)
    options = RunOptions(size_factor=0.02, case_timeout=timeout(30), workdir=tmp_path)
    matrix = await asyncio.wait_for(run_matrix(options), timeout(240))
    assert matrix.columns() == list(COLUMNS)
    assert matrix.cases() == CASE_NAMES
    for result in matrix.results:
        cell = (result.peer, result.role, result.case)
        if result.case not in SUPPORT[(result.peer, result.role)]:
            assert result.outcome is Outcome.UNSUPPORTED and result.reason
        elif cell in KNOWN_PEER_ISSUES and result.outcome is Outcome.FAILED:
            assert result.reason
        elif cell in PEER_STALLS and result.outcome is Outcome.FAILED:
            assert result.reason.startswith("ConnectionTimeout: QUIC idle timeout"), result
        else:
            assert result.outcome is Outcome.PASSED, (cell, result.reason)
            assert any("SHA-256" in e or "datagrams" in e for e in result.evidence), result
    # The evidence names what each case is about, from the connection or a trace.
    evidence = {(r.peer, r.role, r.case): " ".join(r.evidence) for r in matrix.results}
    assert "Retry" in evidence[("picoquic", "client", "retry")]
    assert "Retry" in evidence[("picoquic", "server", "retry")]
    assert "early_data_accepted is true" in evidence[("caddy", "client", "zerortt")]
    assert "Zero RTT data is accepted" in evidence[("picoquic", "server", "zerortt")]
    assert "key_updated" in evidence[("picoquic", "server", "keyupdate")]
    assert "CHACHA20" in evidence[("caddy", "client", "chacha20")]
    assert "v2" in evidence[("picoquic", "client", "v2")]
    assert "::1" in evidence[("netconn", "client", "ipv6")]
    for peer, role in (("netconn", "client"), ("picoquic", "server"), ("caddy", "client")):
        assert "dropped" in evidence[(peer, role, "transferloss")]
        assert "before validation the server sent" in evidence[(peer, role, "amplificationlimit")]
    assert "the server saw the client at" in evidence[("picoquic", "client", "rebind-addr")]


async def test_missing_peers_are_reported_not_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NETCONN_PICOQUICDEMO", "")
    monkeypatch.setenv("NETCONN_CADDY", str(tmp_path / "no-such-caddy"))
    options = RunOptions(
        columns=[("picoquic", "client"), ("picoquic", "server"), ("caddy", "client")],
        cases=["handshake", "retry"],
    )
    matrix = await run_matrix(options)
    outcomes = {(r.peer, r.role, r.case): r.outcome for r in matrix.results}
    assert outcomes == {
        ("picoquic", "client", "handshake"): Outcome.NOT_INSTALLED,
        ("picoquic", "client", "retry"): Outcome.NOT_INSTALLED,
        ("picoquic", "server", "handshake"): Outcome.NOT_INSTALLED,
        ("picoquic", "server", "retry"): Outcome.NOT_INSTALLED,
        ("caddy", "client", "handshake"): Outcome.NOT_INSTALLED,
        ("caddy", "client", "retry"): Outcome.UNSUPPORTED,
    }
    assert all(
        "scripts/bootstrap --peers" in r.reason
        for r in matrix.results
        if r.outcome is Outcome.NOT_INSTALLED
    )
    assert matrix.versions["picoquic"] == "not installed"


async def test_a_case_over_its_time_is_a_failure() -> None:
    options = RunOptions(columns=[("netconn", "client")], cases=["transfer"], case_timeout=0.05)
    matrix = await run_matrix(options)
    [result] = matrix.results
    assert result.outcome is Outcome.FAILED
    assert "timed out" in result.reason


def test_hash_check_rejects_wrong_and_missing_files(tmp_path: Path) -> None:
    env = _Env(certs=None, root=tmp_path, factor=1.0)  # type: ignore[arg-type]
    expected = {"/a": "00" * 32, "/b": "11" * 32}
    with pytest.raises(CaseFailed, match="SHA-256 mismatch for /b"):
        _check_hashes(expected, {"/a": (1, "00" * 32), "/b": (1, "22" * 32)}, env)
    with pytest.raises(CaseFailed, match="not received: /b"):
        _check_hashes(expected, {"/a": (1, "00" * 32)}, env)
    _check_hashes(expected, {"/a": (1, "00" * 32), "/b": (2, "11" * 32)}, env)
    assert env.evidence == ["2 file(s), 3 bytes, every SHA-256 matches"]


def _sample_matrix() -> Matrix:
    matrix = Matrix(started="2026-01-01T00:00:00+00:00", duration=1.5, versions={"netconn": "0"})
    matrix.add(Result("picoquic", "client", "handshake", Outcome.PASSED, evidence=["hash <ok>"]))
    matrix.add(Result("picoquic", "client", "retry", Outcome.FAILED, reason="no <Retry>"))
    matrix.add(Result("caddy", "client", "handshake", Outcome.NOT_INSTALLED, reason="missing"))
    matrix.add(Result("caddy", "client", "retry", Outcome.UNSUPPORTED, reason="cannot"))
    return matrix


def test_reports_in_three_formats(tmp_path: Path) -> None:
    matrix = _sample_matrix()
    markdown = to_markdown(matrix)
    assert "| case | picoquic (netconn client) | caddy (netconn client) |" in markdown
    assert "| handshake | ✓ | ? |" in markdown
    assert "| retry | ✗ | ○ |" in markdown
    assert "1 passed, 1 failed, 1 unsupported, 1 not installed" in markdown
    assert "- retry, picoquic (netconn client): no <Retry>" in markdown
    page = to_html(matrix)
    assert "no &lt;Retry&gt;" in page and "<Retry>" not in page
    assert page.count('class="passed"') == 1
    paths = write_reports(matrix, tmp_path / "out")
    again = Matrix.from_json(json.loads(paths["json"].read_text()))
    assert again.to_json() == matrix.to_json()
    assert paths["markdown"].read_text() == markdown
    assert paths["html"].read_text() == page


def test_cli_lists_cases_and_public_servers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    for case in CASES:
        assert case.name in out
    for server in PUBLIC_SERVERS:
        assert server.host in out


def test_cli_runs_and_writes_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # main() runs its own event loop, so this test is synchronous.
    code = main(
        [
            "--peers",
            "netconn",
            "--cases",
            "handshake,datagram",
            "--output",
            str(tmp_path),
            "--size-factor",
            "0.1",
        ]
    )
    assert code == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert [(r["case"], r["outcome"]) for r in data["results"]] == [
        ("handshake", "passed"),
        ("datagram", "passed"),
    ]
    assert (tmp_path / "index.html").read_text().startswith("<!DOCTYPE html>")
    assert "| handshake | ✓ |" in (tmp_path / "results.md").read_text()
    assert main(["--cases", "no-such-case"]) == 2
    assert main(["--peers", "no-such-peer"]) == 2
    assert main(["--public", "no-such-server"]) == 2  # refused before any traffic


def test_public_servers_are_well_formed() -> None:
    names = set(PUBLIC_CASES)  # what the public runner can do
    assert len({s.name for s in PUBLIC_SERVERS}) == len(PUBLIC_SERVERS)
    for server in PUBLIC_SERVERS:
        assert server.cases <= names, server
        assert "." in server.host and 0 < server.port < 65536
        assert "h3" in server.alpn
    assert public_server("picoquic").host == "test.privateoctopus.com"
    with pytest.raises(KeyError, match="known"):
        public_server("nope")


# The hq-interop and HTTP/3 layers on their own, netconn to netconn.


@asynccontextmanager
async def _server(certs: Certs, root: Path) -> AsyncIterator[nc.Endpoint]:
    stack = nc.QUIC(alpn=["hq-interop", "h3"], certificate=(certs.cert, certs.key))

    async def handler(conn: nc.Connection[nc.QUIC]) -> None:
        if conn.negotiated_alpn == "h3":
            await serve_h3(conn, root)
        else:
            await serve_hq(conn, root)

    async with nc.Listener(stack, host="127.0.0.1") as listener:
        task = asyncio.create_task(listener.run(handler))
        try:
            yield nc.Endpoint.host_port("127.0.0.1", listener.port)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


def test_resolve_under_refuses_paths_outside_the_root(tmp_path: Path) -> None:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "a").write_bytes(b"a")
    (tmp_path / "secret").write_bytes(b"s")
    assert resolve_under(tmp_path / "www", "/a") == (tmp_path / "www" / "a").resolve()
    assert resolve_under(tmp_path / "www", "/../secret") is None
    assert resolve_under(tmp_path / "www", "/missing") is None
    assert resolve_under(tmp_path / "www", "/") is None


async def test_hq_missing_file_is_a_reset_and_bodies_are_bounded(
    certs: Certs, tmp_path: Path
) -> None:
    root = tmp_path / "www"
    root.mkdir()
    (root / "big").write_bytes(os.urandom(300_000))
    client = nc.QUIC(alpn=["hq-interop"], server_name="localhost", ca_file=certs.ca)
    saved = tmp_path / "saved" / "big"
    async with (
        asyncio.timeout(timeout(20)),
        _server(certs, root) as endpoint,
        nc.Connection(endpoint, client) as conn,
    ):
        with pytest.raises(nc.StreamReset) as reset:
            await hq_get(conn, "/../etc/passwd")
        assert reset.value.code == HQ_NOT_FOUND
        with pytest.raises(nc.ProtocolError, match="larger than 1000"):
            await hq_get(conn, "/big", max_size=1000)
        download = await hq_get(conn, "/big", target=saved)
    assert download.size == 300_000
    assert saved.read_bytes() == (root / "big").read_bytes()


async def test_h3_statuses_and_saved_body(certs: Certs, tmp_path: Path) -> None:
    root = tmp_path / "www"
    root.mkdir()
    body = os.urandom(2_500_000)  # more than the client buffers per response
    (root / "f").write_bytes(body)
    (tmp_path / "secret").write_bytes(b"outside the root")
    client = nc.QUIC(alpn=["h3"], server_name="localhost", ca_file=certs.ca)
    async with (
        asyncio.timeout(timeout(20)),
        _server(certs, root) as endpoint,
        nc.Connection(endpoint, client) as conn,
        H3Client(conn) as http,
    ):
        missing = await http.get("/nothing")
        outside = await http.get("/../secret")
        response = await http.get("/f", target=tmp_path / "saved")
        kept = await http.get("/f", keep_body=True)
        for _ in range(20):
            await http.get("/nothing")
        # Finished request streams are forgotten: only HTTP/3's own
        # unidirectional streams (ID bit 2 set) stay known.
        await asyncio.sleep(0.05)
        shim = http._session.shim
        assert all(stream_id & 2 for stream_id in shim._streams), sorted(shim._streams)
        assert all(stream_id & 2 for stream_id in shim._outboxes), sorted(shim._outboxes)
    assert (missing.status, outside.status, response.status) == (404, 404, 200)
    assert ("content-length", str(len(body))) in response.headers
    assert (tmp_path / "saved").read_bytes() == body
    assert kept.body == body


async def test_relay_blackout_stalls_picoquic_against_itself(certs: Certs, tmp_path: Path) -> None:
    """picoquic's client and server through a 2 s blackout: the transfer stalls."""
    info = find_peer(PICOQUIC)
    if not info.installed:
        pytest.fail(f"picoquic is not installed: {info.hint}", pytrace=False)
    peer_certs = Certificates(Path(certs.ca), Path(certs.cert), Path(certs.key))
    www = tmp_path / "www"
    www.mkdir()
    (www / "a").write_bytes(os.urandom(3_000_000))
    schedule = Schedule(blackout_after=100, blackout_for=2.0)  # the blackhole case's
    async with (
        asyncio.timeout(timeout(40)),
        picoquic_server(www, peer_certs, tmp_path / "server") as server,
        UDPRelay((server.host, server.port), schedule=schedule) as relay,
    ):
        host, port = relay.address
        run = await picoquic_client(host, port, ["/a"], peer_certs, tmp_path / "c")
    assert not run.ok
    assert "idle timeout" in run.log
    assert (run.output_dir / "a").stat().st_size < 3_000_000


async def test_public_server_cases_against_a_local_stand_in(certs: Certs, tmp_path: Path) -> None:
    """The --public code path, pointed at a netconn server on loopback (never the internet)."""
    root = tmp_path / "www"
    root.mkdir()
    (root / "index.html").write_bytes(b"<p>hello</p>")
    async with asyncio.timeout(timeout(30)), _server(certs, root) as endpoint:
        stand_in = PublicServer(
            "local",
            "localhost",
            endpoint.port,
            path="/index.html",
            alpn=("h3", "hq-interop"),
            cases=frozenset({"handshake", "http3", "resumption", "zerortt", "keyupdate"}),
        )
        matrix = await run_public(
            None,
            ["handshake", "http3", "resumption", "zerortt", "keyupdate", "retry"],
            servers=[stand_in],
            ca_file=certs.ca,
        )
    outcomes = {r.case: r.outcome for r in matrix.results}
    assert outcomes == {
        "handshake": Outcome.PASSED,
        "http3": Outcome.PASSED,
        "resumption": Outcome.PASSED,
        "zerortt": Outcome.PASSED,
        "keyupdate": Outcome.PASSED,
        "retry": Outcome.UNSUPPORTED,
    }, [(r.case, r.reason) for r in matrix.results]
    http3 = next(r for r in matrix.results if r.case == "http3")
    assert "GET /index.html: 200, 12 bytes" in http3.evidence
