"""TLS: certificate verification, client certificates, ALPN, resumption, the verify hook, bulk data.

Half-close, receive cancellation, Busy and the buffer bound over TLS are
checked in both roles by tests/test_testing.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from conftest import Certs, timeout
from loopback import oriented, record_states, stream_pair, transfer, wait_until

import netconn as nc
from netconn.errors import certificate_problem


def server(certs: Certs, cert: str | None = None, key: str | None = None, **kw: Any) -> nc.TLS:
    chain = (cert or certs.cert, key or certs.key)
    return dataclasses.replace(nc.TLS(certificate=chain), **kw)


def leaf_der(chain_file: str) -> bytes:
    """The first certificate of a PEM file (which may start with the key), DER encoded."""
    text = Path(chain_file).read_text()
    begin = text.index("-----BEGIN CERTIFICATE-----")
    end = text.index("-----END CERTIFICATE-----", begin) + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(text[begin:end])


async def connect_failure(
    listener: nc.Listener[nc.TLS], client: nc.TLS, host: str = "localhost"
) -> nc.NetconnError:
    """Connect, expect ``Failed``, and return its error."""
    conn = nc.Connection(nc.Endpoint.host_port(host, listener.port), client)
    states = record_states(conn)
    try:
        async with asyncio.timeout(timeout(5)):
            await conn.wait_ready()
    except nc.NetconnError:
        pass
    else:
        raise AssertionError("the connection became ready")
    finally:
        await conn.cancel()
    assert states[:2] == ["Preparing", "Failed"], states
    return conn.establishment_report.attempts[-1].error or nc.NetconnError()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1"])
async def test_valid_certificate(host: str, certs: Certs) -> None:
    async with nc.Listener(server(certs)) as listener:
        conn = nc.Connection(nc.Endpoint.host_port(host, listener.port), nc.TLS(ca_file=certs.ca))
        async with asyncio.timeout(timeout(5)), conn:
            info = conn.tls_info
            assert info is not None
            assert info["version"] == "TLSv1.3"
            assert info["session_reused"] is False
            peer = await listener.accept()
            assert peer is not None
            await conn.send(b"hello")
            assert await peer.receive_exactly(5) == b"hello"


@pytest.mark.parametrize(
    ("which", "host", "problem"),
    [
        ("other_host", "localhost", "hostname mismatch"),
        ("other_host", "127.0.0.1", "ip address mismatch"),
        ("expired", "localhost", "expired"),
        ("untrusted", "localhost", "untrusted"),
    ],
)
async def test_rejected_certificate_says_why(
    which: str, host: str, problem: str, certs: Certs
) -> None:
    cert, key = getattr(certs, f"{which}_cert"), getattr(certs, f"{which}_key")
    async with nc.Listener(server(certs, cert, key)) as listener:
        error = await connect_failure(listener, nc.TLS(ca_file=certs.ca), host)
        assert isinstance(error, nc.CertificateError), error
        assert certificate_problem(error) == problem
        assert not error.retryable
        assert isinstance(error.__cause__, ssl.SSLCertVerificationError)
        await wait_until(lambda: listener.failed_handshakes == 1)
        assert not listener.connections


async def test_system_trust_store_rejects_the_test_ca(certs: Certs) -> None:
    async with nc.Listener(server(certs)) as listener:
        error = await connect_failure(listener, nc.TLS())
        assert isinstance(error, nc.CertificateError)
        assert certificate_problem(error) == "untrusted"


async def test_insecure_skip_verify_accepts_anything(certs: Certs) -> None:
    cert, key = certs.untrusted_cert, certs.untrusted_key
    async with nc.Listener(server(certs, cert, key)) as listener:
        ep = nc.Endpoint.host_port("127.0.0.1", listener.port)
        async with (
            asyncio.timeout(timeout(5)),
            nc.Connection(ep, nc.TLS(insecure_skip_verify=True)),
        ):
            pass


async def test_version_mismatch_is_a_tls_error(certs: Certs) -> None:
    tls12 = ssl.TLSVersion.TLSv1_2
    async with nc.Listener(server(certs, min_version=ssl.TLSVersion.TLSv1_3)) as listener:
        error = await connect_failure(listener, nc.TLS(ca_file=certs.ca, max_version=tls12))
        assert type(error) is nc.TLSError, error
        assert "version" in str(error).lower()


async def test_client_certificate(certs: Certs) -> None:
    options = server(certs, ca_file=certs.ca, require_client_certificate=True)
    async with nc.Listener(options) as listener:
        ep = nc.Endpoint.host_port("localhost", listener.port)
        client = nc.TLS(ca_file=certs.ca, certificate=(certs.client_cert, certs.client_key))
        async with asyncio.timeout(timeout(5)), nc.Connection(ep, client) as conn:
            peer = await listener.accept()
            assert peer is not None
            await conn.send(b"signed")
            assert await peer.receive_exactly(6) == b"signed"
            assert listener.failed_handshakes == 0


async def test_missing_client_certificate_is_rejected(certs: Certs) -> None:
    """TLS 1.3 completes the client's handshake first: the client fails on its next read."""
    options = server(certs, ca_file=certs.ca, require_client_certificate=True)
    async with nc.Listener(options) as listener:
        conn = nc.Connection(
            nc.Endpoint.host_port("localhost", listener.port), nc.TLS(ca_file=certs.ca)
        )
        try:
            async with asyncio.timeout(timeout(5)):
                await conn.wait_ready()
                with pytest.raises(nc.TLSError, match=r"(?i)certificate"):
                    await conn.receive()
                assert isinstance(conn.state, nc.Failed)
                assert isinstance(conn.state.error, nc.TLSError)
        finally:
            await conn.cancel()
        await wait_until(lambda: listener.failed_handshakes == 1)
        assert not listener.connections


@pytest.mark.parametrize(
    ("offered", "accepted", "chosen"),
    [
        (["h2", "http/1.1"], ["http/1.1", "h2"], "http/1.1"),
        (["h2"], ["h3"], None),
        ([], ["h2"], None),
    ],
)
async def test_alpn(
    offered: list[str], accepted: list[str], chosen: str | None, certs: Certs
) -> None:
    client = nc.TLS(ca_file=certs.ca, alpn=offered)
    async with stream_pair(client, server(certs, alpn=accepted)) as (conn, peer):
        assert conn.negotiated_alpn == chosen
        assert peer.negotiated_alpn == chosen


async def resumed(listener: nc.Listener[nc.TLS], client: nc.TLS) -> bool:
    """Connect, read one byte (TLS 1.3 tickets follow the handshake), say if it resumed."""
    ep = nc.Endpoint.host_port("localhost", listener.port)
    async with asyncio.timeout(timeout(5)), nc.Connection(ep, client) as conn:
        peer = await listener.accept()
        assert peer is not None
        await peer.send(b"x")
        assert await conn.receive_exactly(1) == b"x"
        info = conn.tls_info
        assert info is not None
        await peer.cancel()
        return bool(info["session_reused"])


async def test_session_resumption(certs: Certs) -> None:
    cache = nc.TLSSessionCache()
    client = nc.TLS(ca_file=certs.ca, session_cache=cache)
    async with nc.Listener(server(certs)) as listener:
        assert [await resumed(listener, client) for _ in range(3)] == [False, True, True]
        assert len(cache) == 1
        # Without a cache, nothing resumes.
        plain = nc.TLS(ca_file=certs.ca)
        assert [await resumed(listener, plain) for _ in range(2)] == [False, False]


async def test_sessions_resume_among_many_options_objects(certs: Certs) -> None:
    """Contexts are kept per options object, the least recently used dropped first:
    the options in use keep the context their sessions need, and a session whose
    context was dropped costs a full handshake, not an error (before: every context
    was dropped at the 65th, and the next offer failed with "Session refers to a
    different SSLContext")."""
    from netconn.stacks import tls

    cache = nc.TLSSessionCache()
    client = nc.TLS(ca_file=certs.ca, session_cache=cache)

    def other_options(count: int) -> None:
        for _ in range(count):
            tls._cached_context(nc.TLS(ca_file=certs.ca), server_side=False)

    async with nc.Listener(server(certs)) as listener:
        assert await resumed(listener, client) is False
        other_options(tls._CONTEXTS // 2)
        assert await resumed(listener, client) is True  # its context was used last
        other_options(tls._CONTEXTS + 6)
        assert await resumed(listener, client) is False  # a new context: a full handshake
        assert await resumed(listener, client) is True
    assert len(tls._contexts) <= tls._CONTEXTS


async def test_verify_hook_sees_the_certificate_and_decides(certs: Certs) -> None:
    seen: list[nc.PeerCertificate] = []

    def accept(peer: nc.PeerCertificate) -> bool:
        seen.append(peer)
        return True

    def reject(peer: nc.PeerCertificate) -> bool:
        return False

    def broken(peer: nc.PeerCertificate) -> bool:
        raise RuntimeError("hook bug")

    expected_der = leaf_der(certs.cert)
    async with nc.Listener(server(certs)) as listener:
        ep = nc.Endpoint.host_port("localhost", listener.port)
        async with asyncio.timeout(timeout(5)):
            async with nc.Connection(ep, nc.TLS(ca_file=certs.ca, verify_hook=accept)):
                pass
        assert len(seen) == 1
        assert seen[0].server_name == "localhost"
        assert seen[0].verified_by_default
        assert seen[0].der == expected_der

        error = await connect_failure(listener, nc.TLS(ca_file=certs.ca, verify_hook=reject))
        assert isinstance(error, nc.CertificateError) and "verify hook" in str(error)
        error = await connect_failure(listener, nc.TLS(ca_file=certs.ca, verify_hook=broken))
        assert isinstance(error, nc.CertificateError) and "hook bug" in str(error)


async def test_verify_hook_alone_decides_with_insecure_skip_verify(certs: Certs) -> None:
    cert, key = certs.untrusted_cert, certs.untrusted_key
    pinned = leaf_der(cert)
    async with nc.Listener(server(certs, cert, key)) as listener:
        ep = nc.Endpoint.host_port("localhost", listener.port)

        def pin(peer: nc.PeerCertificate) -> bool:
            assert not peer.verified_by_default
            return peer.der == pinned

        client = nc.TLS(insecure_skip_verify=True, verify_hook=pin)
        async with asyncio.timeout(timeout(5)), nc.Connection(ep, client):
            pass
    async with nc.Listener(server(certs)) as listener:
        error = await connect_failure(listener, client)
        assert isinstance(error, nc.CertificateError)


@pytest.mark.parametrize("role", ["client", "server"])
async def test_100_mb_transfer(role: str, certs: Certs) -> None:
    async with stream_pair(nc.TLS(ca_file=certs.ca), server(certs)) as pair:
        sender, receiver = oriented(pair, role)
        async with asyncio.timeout(timeout(60)):
            await transfer(sender, receiver, 100 * 1000 * 1000)


@pytest.mark.parametrize("role", ["client", "server"])
async def test_half_close_then_answer(role: str, certs: Certs) -> None:
    """close_notify ends one direction; TLS 1.3 keeps the other open."""
    async with stream_pair(nc.TLS(ca_file=certs.ca), server(certs)) as pair:
        subject, peer = oriented(pair, role)
        await subject.send(b"question", is_complete=True)
        assert await peer.receive(1, 100) == b"question"
        assert await peer.receive() == b""
        await peer.send(b"answer", is_complete=True)
        assert await subject.receive_exactly(6) == b"answer"
        assert await subject.receive() == b""
        assert subject.receive_complete and peer.receive_complete


@pytest.mark.parametrize("role", ["client", "server"])
async def test_reset_without_close_notify(role: str, certs: Certs) -> None:
    async with stream_pair(nc.TLS(ca_file=certs.ca), server(certs)) as pair:
        subject, peer = oriented(pair, role)
        subject.force_cancel()
        with pytest.raises(nc.ConnectionClosed):
            async with asyncio.timeout(timeout(5)):
                await peer.receive()


@pytest.mark.parametrize("allow_truncation", [False, True])
async def test_close_without_close_notify(allow_truncation: bool, certs: Certs) -> None:
    """A peer that closes TCP without close_notify may have truncated the data."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert, certs.key)
    done = asyncio.Event()

    async def truncating(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"partial")
        await writer.drain()
        writer.get_extra_info("socket").shutdown(socket.SHUT_WR)  # FIN, no close_notify
        await done.wait()
        writer.transport.abort()

    server = await asyncio.start_server(truncating, "127.0.0.1", 0, ssl=context)
    try:
        port = server.sockets[0].getsockname()[1]
        client = nc.TLS(ca_file=certs.ca, allow_truncation=allow_truncation)
        conn = nc.Connection(nc.Endpoint.host_port("127.0.0.1", port), client)
        async with asyncio.timeout(timeout(5)), conn:
            assert await conn.receive_exactly(7) == b"partial"
            if allow_truncation:
                assert await conn.receive() == b""
            else:
                with pytest.raises(nc.ConnectionClosed, match="close_notify"):
                    await conn.receive()
            done.set()
    finally:
        done.set()
        server.close()
        await server.wait_closed()


async def test_silent_server_times_the_attempt_out(certs: Certs) -> None:
    """A server that accepts TCP but never answers the ClientHello: Waiting(ConnectionTimeout)."""
    async with nc.Listener(nc.TCP(), host="127.0.0.1") as silent:
        params = nc.Parameters(attempt_timeout=0.2, retry_delays=(3600.0, 3600.0))
        ep = nc.Endpoint.host_port("127.0.0.1", silent.port)
        conn = nc.Connection(ep, nc.TLS(ca_file=certs.ca), params)
        conn.start()
        try:
            await wait_until(lambda: isinstance(conn.state, nc.Waiting))
            assert isinstance(conn.state, nc.Waiting)
            assert isinstance(conn.state.error, nc.ConnectionTimeout)
            [attempt] = conn.establishment_report.attempts
            assert attempt.outcome == "failed" and 0.2 <= attempt.duration < timeout(5)
        finally:
            await conn.cancel()


def test_alpn_must_be_a_list_of_names() -> None:
    """A bare string would offer each of its letters as a protocol."""
    with pytest.raises(TypeError, match="alpn"):
        nc.TLS(alpn="h2")
    assert nc.TLS(alpn=("h2", "http/1.1")).alpn == ("h2", "http/1.1")
