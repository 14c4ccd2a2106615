"""Listener: ports, handing out connections, run(handler), cancel, the backlog bound."""

from __future__ import annotations

import asyncio
import socket

import pytest
from conftest import Certs, timeout
from loopback import STREAMS, StreamKind, client_stack, server_stack, wait_until

import netconn as nc


async def test_port_zero_gives_the_real_port() -> None:
    listener = nc.Listener(nc.TCP(), host="127.0.0.1")
    assert listener.port == 0
    states: list[str] = []
    listener.on_state_update(lambda _l, state: states.append(type(state).__name__))
    async with listener:
        assert listener.port > 0
        assert listener.local_endpoints == [nc.Address("127.0.0.1", listener.port)]
        with socket.create_connection(("127.0.0.1", listener.port), timeout=timeout(5)):
            pass
    assert states == ["Ready", "Cancelled"]
    assert isinstance(listener.state, nc.Cancelled)


async def test_default_host_serves_ipv4_and_ipv6() -> None:
    async with nc.Listener(nc.TCP()) as listener:
        for host in ("127.0.0.1", "::1"):
            conn = nc.Connection(nc.Endpoint.host_port(host, listener.port), nc.TCP())
            async with asyncio.timeout(timeout(5)), conn:
                server = await listener.accept()
                assert server is not None
                assert server.remote_endpoint == conn.local_endpoint or (
                    host == "127.0.0.1"
                    and server.remote_endpoint is not None
                    and server.remote_endpoint.host.endswith("127.0.0.1")
                )


async def test_port_in_use_fails_to_start() -> None:
    async with nc.Listener(nc.TCP(), host="127.0.0.1") as first:
        second = nc.Listener(nc.TCP(), host="127.0.0.1", port=first.port)
        with pytest.raises(nc.NetconnError, match="in use"):
            await second.start()
        assert isinstance(second.state, nc.Failed)


async def test_accept_before_start_is_invalid() -> None:
    with pytest.raises(nc.InvalidState):
        await nc.Listener(nc.TCP()).accept()


@pytest.mark.parametrize("kind", STREAMS)
async def test_async_iteration(kind: StreamKind, certs: Certs) -> None:
    async with nc.Listener(server_stack(kind, certs), host="127.0.0.1") as listener:
        ep = nc.Endpoint.host_port("127.0.0.1", listener.port)
        clients = [nc.Connection(ep, client_stack(kind, certs)) for _ in range(3)]
        try:
            async with asyncio.timeout(timeout(10)):
                for number, client in enumerate(clients):
                    await client.send(bytes([number]))
                seen = set()
                async for conn in listener:
                    assert isinstance(conn.state, nc.Ready)
                    seen.add((await conn.receive_exactly(1))[0])
                    if len(seen) == 3:
                        break
                assert seen == {0, 1, 2}
        finally:
            for client in clients:
                client.force_cancel()


@pytest.mark.parametrize("kind", STREAMS)
async def test_run_handler_and_cancel(kind: StreamKind, certs: Certs) -> None:
    handled: list[nc.Connection[nc.StreamProtocol]] = []

    async def echo(conn: nc.Connection[nc.StreamProtocol]) -> None:
        handled.append(conn)
        while data := await conn.receive():
            await conn.send(data)

    listener = nc.Listener(server_stack(kind, certs), host="127.0.0.1")
    await listener.start()
    running = asyncio.create_task(listener.run(echo))
    ep = nc.Endpoint.host_port("127.0.0.1", listener.port)
    try:
        async with asyncio.timeout(timeout(10)):
            for text in (b"one", b"two"):
                async with nc.Connection(ep, client_stack(kind, certs)) as conn:
                    await conn.send(text, is_complete=True)
                    assert await conn.receive_exactly(3) == text
                    assert await conn.receive() == b""  # the handler returned: cancelled
            assert len(handled) == 2
            assert all(isinstance(c.state, nc.Cancelled) for c in handled)
            await listener.cancel()
            await running  # run() returns once the listener is cancelled
    finally:
        running.cancel()
        await listener.cancel()


async def test_failing_handler_aborts_its_connection() -> None:
    async def broken(conn: nc.Connection[nc.TCP]) -> None:
        raise RuntimeError("handler bug")

    async with nc.Listener(nc.TCP(), host="127.0.0.1") as listener:
        running = asyncio.create_task(listener.run(broken))
        ep = nc.Endpoint.host_port("127.0.0.1", listener.port)
        try:
            async with asyncio.timeout(timeout(5)), nc.Connection(ep, nc.TCP()) as conn:
                with pytest.raises(nc.ConnectionClosed):
                    await conn.receive()
        finally:
            await listener.cancel()
            await running


@pytest.mark.parametrize("kind", STREAMS)
async def test_cancel_closes_every_child(kind: StreamKind, certs: Certs) -> None:
    """Taken and not yet taken connections are all cancelled; their peers see EOF."""
    listener = nc.Listener(server_stack(kind, certs), host="127.0.0.1")
    await listener.start()
    ep = nc.Endpoint.host_port("127.0.0.1", listener.port)
    clients = [nc.Connection(ep, client_stack(kind, certs)) for _ in range(3)]
    try:
        async with asyncio.timeout(timeout(10)):
            for client in clients:
                await client.wait_ready()
            taken = await listener.accept()
            assert taken is not None
            # Ready on the server too (a TLS 1.3 server finishes after its client):
            # cancelling a handshake part-way aborts it.
            await wait_until(
                lambda: [type(c.state) for c in listener.connections] == [nc.Ready] * 3
            )
            children = listener.connections
            await listener.cancel()
            assert all(isinstance(c.state, nc.Cancelled) for c in children)
            assert not listener.connections
            assert await listener.accept() is None
            for client in clients:
                assert await client.receive() == b""
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", listener.port), timeout=timeout(5))
    finally:
        for client in clients:
            client.force_cancel()
        await listener.cancel()


async def test_cancel_ends_async_iteration() -> None:
    async with nc.Listener(nc.TCP(), host="127.0.0.1") as listener:

        async def drain() -> int:
            return len([conn async for conn in listener])

        task = asyncio.create_task(drain())
        await asyncio.sleep(0)
        await listener.cancel()
        async with asyncio.timeout(timeout(5)):
            assert await task == 0


async def test_backlog_bounds_waiting_connections() -> None:
    """At most ``backlog`` accepted connections wait to be taken; the rest stay in the kernel."""
    async with nc.Listener(nc.TCP(), host="127.0.0.1", backlog=2) as listener:
        ep = nc.Endpoint.host_port("127.0.0.1", listener.port)
        clients = [nc.Connection(ep, nc.TCP()) for _ in range(5)]
        try:
            async with asyncio.timeout(timeout(10)):
                for client in clients:
                    await client.wait_ready()  # the kernel completes the handshakes
                await wait_until(lambda: len(listener.connections) == 2)
                for _ in range(20):
                    await asyncio.sleep(0.005)
                assert len(listener.connections) == 2
                taken = [await listener.accept()]
                await wait_until(lambda: len(listener.connections) == 3)
                for _ in range(20):
                    await asyncio.sleep(0.005)
                assert len(listener.connections) == 3  # one taken, two waiting
                for _ in range(4):
                    taken.append(await listener.accept())
                assert all(conn is not None for conn in taken)
                assert len({id(conn) for conn in taken}) == 5
        finally:
            for client in clients:
                client.force_cancel()


async def test_failed_handshakes_are_not_handed_out(certs: Certs) -> None:
    async with nc.Listener(server_stack("tls", certs), host="127.0.0.1") as listener:
        ep = nc.Endpoint.host_port("127.0.0.1", listener.port)
        # A plain TCP client sends no ClientHello; it just closes.
        async with asyncio.timeout(timeout(5)), nc.Connection(ep, nc.TCP()) as plain:
            await plain.send(b"not tls\r\n\r\n", is_complete=True)
            assert await plain.receive() == b""  # a FIN after the failed handshake, not a RST
        await wait_until(lambda: listener.failed_handshakes == 1)
        assert not listener.connections
        good = nc.Connection(ep, client_stack("tls", certs))
        async with asyncio.timeout(timeout(5)), good:
            accepted = await listener.accept()
            assert accepted is not None and isinstance(accepted.state, nc.Ready)


async def test_cancel_under_a_waiting_handler_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """A handler blocked in receive() when the listener shuts down is not a handler failure."""
    entered = asyncio.Event()

    async def wait_forever(conn: nc.Connection[nc.TCP]) -> None:
        entered.set()
        await conn.receive()

    async with nc.Listener(nc.TCP(), host="127.0.0.1") as listener:
        running = asyncio.create_task(listener.run(wait_forever))
        ep = nc.Endpoint.host_port("127.0.0.1", listener.port)
        async with asyncio.timeout(timeout(5)), nc.Connection(ep, nc.TCP()) as conn:
            await entered.wait()
            await listener.cancel()
            await running
            assert await conn.receive() == b""
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "WARNING")]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (nc.TLS(certificate=("/nonexistent/cert.pem", "/nonexistent/key.pem")), "No such file"),
        (nc.TLS(), "certificate"),
    ],
)
async def test_bad_tls_server_options_fail_start(options: nc.TLS, message: str) -> None:
    """A listener that could never complete a handshake fails start(), not every client."""
    listener = nc.Listener(options, host="127.0.0.1")
    try:
        with pytest.raises(nc.NetconnError, match=message):
            await listener.start()
    finally:
        await listener.cancel()
    assert isinstance(listener.state, nc.Failed)
    assert listener.port == 0  # nothing stays bound


async def test_port_is_still_known_after_cancel() -> None:
    listener = nc.Listener(nc.TCP(), host="127.0.0.1")
    async with listener:
        port = listener.port
    assert listener.port == port
    assert listener.local_endpoints == [nc.Address("127.0.0.1", port)]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=timeout(5)).close()


async def test_silent_client_cannot_hold_the_backlog(certs: Certs) -> None:
    """A client that never sends its ClientHello times out instead of holding a slot."""
    params = nc.Parameters(attempt_timeout=0.3)
    listener = nc.Listener(server_stack("tls", certs), host="127.0.0.1", parameters=params)
    async with listener:
        ep = nc.Endpoint.host_port("127.0.0.1", listener.port)
        listener.backlog = 1
        async with asyncio.timeout(timeout(5)), nc.Connection(ep, nc.TCP()) as silent:
            await wait_until(lambda: listener.failed_handshakes == 1)
            await wait_until(lambda: isinstance(silent.state, nc.Failed))  # reset
            assert isinstance(silent.state, nc.Failed)
            assert isinstance(silent.state.error, nc.ConnectionClosed)
            good = nc.Connection(ep, client_stack("tls", certs))
            async with good:
                accepted = await listener.accept()
                assert accepted is not None and isinstance(accepted.state, nc.Ready)


async def test_accepting_goes_on_after_an_accept_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed accept (out of descriptors) is logged; accepting resumes a little later."""
    import errno

    real = socket.socket._accept  # type: ignore[attr-defined]
    failures = [OSError(errno.EMFILE, "Too many open files")]
    async with nc.Listener(nc.TCP(), host="127.0.0.1") as listener:
        port = listener.port

        def flaky(sock: socket.socket) -> tuple[int, object]:
            if failures and sock.getsockname()[1] == port:
                raise failures.pop()
            return real(sock)  # type: ignore[no-any-return]

        # The listener accepts with the socket's _accept (the descriptor), as accept() does.
        monkeypatch.setattr(socket.socket, "_accept", flaky)
        ep = nc.Endpoint.host_port("127.0.0.1", port)
        async with asyncio.timeout(timeout(5)), nc.Connection(ep, nc.TCP()) as client:
            server = await listener.accept()
            assert server is not None
            await client.send(b"hi")
            assert await server.receive_exactly(2) == b"hi"
    assert not failures
    assert "accept failed" in caplog.text


def test_backlog_bound_and_hand_over_on_uvloop() -> None:
    """On uvloop the listener builds each transport without a task; the bound holds the same."""
    import uvloop

    async def main() -> None:
        async with asyncio.timeout(timeout(15)):
            await test_backlog_bounds_waiting_connections()

    uvloop.run(main())
