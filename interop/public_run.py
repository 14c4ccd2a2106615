"""Client cases against the public servers of :mod:`interop.public` (needs the internet).

Only ``python -m interop --public`` calls this; the tests never do. The
server's files are unknown here, so a transfer is judged by its status and
size, and the rest of the evidence comes from the connection's own record,
as for local peers.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from collections.abc import Sequence
from typing import Any

import netconn as nc
from netconn.quic.h3 import H3Client
from netconn.quic.hq import hq_get

from .public import PUBLIC_SERVERS, PublicServer
from .results import Matrix, Outcome, Result
from .runner import CaseFailed

__all__ = ["PUBLIC_CASES", "run_public"]

PUBLIC_CASES = (
    "handshake",
    "http3",
    "chacha20",
    "retry",
    "resumption",
    "zerortt",
    "keyupdate",
    "v2",
)
"""The cases a public server can take part in (netconn is always the client)."""


async def _get(conn: nc.Connection[nc.QUIC], alpn: str, path: str) -> str:
    if alpn == "h3":
        async with H3Client(conn) as http:
            response = await http.get(path, max_size=50 << 20)
        if response.status >= 400:
            raise CaseFailed(f"GET {path}: status {response.status}")
        return f"GET {path}: {response.status}, {response.download.size} bytes"
    download = await hq_get(conn, path, max_size=50 << 20)
    if download.size == 0:
        raise CaseFailed(f"GET {path}: empty answer")
    return f"GET {path}: {download.size} bytes"


async def _case(server: PublicServer, case: str, evidence: list[str], ca_file: str | None) -> None:
    alpn = "hq-interop" if case != "http3" and "hq-interop" in server.alpn else "h3"
    port = server.retry_port if case == "retry" and server.retry_port else server.port
    endpoint = nc.Endpoint.host_port(server.host, port)
    options: dict[str, Any] = {"alpn": [alpn], "idle_timeout": 10.0, "ca_file": ca_file}
    if case == "chacha20":
        options["chacha20_only"] = True
    if case == "v2":
        options["versions"] = ("v2", "v1")
    if case in ("resumption", "zerortt"):
        store = nc.MemoryTicketStore()
        async with nc.Connection(endpoint, nc.QUIC(**options, ticket_store=store)) as conn:
            evidence.append(await _get(conn, alpn, server.path))
        if not len(store):
            raise CaseFailed("no session ticket")
        stack = nc.QUIC(**options, ticket_store=store, early_data=case == "zerortt")
        async with nc.Connection(endpoint, stack) as conn:
            evidence.append(await _get(conn, alpn, server.path))
            await conn.wait_handshake()
            if not conn.session_resumed:
                raise CaseFailed("not resumed")
            if case == "zerortt" and conn.early_data_accepted is not True:
                raise CaseFailed("0-RTT not accepted")
        evidence.append("resumed" + (", 0-RTT accepted" if case == "zerortt" else ""))
        return
    async with nc.Connection(endpoint, nc.QUIC(**options)) as conn:
        if case == "keyupdate":
            await conn.wait_handshake()
            conn.request_key_update()
        evidence.append(await _get(conn, alpn, server.path))
        info = conn.tls_info or {}
        if case == "chacha20" and info.get("cipher") != "CHACHA20_POLY1305_SHA256":
            raise CaseFailed(f"cipher {info.get('cipher')}")
        if case == "v2" and conn.negotiated_version != "v2":
            raise CaseFailed(f"negotiated {conn.negotiated_version}")
        evidence.append(
            f"ALPN {conn.negotiated_alpn}, QUIC {conn.negotiated_version}, {info.get('cipher')}"
        )


async def run_public(
    names: Sequence[str] | None,
    cases: Sequence[str],
    case_timeout: float = 20.0,
    *,
    servers: Sequence[PublicServer] = PUBLIC_SERVERS,
    ca_file: str | None = None,
) -> Matrix:
    """Run the client cases against the named ``servers`` (all when ``names`` is None).

    Certificates are checked against the system's trust store, or ``ca_file``.
    Never raises for a case: each ends as passed, failed or unsupported.
    """
    started = time.monotonic()
    matrix = Matrix(started=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"))
    for server in [s for s in servers if names is None or s.name in names]:
        for case in (c for c in PUBLIC_CASES if c in cases):
            result = Result(server.name, "client", case, Outcome.PASSED)
            if case not in server.cases:
                result.outcome, result.reason = Outcome.UNSUPPORTED, "not offered by this server"
                matrix.add(result)
                continue
            t0 = time.monotonic()
            try:
                async with asyncio.timeout(case_timeout):
                    await _case(server, case, result.evidence, ca_file)
            except TimeoutError:
                result.outcome, result.reason = Outcome.FAILED, f"timed out after {case_timeout} s"
            except Exception as exc:  # reported in the matrix
                result.outcome, result.reason = Outcome.FAILED, f"{type(exc).__name__}: {exc}"
            result.duration = time.monotonic() - t0
            matrix.add(result)
    matrix.duration = time.monotonic() - started
    return matrix
