"""QUIC over loopback: handshake, streams, inbound streams, the listener."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace
from typing import Any

import pytest
from conftest import Certs, timeout
from quic_helpers import (
    ALPN,
    client_options,
    connected_pair,
    endpoint,
    roles,
    server_options,
    serving,
)

import netconn as nc

pytestmark = pytest.mark.usefixtures("quic_engine")  # every test on each engine


async def echo_streams(conn: nc.Connection[nc.QUIC]) -> None:
    """Echo every inbound bidirectional stream until its FIN."""

    async def echo(stream: nc.QUICStream) -> None:
        while data := await stream.receive(1, 1 << 20):
            await stream.send(data)
        await stream.close()

    async with asyncio.TaskGroup() as group:
        async for stream in conn.inbound_streams():
            group.create_task(echo(stream))


async def test_handshake_and_alpn(certs: Certs) -> None:
    server = server_options(certs, alpn=["other", *ALPN])
    seen: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    async def handler(conn: nc.Connection[nc.QUIC]) -> None:
        seen.set_result(conn.negotiated_alpn)
        # Returning would close the connection, possibly before the client,
        # on the same loop, has reported ready.
        await echo_streams(conn)

    async with (
        serving(server, handler) as listener,
        nc.Connection(endpoint(listener), client_options(certs)) as conn,
    ):
        assert isinstance(conn.state, nc.Ready)
        assert conn.negotiated_alpn == ALPN[0]
        assert conn.negotiated_version == "v1"
        assert conn.remote_max_streams_bidirectional == 128
        assert conn.remote_idle_timeout == pytest.approx(30.0)
        assert conn.usable_datagram_frame_size == 0
        assert conn.current_path is not None
        assert await asyncio.wait_for(seen, timeout(10)) == ALPN[0]


async def test_alpn_mismatch_fails(certs: Certs) -> None:
    async with serving(server_options(certs), echo_streams) as listener:
        conn = nc.Connection(endpoint(listener), client_options(certs, alpn=["nope"]))
        with pytest.raises(nc.TLSError):
            await conn.wait_ready(timeout(10))
        assert isinstance(conn.state, nc.Failed)


async def test_untrusted_certificate_fails(certs: Certs) -> None:
    server = server_options(certs, certificate=(certs.untrusted_cert, certs.untrusted_key))
    async with serving(server, echo_streams) as listener:
        conn = nc.Connection(endpoint(listener), client_options(certs))
        with pytest.raises(nc.CertificateError):
            await conn.wait_ready(timeout(10))


async def test_bidirectional_echo(certs: Certs) -> None:
    async with (
        serving(server_options(certs), echo_streams) as listener,
        nc.Connection(endpoint(listener), client_options(certs)) as conn,
    ):
        stream = await conn.open_stream()
        assert stream.directionality == "bidirectional" and stream.is_local
        await stream.send(b"hello ")
        await stream.send(b"world", is_complete=True)
        assert await stream.receive_exactly(11) == b"hello world"
        assert await stream.receive() == b""
        assert stream.receive_complete
        assert isinstance(stream.state, nc.Cancelled)


@pytest.mark.parametrize("client_opens", [True, False], ids=["client-opens", "server-opens"])
async def test_inbound_streams_both_kinds(certs: Certs, client_opens: bool) -> None:
    """The opener sends on a uni and a bidi stream; the other side sees both inbound."""
    received: dict[str, bytes] = {}
    done = asyncio.Event()

    async def open_two(conn: nc.Connection[nc.QUIC]) -> bytes:
        uni = await conn.open_stream("unidirectional")
        await uni.send(b"uni data", is_complete=True)
        bidi = await conn.open_stream("bidirectional")
        await bidi.send(b"bidi data", is_complete=True)
        return await bidi.receive_exactly(5)

    async def take_two(conn: nc.Connection[nc.QUIC]) -> None:
        count = 0
        async for stream in conn.inbound_streams():
            assert not stream.is_local
            received[stream.directionality] = await stream.receive(100, 100)
            if stream.directionality == "bidirectional":
                await stream.send(b"reply", is_complete=True)
            else:
                with pytest.raises(nc.InvalidState):
                    await stream.send(b"x")
            count += 1
            if count == 2:
                break
        done.set()

    async def server_side(conn: nc.Connection[nc.QUIC]) -> None:
        if client_opens:
            await take_two(conn)
        else:
            assert await open_two(conn) == b"reply"
            await done.wait()

    async with (
        serving(server_options(certs), server_side) as listener,
        nc.Connection(endpoint(listener), client_options(certs)) as conn,
    ):
        if client_opens:
            assert await open_two(conn) == b"reply"
        else:
            await take_two(conn)
        await asyncio.wait_for(done.wait(), timeout(10))
    assert received == {"unidirectional": b"uni data", "bidirectional": b"bidi data"}


async def test_inbound_streams_claimed_once(certs: Certs) -> None:
    async with (
        serving(server_options(certs), echo_streams) as listener,
        nc.Connection(endpoint(listener), client_options(certs)) as conn,
    ):
        conn.inbound_streams()
        with pytest.raises(nc.InvalidState, match="already claimed"):
            conn.inbound_streams()
        with pytest.raises(nc.InvalidState, match="already claimed"):
            conn.handle_inbound_streams(lambda stream: asyncio.sleep(0))


async def test_handler_form(certs: Certs) -> None:
    got = asyncio.get_running_loop().create_future()

    async def handler(conn: nc.Connection[nc.QUIC]) -> None:
        stream = await conn.open_stream("unidirectional")
        await stream.send(b"pushed", is_complete=True)
        await asyncio.sleep(timeout(5))

    async def on_stream(stream: nc.QUICStream) -> None:
        got.set_result(await stream.receive(6, 6))

    async with (
        serving(server_options(certs), handler) as listener,
        nc.Connection(endpoint(listener), client_options(certs)) as conn,
    ):
        conn.handle_inbound_streams(on_stream)
        assert await asyncio.wait_for(got, timeout(10)) == b"pushed"


async def test_large_transfer_with_hash(certs: Certs) -> None:
    """100 MiB on one stream, hashed on both sides."""
    size = 100 << 20

    async def sink(conn: nc.Connection[nc.QUIC]) -> None:
        async for stream in conn.inbound_streams():
            digest = hashlib.sha256()
            while data := await stream.receive(1, 1 << 20):
                digest.update(data)
            await stream.send(digest.digest(), is_complete=True)

    block = hashlib.sha256(b"seed").digest() * 8192  # 256 KiB
    expected = hashlib.sha256()
    async with (
        serving(server_options(certs), sink) as listener,
        nc.Connection(endpoint(listener), client_options(certs)) as conn,
    ):
        stream = await conn.open_stream()
        for _ in range(size // len(block)):
            await stream.send(block)
            expected.update(block)
        await stream.close()
        assert await stream.receive_exactly(32) == expected.digest()


async def test_many_listener_connections(certs: Certs) -> None:
    """Several clients share one listener socket; each gets its own echo."""
    async with serving(server_options(certs), echo_streams) as listener:

        async def one(i: int) -> None:
            async with nc.Connection(endpoint(listener), client_options(certs)) as conn:
                stream = await conn.open_stream()
                payload = f"client {i}".encode() * 100
                await stream.send(payload, is_complete=True)
                assert await stream.receive_exactly(len(payload)) == payload

        await asyncio.gather(*(one(i) for i in range(10)))


def test_options_validate() -> None:
    with pytest.raises(ValueError, match="ALPN"):
        nc.QUIC()
    with pytest.raises(ValueError, match="versions"):
        nc.QUIC(alpn=ALPN, versions=())
    assert replace(nc.QUIC(alpn=ALPN), idle_timeout=5).idle_timeout == 5


def test_engine_option(quic_engine: nc.QUICEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default engine is aioquic; qh3 refuses what it cannot honour, by name."""
    assert nc.QUIC(alpn=ALPN).engine == "aioquic"
    assert nc.QUIC(alpn=ALPN, engine=quic_engine).engine == quic_engine
    with pytest.raises(ValueError, match="engine must be 'aioquic' or 'qh3'"):
        nc.QUIC(alpn=ALPN, engine="quiche")  # type: ignore[arg-type]
    refused: dict[str, Any] = {
        "congestion_control": "cubic",
        "qlog_dir": "/tmp/q",
        "early_data": True,
    }
    for name, value in refused.items():
        options = nc.QUIC(alpn=ALPN, **{name: value})  # every option works on aioquic
        if quic_engine == "qh3":
            with pytest.raises(ValueError, match=f"option {name}= .*engine='qh3'"):
                replace(options, engine="qh3")
    # qh3 honours these: versions, cipher, keylog, resumption, Retry, stream limits.
    nc.QUIC(
        alpn=ALPN,
        engine="qh3",
        versions=("v2", "v1"),
        chacha20_only=True,
        keylog_file="/dev/null",
        ticket_store=nc.MemoryTicketStore(),
        retry=True,
        initial_max_streams_bidirectional=7,
    )
    # Asking for qh3 without it installed fails when the options are built.
    monkeypatch.setitem(__import__("sys").modules, "qh3.quic.connection", None)
    with pytest.raises(ValueError, match=r"engine='qh3'.* needs the qh3 package"):
        nc.QUIC(alpn=ALPN, engine="qh3")


async def test_nothing_listening_is_refused(certs: Certs) -> None:
    """ICMP port unreachable ends the attempt at once, as a retryable refusal."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conn = nc.Connection(nc.Endpoint.host_port("127.0.0.1", port), client_options(certs))
    with pytest.raises(nc.ConnectionRefused):
        await conn.wait_ready(timeout(10))
    assert isinstance(conn.state, nc.Waiting)
    conn.force_cancel()
    assert isinstance(conn.state, nc.Cancelled)


async def test_send_on_connection_is_refused(certs: Certs) -> None:
    async with (
        serving(server_options(certs), echo_streams) as listener,
        nc.Connection(endpoint(listener), client_options(certs)) as conn,
    ):
        with pytest.raises(nc.InvalidState, match="streams"):
            await conn.send(b"x")  # type: ignore[misc]  # mypy rejects it too


async def test_verify_hook(certs: Certs) -> None:
    seen: list[nc.PeerCertificate] = []

    def reject(info: nc.PeerCertificate) -> bool:
        seen.append(info)
        return False

    async with serving(server_options(certs), echo_streams) as listener:
        conn = nc.Connection(endpoint(listener), client_options(certs, verify_hook=reject))
        with pytest.raises(nc.CertificateError, match="verify hook"):
            await conn.wait_ready(timeout(10))
        assert seen and seen[0].der.startswith(b"\x30") and seen[0].server_name == "localhost"
        assert seen[0].verified_by_default


async def test_insecure_skip_verify_with_hook(certs: Certs) -> None:
    """An untrusted certificate passes only with the loud option; the hook still runs."""
    server = server_options(certs, certificate=(certs.untrusted_cert, certs.untrusted_key))
    calls: list[bool] = []

    def accept(info: nc.PeerCertificate) -> bool:
        calls.append(info.verified_by_default)
        return True

    options = client_options(certs, insecure_skip_verify=True, verify_hook=accept)
    async with (
        serving(server, echo_streams) as listener,
        nc.Connection(endpoint(listener), options) as conn,
    ):
        assert isinstance(conn.state, nc.Ready)
    assert calls == [False]


async def test_batched_io(certs: Certs) -> None:
    """Datagrams are read in batches and, where the kernel segments, sent in batches."""

    async def sink(conn: nc.Connection[nc.QUIC]) -> None:
        async for stream in conn.inbound_streams():
            while await stream.receive(1, 1 << 20):
                pass
            await stream.send(b"done", is_complete=True)

    small = {"loopback_udp_payload_size": 0}  # network-sized packets on loopback too
    async with (
        serving(server_options(certs, **small), sink) as listener,
        nc.Connection(endpoint(listener), client_options(certs, **small)) as conn,
    ):
        stream = await conn.open_stream()
        await stream.send(bytes(8 << 20), is_complete=True)
        assert await asyncio.wait_for(stream.receive_exactly(4), timeout(30)) == b"done"
        (server,) = listener.connections
        sent = conn.quic_stats()["socket"]
        received = server.quic_stats()["socket"]
    assert sent["datagrams_sent"] > 6000  # 8 MiB in packets of at most 1350 bytes
    if sent["gso"]:
        assert sent["send_calls"] * 4 < sent["datagrams_sent"]
    else:
        assert sent["send_calls"] >= sent["datagrams_sent"]
    # Many datagrams per wake-up on the receiving side.
    assert received["datagrams_received"] > 2 * received["wakeups"]


async def test_unreadable_certificate_is_a_tls_error(certs: Certs, tmp_path: object) -> None:
    missing = f"{tmp_path}/missing.pem"
    conn = nc.Connection(
        nc.Endpoint.host_port("127.0.0.1", 9), client_options(certs, ca_file=missing)
    )
    with pytest.raises(nc.TLSError, match="cannot load"):
        await conn.wait_ready(timeout(10))
    assert isinstance(conn.state, nc.Failed)
    listener = nc.Listener(server_options(certs, certificate=(missing, missing)), host="127.0.0.1")
    with pytest.raises(nc.TLSError):
        await listener.start()
    assert isinstance(listener.state, nc.Failed)


def test_peer_max_udp_payload_size_is_respected() -> None:
    """aioquic ignores the peer's max_udp_payload_size; the engine clamps to it."""
    from aioquic._buffer import Buffer
    from aioquic.quic.packet import QuicTransportParameters, push_quic_transport_parameters

    from netconn.quic._client import new_engine

    options = nc.QUIC(alpn=ALPN, max_udp_payload_size=4000)
    config = options.configuration(is_client=True, server_name="localhost")

    def engine_after(peer_limit: int | None) -> int:
        engine = new_engine(options, configuration=config)
        buf = Buffer(capacity=256)
        push_quic_transport_parameters(
            buf, QuicTransportParameters(max_udp_payload_size=peer_limit)
        )
        engine._parse_transport_parameters(buf.data, from_session_ticket=True)
        return int(engine._max_datagram_size)

    assert engine_after(1300) == 1300
    assert engine_after(9000) == 4000
    assert engine_after(None) == 4000


async def test_large_datagrams_on_loopback(certs: Certs) -> None:
    """A larger max_udp_payload_size works end to end (loopback carries 64 KiB)."""
    big = {"max_udp_payload_size": 8000, "max_datagram_frame_size": 65536}
    async with (
        serving(server_options(certs, **big), echo_streams) as listener,
        nc.Connection(endpoint(listener), client_options(certs, **big)) as conn,
    ):
        assert conn.usable_datagram_frame_size > 7000
        stream = await conn.open_stream()
        payload = bytes(range(256)) * 4096
        await stream.send(payload, is_complete=True)
        assert await asyncio.wait_for(stream.receive_exactly(len(payload)), timeout(20)) == payload


@pytest.mark.parametrize("role", ["client", "server"])
async def test_own_cancel_fails_a_pending_stream_receive(certs: Certs, role: str) -> None:
    """A stream receive waiting when its own side cancels raises InvalidState, not a peer close."""
    async with connected_pair(certs) as pair:
        acting, other = roles(pair, role)
        stream = await acting.open_stream()
        await stream.send(b"x")
        inbound = await asyncio.wait_for(anext(aiter(other.inbound_streams())), timeout(10))
        assert await inbound.receive_exactly(1) == b"x"
        pending = asyncio.create_task(stream.receive())
        await asyncio.sleep(0.05)
        assert not pending.done()
        await acting.cancel()
        with pytest.raises(nc.InvalidState, match="cancelled"):
            await asyncio.wait_for(pending, timeout(10))
        # The peer hears of a close, not of its own cancel.
        with pytest.raises(nc.ConnectionClosed):
            await asyncio.wait_for(inbound.receive(), timeout(10))
