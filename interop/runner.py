"""Run the interop cases against local peers and collect a :class:`~interop.Matrix`.

How this works: for each (peer, role) column and each case, the runner makes
a folder of random files, starts the server side (a peer program, or
netconn's own :class:`~netconn.Listener` serving hq-interop and HTTP/3),
runs the client side (netconn, or a peer program), and then checks the
evidence: every file's SHA-256, and what the case is about, from the
connection's own record (cipher, resumption, 0-RTT, version), from qlog
traces (Retry, key update), or from the peer's own report. Anything short of
that evidence is a failure with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netconn as nc
from netconn.lab.relay import Impairment, Schedule, Trace, UDPRelay
from netconn.quic.h3 import H3Client, serve_h3
from netconn.quic.hq import hq_fetch, serve_hq

from .amplification import RFC_FACTOR, TOLERATED_FACTOR, check_amplification, validates
from .cases import CASES, UNSUPPORTED_WHY, Case, supports
from .peers import (
    CADDY,
    PICOQUIC,
    Certificates,
    ClientRun,
    PeerNotInstalled,
    PeerServer,
    caddy_server,
    find_peer,
    make_certificates,
    picoquic_client,
    picoquic_server,
)
from .results import Matrix, Outcome, Result

__all__ = ["COLUMNS", "CaseFailed", "RunOptions", "run_matrix"]

COLUMNS: tuple[tuple[str, str], ...] = (
    ("netconn", "client"),
    ("picoquic", "client"),
    ("picoquic", "server"),
    ("caddy", "client"),
)
"""Every (peer, netconn's role) pair the runner knows, in report order."""


_RELAY_SEED = 1
"""Seed of the relay's random choices, so that a case's faults can be repeated."""


class CaseFailed(Exception):
    """The case ran but its evidence was missing or wrong."""


@dataclass
class RunOptions:
    """What to run and how."""

    columns: Sequence[tuple[str, str]] = COLUMNS
    """(peer, role) pairs to run."""
    cases: Sequence[str] = tuple(c.name for c in CASES)
    """Case names to run."""
    size_factor: float = 1.0
    """Multiply every file size by this (tests use a small factor)."""
    case_timeout: float = 60.0
    """Seconds one case may take before it fails."""
    workdir: Path | None = None
    """Where to keep files, logs and qlogs; default a temporary folder, removed after."""
    log: Any = None
    """A callable taking one line of progress, or ``None``."""


@dataclass
class _Env:
    certs: Certificates
    root: Path
    factor: float
    evidence: list[str] = field(default_factory=list)


def _random_files(directory: Path, sizes: Sequence[int]) -> dict[str, str]:
    """Write files of random bytes; return ``{"/name": sha256}``."""
    directory.mkdir(parents=True, exist_ok=True)
    digests = {}
    for index, size in enumerate(sizes):
        name = f"file{index}-{size}"
        data = os.urandom(size)
        (directory / name).write_bytes(data)
        digests[f"/{name}"] = hashlib.sha256(data).hexdigest()
    return digests


def _check_hashes(expected: dict[str, str], got: dict[str, tuple[int, str]], env: _Env) -> None:
    missing = [p for p in expected if p not in got]
    if missing:
        raise CaseFailed(f"not received: {', '.join(missing[:5])}")
    wrong = [p for p, digest in expected.items() if got[p][1] != digest]
    if wrong:
        raise CaseFailed(f"SHA-256 mismatch for {', '.join(wrong[:5])}")
    total = sum(size for size, _ in got.values())
    env.evidence.append(f"{len(expected)} file(s), {total} bytes, every SHA-256 matches")


def _qlog_events(directory: Path) -> list[tuple[str, dict[str, Any]]]:
    """(name, data) of every event in aioquic's qlog files in ``directory``."""
    events: list[tuple[str, dict[str, Any]]] = []
    if not directory.is_dir():
        return events
    for path in sorted(directory.glob("*.qlog")):
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        for trace in document.get("traces", []):
            for event in trace.get("events", []):
                if isinstance(event, dict):
                    events.append((str(event.get("name", "")), dict(event.get("data", {}))))
    return events


async def _wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return bool(predicate())


# netconn as client


def _client_stack(case: Case, env: _Env, alpn: str, qlog: Path, **extra: Any) -> nc.QUIC:
    options: dict[str, Any] = {
        "alpn": [alpn],
        "server_name": "localhost",
        "ca_file": str(env.certs.ca),
        "qlog_dir": str(qlog),
        "idle_timeout": case.idle_timeout,
        # The relay on loopback stands for a network path: network-sized packets.
        "loopback_udp_payload_size": 0,
    }
    if case.name == "chacha20":
        options["chacha20_only"] = True
    if case.name == "v2":
        options["versions"] = ("v2", "v1")
    options.update(extra)
    return nc.QUIC(**options)


async def _fetch(conn: nc.Connection[nc.QUIC], alpn: str, paths: list[str]) -> dict[str, Any]:
    if alpn == "h3":
        async with H3Client(conn) as http:
            responses = await http.fetch(paths)
        return {r.download.path: (r.download.size, r.download.sha256) for r in responses}
    downloads = await hq_fetch(conn, paths)
    return {d.path: (d.size, d.sha256) for d in downloads}


async def _netconn_client(
    case: Case, host: str, port: int, alpn: str, expected: dict[str, str], env: _Env
) -> None:
    endpoint = nc.Endpoint.host_port(host, port)
    paths = list(expected)
    qlog = env.root / "client-qlog"
    if case.name in ("resumption", "zerortt"):
        store = nc.MemoryTicketStore()
        zero = case.name == "zerortt"
        first = _client_stack(case, env, alpn, qlog, ticket_store=store)
        async with nc.Connection(endpoint, first) as conn:
            await _fetch(conn, alpn, paths[:1])
            if not await _wait_for(lambda: len(store) > 0, 5.0):
                raise CaseFailed("the server sent no session ticket")
        env.evidence.append("first connection got a session ticket")
        second = _client_stack(case, env, alpn, qlog, ticket_store=store, early_data=zero)
        async with nc.Connection(endpoint, second) as conn:
            got = await _fetch(conn, alpn, paths)
            await conn.wait_handshake()
            if not conn.session_resumed:
                raise CaseFailed("the second connection did not resume the session")
            env.evidence.append("second connection: session_resumed is true")
            if zero:
                if conn.early_data_accepted is not True:
                    raise CaseFailed(
                        f"0-RTT not accepted (early_data_accepted={conn.early_data_accepted})"
                    )
                env.evidence.append(
                    "second connection: request sent as 0-RTT, early_data_accepted is true"
                )
        _check_hashes(expected, got, env)
        return

    for _ in range(case.connections - 1):  # the network cases' repeated handshakes
        async with nc.Connection(endpoint, _client_stack(case, env, alpn, qlog)) as conn:
            _check_hashes(expected, await _fetch(conn, alpn, paths), _Env(env.certs, env.root, 1))
    if case.connections > 1:
        env.evidence.append(
            f"{case.connections - 1} earlier connection(s) fetched every file intact"
        )
    stack = _client_stack(case, env, alpn, qlog)
    async with nc.Connection(endpoint, stack) as conn:
        if conn.negotiated_alpn != alpn:
            raise CaseFailed(f"ALPN {conn.negotiated_alpn!r}, expected {alpn!r}")
        env.evidence.append(f"ALPN {alpn}, QUIC {conn.negotiated_version}")
        if case.name == "keyupdate":
            await conn.wait_handshake()
            conn.request_key_update()
        got = await _fetch(conn, alpn, paths)
        info = conn.tls_info or {}
        if case.name == "chacha20":
            if info.get("cipher") != "CHACHA20_POLY1305_SHA256":
                raise CaseFailed(f"cipher in use: {info.get('cipher')}")
            env.evidence.append("cipher in use: CHACHA20_POLY1305_SHA256")
        if case.name == "v2":
            if conn.negotiated_version != "v2":
                raise CaseFailed(f"negotiated {conn.negotiated_version}, expected v2")
            env.evidence.append("negotiated_version is v2 (client started with v1)")
        if case.name == "ipv6":
            remote = conn.remote_endpoint
            if remote is None or ":" not in str(remote.host):
                raise CaseFailed(f"remote endpoint {remote} is not IPv6")
            env.evidence.append(f"remote endpoint {remote.host}")
    _check_hashes(expected, got, env)
    if case.name == "retry":
        events = _qlog_events(qlog)
        retries = [
            d
            for n, d in events
            if n.endswith("packet_received") and d.get("header", {}).get("packet_type") == "retry"
        ]
        if not retries:
            raise CaseFailed("no Retry packet in the client's qlog")
        env.evidence.append(f"client qlog: {len(retries)} Retry packet(s) received")
    if case.name == "keyupdate":
        events = _qlog_events(qlog)
        updates = [
            d for n, d in events if n.endswith("key_updated") and d.get("trigger") == "local_update"
        ]
        if not updates:
            raise CaseFailed("no local key update in the client's qlog")
        env.evidence.append(f"client qlog: key_updated (local_update) x{len(updates)}")


async def _datagram_case(host: str, port: int, env: _Env) -> None:
    """netconn to netconn: 20 datagrams each way, echoed back and compared."""
    stack = nc.QUIC(
        alpn=["hq-interop"],
        server_name="localhost",
        ca_file=str(env.certs.ca),
        max_datagram_frame_size=1200,
        idle_timeout=10.0,
    )
    async with nc.Connection(nc.Endpoint.host_port(host, port), stack) as conn:
        size = conn.usable_datagram_frame_size
        if size <= 0:
            raise CaseFailed("the server did not enable datagrams")
        sent = [os.urandom(min(size, 100 + i * 40)) for i in range(20)]
        echoed: list[bytes] = []
        for payload in sent:
            # Datagrams are unreliable; on loopback each is expected back, but
            # retry a lost one a few times rather than fail on one drop.
            for _ in range(5):
                await conn.datagrams.send(payload)
                try:
                    async with asyncio.timeout(1.0):
                        echoed.append(await conn.datagrams.receive())
                    break
                except TimeoutError:
                    continue
        if [hashlib.sha256(b).digest() for b in echoed] != [
            hashlib.sha256(b).digest() for b in sent
        ]:
            raise CaseFailed(f"{len(echoed)} of {len(sent)} datagrams came back intact")
        largest = max(map(len, sent))
        env.evidence.append(f"{len(sent)} datagrams up to {largest} bytes echoed intact")


# netconn as server


@dataclass
class _Served:
    alpn: str | None
    version: str | None
    resumed: bool
    cipher: str | None


@contextlib.asynccontextmanager
async def _netconn_server(
    case: Case, www: Path, env: _Env, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[int, list[_Served], Path]]:
    qlog = env.root / "server-qlog"
    stack = nc.QUIC(
        alpn=["hq-interop", "h3"],
        certificate=(str(env.certs.cert), str(env.certs.key)),
        retry=case.name == "retry",
        versions=("v2", "v1") if case.name == "v2" else ("v1",),
        max_datagram_frame_size=1200 if case.name == "datagram" else None,
        qlog_dir=str(qlog),
        idle_timeout=case.idle_timeout,
        loopback_udp_payload_size=0,  # as the client's: a network path
    )
    served: list[_Served] = []

    async def handler(conn: nc.Connection[nc.QUIC]) -> None:
        info = conn.tls_info or {}
        served.append(
            _Served(
                conn.negotiated_alpn,
                conn.negotiated_version,
                bool(info.get("session_reused")),
                info.get("cipher"),
            )
        )
        if case.name == "datagram":

            async def echo() -> None:
                while True:
                    await conn.datagrams.send(await conn.datagrams.receive())

            task = asyncio.create_task(echo())
            try:
                await serve_hq(conn, www)
            finally:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        elif conn.negotiated_alpn == "h3":
            await serve_h3(conn, www)
        else:
            await serve_hq(conn, www)

    async with nc.Listener(stack, host=host, port=0) as listener:
        runner = asyncio.create_task(listener.run(handler))
        try:
            yield listener.port, served, qlog
        finally:
            runner.cancel()
            with contextlib.suppress(BaseException):
                await runner


async def _picoquic_against_netconn(
    case: Case, expected: dict[str, str], www: Path, env: _Env
) -> None:
    host = "::1" if case.name == "ipv6" else "127.0.0.1"
    alpn = "h3" if case.name == "http3" else "hq-interop"
    paths = list(expected)
    timeout = (20.0 + 10.0 * env.factor) * case.time_factor
    async with _netconn_server(case, www, env, host) as (port, served, qlog):
        common: dict[str, Any] = {
            "alpn": alpn,
            "timeout": timeout,
            "idle_timeout": case.idle_timeout,
        }
        if case.name == "chacha20":
            common["chacha20"] = True
        if case.name == "v2":
            common["upgrade_v2"] = True
        if case.name == "keyupdate":
            common["key_update_after"] = 32
        client_dir = env.root / "picoquic-client"
        async with _maybe_relay(case, (host, port), env) as (host, port):
            run = await _picoquic_runs(case, host, port, paths, env, client_dir, common)
        got = {}
        for path in paths:
            file = run.output_dir / path.lstrip("/")
            if file.is_file():
                data = file.read_bytes()
                got[path] = (len(data), hashlib.sha256(data).hexdigest())
        _check_hashes(expected, got, env)
        if not served:
            raise CaseFailed("netconn's listener saw no connection")
        last = served[-1]
        if last.alpn != alpn:
            raise CaseFailed(f"server negotiated ALPN {last.alpn!r}, expected {alpn!r}")
        log = run.log
        if case.name == "chacha20":
            if last.cipher != "CHACHA20_POLY1305_SHA256":
                raise CaseFailed(f"server cipher {last.cipher}")
            env.evidence.append("server's connection: cipher CHACHA20_POLY1305_SHA256")
        if case.name == "v2":
            if last.version != "v2":
                raise CaseFailed(f"server's connection negotiated {last.version}")
            env.evidence.append("server's connection: negotiated_version v2")
        if case.name == "resumption":
            if not last.resumed or "The session was properly resumed!" not in log:
                raise CaseFailed(f"not resumed (server session_reused={last.resumed})")
            env.evidence.append(
                "server: session_reused; picoquic: 'The session was properly resumed!'"
            )
        if case.name == "zerortt":
            if "Zero RTT data is accepted!" not in log:
                raise CaseFailed("picoquic did not report its 0-RTT data accepted")
            env.evidence.append("picoquic: 'Zero RTT data is accepted!'")
        if case.name == "retry":
            qtext = run.qlog_text()
            if '"packet_type": "retry"' not in qtext.replace('":"', '": "'):
                raise CaseFailed("no Retry in picoquic's qlog")
            env.evidence.append("picoquic client qlog: Retry packet received")
        if case.name == "keyupdate":
            ok = await _wait_for(
                lambda: any(
                    n.endswith("key_updated") and d.get("trigger") == "remote_update"
                    for n, d in _qlog_events(qlog)
                ),
                5.0,
            )
            if not ok:
                raise CaseFailed("no remote key update in netconn's server qlog")
            env.evidence.append("server qlog: key_updated (remote_update)")
        if case.name == "ipv6":
            env.evidence.append("picoquic client connected to [::1]")


@contextlib.asynccontextmanager
async def _maybe_relay(
    case: Case, target: tuple[str, int], env: _Env, netconn_server: bool = True
) -> AsyncIterator[tuple[str, int]]:
    """Yield where the client should connect: the server, or a relay with the case's faults."""
    if not case.relayed:
        yield target
        return
    trace = Trace(until=validates)  # up to address validation, for amplificationlimit
    async with UDPRelay(target, seed=_RELAY_SEED, schedule=case.schedule, trace=trace) as relay:
        if case.impairment is not None:
            relay.to_upstream = dataclasses.replace(case.impairment)
            relay.to_client = dataclasses.replace(case.impairment)
        yield relay.address
        _relay_evidence(case, relay, env, strict=netconn_server)


def _amplification_evidence(trace: Trace, strict: bool) -> str:
    """Check RFC 9000 section 8.1 on the relay's trace; return the evidence, or raise.

    ``strict`` holds the server to 3x (netconn's own); a peer's server fails
    above the QUIC Interop Runner's 4x tolerance, and between 3x and 4x the
    evidence says by how much it went over.
    """
    result = check_amplification(trace.datagrams)
    if not result.validated:
        raise CaseFailed("no client Handshake packet reached the server: nothing validated")
    text = (
        f"before validation the server sent {result.sent} bytes for {result.received} received"
        f" (at most {result.ratio:.2f}x at any point)"
    )
    limit = RFC_FACTOR if strict else TOLERATED_FACTOR
    if result.over(limit):
        raise CaseFailed(f"{text}: over {limit}x (RFC 9000 section 8.1)")
    if result.over(RFC_FACTOR):
        text += f"; over RFC 9000's {RFC_FACTOR}x, within the Interop Runner's {limit}x tolerance"
    return text


def _relay_evidence(case: Case, relay: UDPRelay, env: _Env, strict: bool = True) -> None:
    """Check that the case's fault really happened; record what the relay did.

    ``strict``: the server is netconn's, held to RFC 9000's limits exactly.
    """
    impairment = case.impairment or Impairment()
    schedule = case.schedule or Schedule()
    up, down = relay.stats_to_upstream, relay.stats_to_client
    dropped, corrupted = up.dropped + down.dropped, up.corrupted + down.corrupted
    summary = (
        f"relay: {up.forwarded} datagrams to the server, {down.forwarded} to the client, "
        f"{dropped} dropped, {corrupted} corrupted, {relay.rebinds} rebinds"
    )
    if impairment.loss and not dropped:
        raise CaseFailed("the relay dropped nothing: " + summary)
    if impairment.corrupt and not corrupted:
        raise CaseFailed("the relay corrupted nothing: " + summary)
    if schedule.blackout_after is not None and down.forwarded < schedule.blackout_after:
        raise CaseFailed("the transfer ended before the blackhole: " + summary)
    if schedule.rebind_every:
        sources = relay.source_addresses
        hosts = {address for address, _ in sources}
        if len(sources) < 2 or (schedule.rebind_addresses and len(hosts) < 2):
            raise CaseFailed("the client never moved: " + summary)
        summary += f"; the server saw the client at {len(sources)} addresses"
    if schedule.drop_from_client:
        assert relay.trace is not None
        summary += "; " + _amplification_evidence(relay.trace, strict)
    if impairment.delay:
        summary += f"; {impairment.delay * 2000:.0f} ms added to the round trip"
    env.evidence.append(summary)


async def _picoquic_runs(
    case: Case,
    host: str,
    port: int,
    paths: list[str],
    env: _Env,
    client_dir: Path,
    common: dict[str, Any],
) -> ClientRun:
    """Run picoquic's client as the case needs (twice for resumption); return the last run."""
    runs = 2 if case.name in ("resumption", "zerortt") else case.connections
    run: ClientRun | None = None
    for index in range(runs):
        name = "run" if index == runs - 1 else f"run{index}"
        wanted = paths[:1] if runs == 2 and index == 0 else paths
        run = await picoquic_client(host, port, wanted, env.certs, client_dir, name=name, **common)
        if not run.ok:
            raise CaseFailed(f"picoquic client exited with {run.returncode}: {run.log[-300:]}")
    assert run is not None
    if runs > 1:
        env.evidence.append(f"picoquic connected {runs} times")
    return run


# Peer servers


@contextlib.asynccontextmanager
async def _peer_server(
    peer: str, case: Case, www: Path, env: _Env
) -> AsyncIterator[tuple[str, int]]:
    host = "::1" if case.name == "ipv6" else "127.0.0.1"
    if peer == "netconn":
        async with _netconn_server(case, www, env, host) as (port, _, _):
            yield host, port
        return
    server: PeerServer
    if peer == PICOQUIC:
        async with picoquic_server(
            www, env.certs, env.root / "picoquic-server", retry=case.name == "retry", host=host
        ) as server:
            yield host, server.port
        return
    async with caddy_server(www, env.certs, env.root / "caddy", host=host) as server:
        yield host, server.port


async def _run_one(peer: str, role: str, case: Case, env: _Env) -> None:
    www = env.root / "www"
    expected = _random_files(www, case.scaled(env.factor))
    if role == "server":
        await _picoquic_against_netconn(case, expected, www, env)
        return
    async with (
        _peer_server(peer, case, www, env) as target,
        _maybe_relay(case, target, env, netconn_server=peer == "netconn") as (host, port),
    ):
        if case.name == "datagram":
            await _datagram_case(host, port, env)
            return
        alpn = "h3" if peer == CADDY or case.name == "http3" else "hq-interop"
        await _netconn_client(case, host, port, alpn, expected, env)


def _describe(exc: BaseException) -> str:
    """``Type: message`` of the first real error inside (task groups wrap them)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, CaseFailed):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    versions = {"netconn": nc.__version__, "aioquic": version("aioquic")}
    for name in (PICOQUIC, CADDY):
        info = find_peer(name)
        if info.program is None:
            versions[name] = "not installed"
            continue
        if name == CADDY:
            try:
                out = subprocess.run(
                    [info.program, "version"], capture_output=True, text=True, timeout=10
                )
                versions[name] = out.stdout.strip().split(" ")[0] or info.implementation
            except (OSError, subprocess.SubprocessError):
                versions[name] = info.implementation
        else:
            versions[name] = info.implementation
    return versions


async def run_matrix(options: RunOptions) -> Matrix:
    """Run every selected case for every selected column; return the matrix.

    Never raises for a case: each ends as passed, failed (with the reason),
    unsupported or not installed.
    """
    started = time.monotonic()
    matrix = Matrix(
        started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        versions=_versions(),
    )
    owned = options.workdir is None
    base = Path(tempfile.mkdtemp(prefix="netconn-interop-")) if owned else options.workdir
    assert base is not None
    try:
        certs = make_certificates(base / "certs")
        for peer, role in options.columns:
            installed = peer == "netconn" or find_peer(peer).installed
            for case in (c for c in CASES if c.name in options.cases):
                result = Result(peer, role, case.name, Outcome.PASSED)
                if not supports(peer, role, case.name):
                    result.outcome = Outcome.UNSUPPORTED
                    result.reason = UNSUPPORTED_WHY.get(
                        (peer, case.name), f"{peer} does not support it"
                    )
                elif not installed:
                    result.outcome = Outcome.NOT_INSTALLED
                    result.reason = f"{peer} is not installed: {find_peer(peer).hint}"
                else:
                    env = _Env(certs, base / f"{peer}-{role}-{case.name}", options.size_factor)
                    t0 = time.monotonic()
                    limit = options.case_timeout * case.time_factor
                    scope = asyncio.timeout(limit)
                    try:
                        async with scope:
                            await _run_one(peer, role, case, env)
                    except TimeoutError as exc:
                        result.outcome = Outcome.FAILED
                        # netconn's ConnectionTimeout is a TimeoutError too: say which it was.
                        expired = f"timed out after {limit:g} s"
                        result.reason = expired if scope.expired() else _describe(exc)
                    except PeerNotInstalled as exc:
                        result.outcome, result.reason = Outcome.NOT_INSTALLED, str(exc)
                    except Exception as exc:  # any other error is this case's failure, reported
                        result.outcome = Outcome.FAILED
                        result.reason = _describe(exc)
                    result.duration = time.monotonic() - t0
                    result.evidence = env.evidence
                    if options.workdir is None:
                        shutil.rmtree(env.root, ignore_errors=True)
                matrix.add(result)
                if options.log is not None:
                    options.log(
                        f"{peer:9} {role:6} {case.name:13} {result.outcome.value}"
                        + (f": {result.reason}" if result.outcome is Outcome.FAILED else "")
                    )
    finally:
        if owned:
            shutil.rmtree(base, ignore_errors=True)
    matrix.duration = time.monotonic() - started
    return matrix
