"""QUIC connections: datagrams, closing, timeouts, resumption and 0-RTT, Retry,
key update, versions, ciphers, viability and NAT rebinding."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from conftest import Certs, timeout
from quic_helpers import (
    blackhole,
    client_options,
    connected_pair,
    endpoint,
    refused_on_qh3,
    relay,
    relay_to,
    roles,
    server_options,
    serving,
)
from test_quic import echo_streams

import netconn as nc
import netconn.quic

ROLES = ["client", "server"]
DATAGRAMS = {"max_datagram_frame_size": 65536}

pytestmark = pytest.mark.usefixtures("quic_engine")  # every test on each engine


async def wait_for_state(conn: nc.Connection[nc.QUIC], kind: type, seconds: float) -> None:
    async def loop() -> None:
        while not isinstance(conn.state, kind):
            await conn._state_changed()

    await asyncio.wait_for(loop(), timeout(seconds))


# Datagrams


@pytest.mark.parametrize("role", ROLES)
async def test_datagrams_both_ways(certs: Certs, role: str) -> None:
    async with connected_pair(certs, server=DATAGRAMS, client=DATAGRAMS) as pair:
        local, remote = roles(pair, role)
        assert local.usable_datagram_frame_size > 1000
        await local.datagrams.send(b"ping")
        assert await asyncio.wait_for(remote.datagrams.receive(), timeout(10)) == b"ping"
        await remote.datagrams.send(b"pong")
        assert await asyncio.wait_for(local.datagrams.receive(), timeout(10)) == b"pong"


async def test_datagram_size_limit(certs: Certs) -> None:
    """The largest allowed datagram arrives; one byte more is refused and jams nothing."""
    async with connected_pair(certs, server=DATAGRAMS, client=DATAGRAMS) as (client, server):
        maximum = client.usable_datagram_frame_size
        assert client.datagrams.maximum_size == maximum
        with pytest.raises(nc.MessageTooLarge) as raised:
            await client.datagrams.send(bytes(maximum + 1))
        assert raised.value.maximum == maximum
        await client.datagrams.send(b"m" * maximum)
        await client.datagrams.send(b"after")
        assert await asyncio.wait_for(server.datagrams.receive(), timeout(10)) == b"m" * maximum
        assert await asyncio.wait_for(server.datagrams.receive(), timeout(10)) == b"after"


async def test_datagram_send_queue_is_bounded(certs: Certs) -> None:
    """A sender far faster than the wire waits once datagram_queue datagrams are unsent."""
    queue = 16
    client_side = {**DATAGRAMS, "datagram_queue": queue}
    async with connected_pair(certs, server=DATAGRAMS, client=client_side) as (client, _):
        channel = client._channel
        assert isinstance(channel, nc.quic.QUICChannel)
        peak = 0
        for _ in range(2000):
            await client.datagrams.send(bytes(1000))
            peak = max(peak, channel.quic.queued_datagrams)
        assert 0 < peak <= queue


async def test_datagram_peer_limit(certs: Certs) -> None:
    """The peer's max_datagram_frame_size bounds what we may send."""
    async with connected_pair(certs, server={"max_datagram_frame_size": 100}, client=DATAGRAMS) as (
        client,
        server,
    ):
        assert client.usable_datagram_frame_size < 100
        with pytest.raises(nc.MessageTooLarge):
            await client.datagrams.send(bytes(100))
        await client.datagrams.send(bytes(client.usable_datagram_frame_size))
        assert len(await asyncio.wait_for(server.datagrams.receive(), timeout(10))) > 90


@pytest.mark.parametrize("role", ROLES)
async def test_datagrams_not_enabled_by_peer(certs: Certs, role: str) -> None:
    server, client = ({}, DATAGRAMS) if role == "client" else (DATAGRAMS, {})
    async with connected_pair(certs, server=server, client=client) as pair:
        local, _ = roles(pair, role)
        assert local.usable_datagram_frame_size == 0
        with pytest.raises(nc.DatagramsNotEnabled, match="peer"):
            await local.datagrams.send(b"x")


async def test_datagrams_not_enabled_here(certs: Certs) -> None:
    async with connected_pair(certs, server=DATAGRAMS) as (client, _):
        with pytest.raises(nc.DatagramsNotEnabled, match="this side"):
            await client.datagrams.send(b"x")


# Closing and timeouts


@pytest.mark.parametrize("role", ROLES)
async def test_application_close_seen_by_peer(certs: Certs, role: str) -> None:
    async with connected_pair(certs) as pair:
        local, remote = roles(pair, role)
        await local.close(0x42, "bye now")
        assert isinstance(local.state, nc.Cancelled)
        await wait_for_state(remote, nc.Failed, 10)
        assert isinstance(remote.state, nc.Failed)
        error = remote.state.error
        assert isinstance(error, nc.ApplicationClosed)
        assert (error.code, error.reason, error.by_peer) == (0x42, "bye now", True)


async def test_application_error_on_cancel(certs: Certs) -> None:
    async with connected_pair(certs) as (client, server):
        client.application_error = (7, "shutting down")
        assert client.application_error == (7, "shutting down")
        await client.cancel()
        await wait_for_state(server, nc.Failed, 10)
        assert isinstance(server.state, nc.Failed)
        assert isinstance(server.state.error, nc.ApplicationClosed)
        assert server.state.error.code == 7


async def test_graceful_cancel_delivers_queued_data(certs: Certs) -> None:
    received = asyncio.get_running_loop().create_future()

    async def handler(conn: nc.Connection[nc.QUIC]) -> None:
        async for stream in conn.inbound_streams():
            digest = hashlib.sha256()
            while data := await stream.receive(1, 1 << 20):
                digest.update(data)
            received.set_result(digest.digest())
            return

    payload = bytes(range(256)) * 8192  # 2 MiB, more than one flight
    async with serving(server_options(certs), handler) as listener:
        conn = nc.Connection(endpoint(listener), client_options(certs))
        async with conn:
            stream = await conn.open_stream()
            await stream.send(payload, is_complete=True)
        # cancel() returned: everything sent was acknowledged before the close.
        assert await asyncio.wait_for(received, timeout(10)) == hashlib.sha256(payload).digest()


@pytest.mark.parametrize("role", ROLES)
async def test_idle_timeout_fails_with_timeout(certs: Certs, role: str) -> None:
    short = {"idle_timeout": 0.5}
    server, client = ({}, short) if role == "client" else (short, {})
    async with connected_pair(certs, server=server, client=client) as pair:
        local, _ = roles(pair, role)
        await wait_for_state(local, nc.Failed, 10)
        assert isinstance(local.state, nc.Failed)
        assert isinstance(local.state.error, nc.ConnectionTimeout)
        with pytest.raises(nc.InvalidState):
            await local.open_stream()


# Resumption, 0-RTT and Retry


async def fetch_ticket(
    certs: Certs,
    listener: nc.Listener[nc.QUIC],
    store: nc.MemoryTicketStore,
    target: nc.Endpoint | None = None,
) -> None:
    """One full connection that leaves a session ticket in ``store``."""
    target = target or endpoint(listener)
    async with nc.Connection(target, client_options(certs, ticket_store=store)) as conn:
        stream = await conn.open_stream()
        await stream.send(b"hi", is_complete=True)
        assert await stream.receive_exactly(2) == b"hi"
        assert not conn.session_resumed
        for _ in range(100):
            if len(store):
                break
            await asyncio.sleep(0.01)
    assert len(store) == 1


async def early_request(
    conn: nc.Connection[nc.QUIC], payload: bytes = b"early request"
) -> nc.QUICStream:
    """Open a stream and send before the handshake is done; check the echo."""
    stream = await conn.open_stream()
    await stream.send(payload, is_complete=True)
    assert await asyncio.wait_for(stream.receive_exactly(len(payload)), timeout(10)) == payload
    return stream


async def test_resumption_and_early_data_accepted(certs: Certs) -> None:
    if refused_on_qh3(early_data=True):
        return
    store = nc.MemoryTicketStore()
    # On loopback the server's answer could otherwise complete the handshake
    # before the client has even reported ready and sent.
    via = relay(server_delay=0.05)
    async with serving(server_options(certs), echo_streams) as listener:
        target = await relay_to(via, listener.port)
        await fetch_ticket(certs, listener, store, target)
        options = client_options(certs, ticket_store=store, early_data=True)
        async with nc.Connection(target, options) as conn:
            assert conn.early_data_accepted is None  # ready before the handshake ended
            await early_request(conn)
            await asyncio.wait_for(conn.wait_handshake(), timeout(10))
            assert conn.session_resumed
            assert conn.early_data_accepted is True
            stats = conn.quic_stats()
            assert stats["early_data_sent"] and stats["early_data_resent"] == 0
    via.close()


async def test_resumption_without_early_data(certs: Certs) -> None:
    store = nc.MemoryTicketStore()
    async with serving(server_options(certs), echo_streams) as listener:
        await fetch_ticket(certs, listener, store)
        async with nc.Connection(
            endpoint(listener), client_options(certs, ticket_store=store)
        ) as conn:
            assert conn.session_resumed
            assert not conn.quic_stats()["early_data_sent"]
            await early_request(conn)


async def test_early_data_survives_retry(certs: Certs) -> None:
    """0-RTT data sent before a Retry is sent again, not lost."""
    if refused_on_qh3(early_data=True):
        return
    store = nc.MemoryTicketStore()
    via = relay(server_delay=0.05)  # the 0-RTT data leaves before the Retry arrives
    async with serving(server_options(certs, retry=True), echo_streams) as listener:
        target = await relay_to(via, listener.port)
        await fetch_ticket(certs, listener, store, target)
        options = client_options(certs, ticket_store=store, early_data=True)
        conn = nc.Connection(target, options)
        async with conn:
            await early_request(conn, b"request that met a Retry")
            await asyncio.wait_for(conn.wait_handshake(), timeout(10))
            stats = conn.quic_stats()
            assert stats["retries_received"] == 1
            assert stats["early_data_sent"] and stats["early_data_resent"] > 0
        via.close()


async def test_early_data_survives_rejection(certs: Certs) -> None:
    """A server that does not know the ticket rejects 0-RTT; the data goes again in 1-RTT."""
    if refused_on_qh3(early_data=True):
        return
    store = nc.MemoryTicketStore()
    via = relay(server_delay=0.05)  # the 0-RTT data leaves before the rejection arrives
    async with serving(server_options(certs), echo_streams) as first:
        port = first.port
        target = await relay_to(via, port)
        await fetch_ticket(certs, first, store, target)
    second = nc.Listener(server_options(certs), host="127.0.0.1", port=port)
    async with second:
        task = asyncio.create_task(second.run(echo_streams))
        options = client_options(certs, ticket_store=store, early_data=True)
        async with nc.Connection(target, options) as conn:
            await early_request(conn, b"request the server rejected")
            await asyncio.wait_for(conn.wait_handshake(), timeout(10))
            assert conn.early_data_accepted is False
            assert not conn.session_resumed
            assert conn.quic_stats()["early_data_resent"] > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    via.close()


async def test_retry(certs: Certs) -> None:
    async with (
        serving(server_options(certs, retry=True), echo_streams) as listener,
        nc.Connection(endpoint(listener), client_options(certs)) as conn,
    ):
        assert conn.quic_stats()["retries_received"] == 1
        await early_request(conn, b"after retry")


# Keys, versions, ciphers


async def test_key_update_during_transfer(certs: Certs) -> None:
    async def sink(conn: nc.Connection[nc.QUIC]) -> None:
        async for stream in conn.inbound_streams():
            digest = hashlib.sha256()
            while data := await stream.receive(1, 1 << 20):
                digest.update(data)
            await stream.send(digest.digest(), is_complete=True)

    block = bytes(range(256)) * 1024
    expected = hashlib.sha256()
    async with (
        serving(server_options(certs), sink) as listener,
        nc.Connection(endpoint(listener), client_options(certs)) as conn,
    ):
        stream = await conn.open_stream()
        for i in range(32):
            if i == 8:
                assert conn.quic_stats()["key_phase"] == 0
                conn.request_key_update()
            await stream.send(block)
            expected.update(block)
        await stream.close()
        assert await asyncio.wait_for(stream.receive_exactly(32), timeout(20)) == expected.digest()
        assert conn.quic_stats()["key_phase"] == 1


@pytest.mark.parametrize(
    ("client_versions", "server_versions", "expected"),
    [
        (("v2", "v1"), ("v2", "v1"), "v2"),
        (("v2",), ("v2", "v1"), "v2"),
        (("v1",), ("v2", "v1"), "v1"),
        (("v2", "v1"), ("v1",), "v1"),
    ],
)
async def test_versions(
    certs: Certs, client_versions: tuple[str, ...], server_versions: tuple[str, ...], expected: str
) -> None:
    async with connected_pair(
        certs, server={"versions": server_versions}, client={"versions": client_versions}
    ) as (client, server):
        assert client.negotiated_version == expected
        assert server.negotiated_version == expected
        stream = await client.open_stream()
        await stream.send(b"v", is_complete=True)
        inbound = await anext(server.inbound_streams())
        assert await inbound.receive(1, 1) == b"v"


async def test_chacha20(certs: Certs) -> None:
    async with connected_pair(certs, client={"chacha20_only": True}) as (client, server):
        for conn in (client, server):
            info = conn.tls_info
            assert info is not None and "CHACHA20" in str(info["cipher"])


async def test_keylog_and_qlog(certs: Certs, tmp_path: object) -> None:
    import pathlib

    directory = pathlib.Path(str(tmp_path))
    keylog = directory / "keys.log"
    qlog = directory / "qlog"
    client: dict[str, str] = {"keylog_file": str(keylog)}
    if not refused_on_qh3(qlog_dir=str(qlog)):
        client["qlog_dir"] = str(qlog)
    async with connected_pair(certs, client=client) as (conn, _):
        stream = await conn.open_stream()
        await stream.send(b"x", is_complete=True)
    assert "CLIENT_HANDSHAKE_TRAFFIC_SECRET" in keylog.read_text()
    assert "qlog_dir" not in client or list(qlog.iterdir())


# Viability and paths


async def test_viability_lost_and_regained(certs: Certs) -> None:
    via = relay()
    try:
        async with connected_pair(certs, client={"keepalive_interval": 0.2}, via=via) as (
            client,
            _,
        ):
            changes: list[bool] = []
            changed = asyncio.Event()

            def on_viability(conn: nc.Connection[nc.QUIC], viable: bool) -> None:
                changes.append(viable)
                changed.set()

            client.on_viability_update(on_viability)
            assert client.is_viable and client.keepalive == 0.2
            blackhole(via, True)
            await asyncio.wait_for(changed.wait(), timeout(10))
            assert changes == [False] and not client.is_viable
            assert isinstance(client.state, nc.Ready)  # long before the 30 s idle timeout
            changed.clear()
            blackhole(via, False)
            await asyncio.wait_for(changed.wait(), timeout(10))
            assert changes == [False, True] and client.is_viable
            client.keepalive = None
            assert client.keepalive is None
    finally:
        via.close()


async def test_server_follows_nat_rebinding(certs: Certs) -> None:
    via = relay()
    try:
        async with connected_pair(certs, via=via) as (client, server):
            paths: list[nc.Path] = []
            server.on_path_update(lambda conn, path: paths.append(path))
            before = server.remote_endpoint
            stream = await client.open_stream()
            await stream.send(b"before ")
            inbound = await anext(server.inbound_streams())
            assert await inbound.receive(7, 7) == b"before "
            via.rebind()
            await stream.send(b"after", is_complete=True)
            assert await asyncio.wait_for(inbound.receive(5, 5), timeout(10)) == b"after"
            await inbound.send(b"reply", is_complete=True)
            assert await asyncio.wait_for(stream.receive_exactly(5), timeout(10)) == b"reply"
            after = server.remote_endpoint
            assert before is not None and after is not None and before.port != after.port
            assert paths and paths[-1].remote == after
            assert isinstance(server.state, nc.Ready) and isinstance(client.state, nc.Ready)
    finally:
        via.close()


async def test_viability_holds_after_an_idle_spell(certs: Certs) -> None:
    """Sending after a long quiet spell is not mistaken for a lost peer."""
    async with connected_pair(certs) as (client, server):
        changes: list[bool] = []
        client.on_viability_update(lambda conn, viable: changes.append(viable))
        await asyncio.sleep(1.2)  # longer than the viability deadline (1 s at least)
        stream = await client.open_stream()
        await stream.send(b"x" * 100_000, is_complete=True)
        inbound = await anext(server.inbound_streams())
        assert len(await inbound.receive(100_000, 100_000)) == 100_000
        assert changes == [] and client.is_viable


async def test_ipv6_loopback(certs: Certs) -> None:
    options = server_options(certs)
    async with nc.Listener(options, host="::1") as listener:
        task = asyncio.create_task(listener.run(echo_streams))
        target = nc.Endpoint.host_port("::1", listener.port)
        async with nc.Connection(target, client_options(certs)) as conn:
            assert conn.remote_endpoint is not None and conn.remote_endpoint.host == "::1"
            await early_request(conn, b"over IPv6")
        task.cancel()


async def test_no_common_version_fails(certs: Certs) -> None:
    async with serving(server_options(certs, versions=("v1",)), echo_streams) as listener:
        conn = nc.Connection(endpoint(listener), client_options(certs, versions=("v2",)))
        with pytest.raises(nc.ProtocolError, match="common protocol version"):
            await conn.wait_ready(timeout(10))
        assert isinstance(conn.state, nc.Failed)


async def test_engine_failure_fails_the_connection(certs: Certs) -> None:
    """An exception inside the engine ends the connection with an error, not a hang."""
    async with connected_pair(certs) as (client, server):
        channel = client._channel
        assert isinstance(channel, nc.quic.QUICChannel)

        def broken(batch: object, now: float) -> None:
            raise RuntimeError("engine bug")

        channel.quic.receive_datagrams = broken  # type: ignore[method-assign]
        stream = await server.open_stream()
        await stream.send(b"trigger", is_complete=True)
        await wait_for_state(client, nc.Failed, 10)
        assert isinstance(client.state, nc.Failed)
        assert isinstance(client.state.error, nc.ProtocolError)
        assert "engine bug" in str(client.state.error)
