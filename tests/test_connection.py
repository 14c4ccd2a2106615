"""Connection: state sequences, Waiting and retry, restart(), cancel and force_cancel, data rules.

The byte-stream contract itself (ordering, half-close, receive cancellation,
Busy, the buffer bound) is checked for TCP and TLS in tests/test_testing.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
from conftest import Certs, timeout
from loopback import (
    STREAMS,
    StreamKind,
    client_stack,
    free_port,
    oriented,
    record_states,
    server_stack,
    stream_pair,
    wait_until,
)

import netconn as nc

FAST_RETRY = nc.Parameters(retry_delays=(0.02, 0.1))
NO_RETRY_SOON = nc.Parameters(retry_delays=(3600.0, 3600.0))


@pytest.mark.parametrize("kind", STREAMS)
async def test_state_sequence_on_success(kind: StreamKind, certs: Certs) -> None:
    async with nc.Listener(server_stack(kind, certs), host="127.0.0.1") as listener:
        server_states: list[str] = []
        listener.on_new_connection(lambda c: None)
        conn = nc.Connection(
            nc.Endpoint.host_port("127.0.0.1", listener.port), client_stack(kind, certs)
        )
        states = record_states(conn)
        assert isinstance(conn.state, nc.Setup)
        async with asyncio.timeout(timeout(5)):
            async with conn:
                assert isinstance(conn.state, nc.Ready)
                server = await listener.accept()
                assert server is not None
                server_states = record_states(server)
                assert isinstance(server.state, nc.Ready)
                assert conn.remote_endpoint == nc.Address("127.0.0.1", listener.port)
                assert server.local_endpoint == conn.remote_endpoint
                assert server.remote_endpoint == conn.local_endpoint
                await server.cancel()
        assert states == ["Preparing", "Ready", "Cancelled"]
        assert server_states == ["Cancelled"]
        assert isinstance(conn.state, nc.Cancelled)
        report = conn.establishment_report
        assert [a.outcome for a in report.attempts] == ["ready"]
        assert report.resolved == [nc.Address("127.0.0.1", listener.port)]


async def test_server_side_states(certs: Certs) -> None:
    """An accepted connection goes Preparing -> Ready (TLS handshake), then Cancelled."""
    seen: list[list[str]] = []
    async with nc.Listener(server_stack("tls", certs), host="127.0.0.1") as listener:
        listener.on_new_connection(lambda c: seen.append(record_states(c)))
        conn = nc.Connection(
            nc.Endpoint.host_port("127.0.0.1", listener.port), client_stack("tls", certs)
        )
        async with asyncio.timeout(timeout(5)), conn:
            server = await listener.accept()
            assert server is not None
            assert isinstance(server.state, nc.Ready)
            assert server.endpoint is None
    assert seen == [["Cancelled"]]  # the listener cancelled it


@pytest.mark.parametrize("kind", STREAMS)
@pytest.mark.parametrize("how", ["backoff", "restart"])
async def test_refused_waits_then_becomes_ready(kind: StreamKind, how: str, certs: Certs) -> None:
    """Refused -> Waiting(ConnectionRefused); Ready once a server appears on that port."""
    port = free_port()
    params = FAST_RETRY if how == "backoff" else NO_RETRY_SOON
    conn = nc.Connection(
        nc.Endpoint.host_port("127.0.0.1", port), client_stack(kind, certs), params
    )
    states = record_states(conn)
    conn.start()
    try:
        await wait_until(lambda: isinstance(conn.state, nc.Waiting))
        match conn.state:
            case nc.Waiting(error=error):
                assert isinstance(error, nc.ConnectionRefused)
                assert error.retryable
            case other:
                raise AssertionError(other)
        with pytest.raises(nc.ConnectionRefused):
            await conn.wait_ready()  # without allow_waiting, Waiting raises its error
        async with nc.Listener(server_stack(kind, certs), host="127.0.0.1", port=port):
            if how == "restart":
                conn.restart()
            await conn.wait_ready(timeout(5), allow_waiting=True)
            assert isinstance(conn.state, nc.Ready)
            await conn.cancel()
    finally:
        conn.force_cancel()
    assert states[:2] == ["Preparing", "Waiting"]
    assert states[-3:] == ["Preparing", "Ready", "Cancelled"]
    assert set(states[:-3]) == {"Preparing", "Waiting"}
    if how == "restart":
        assert states == ["Preparing", "Waiting", "Preparing", "Ready", "Cancelled"]
    failed = [a for a in conn.establishment_report.attempts if a.outcome == "failed"]
    assert failed and all(isinstance(a.error, nc.ConnectionRefused) for a in failed)


async def test_restart_needs_waiting() -> None:
    conn = nc.Connection(nc.Endpoint.host_port("127.0.0.1", free_port()), nc.TCP())
    with pytest.raises(nc.InvalidState):
        conn.restart()
    await conn.cancel()


async def test_async_with_raises_the_waiting_error_and_cleans_up() -> None:
    conn = nc.Connection(nc.Endpoint.host_port("127.0.0.1", free_port()), nc.TCP())
    with pytest.raises(nc.ConnectionRefused):
        async with asyncio.timeout(timeout(5)), conn:
            raise AssertionError("connected to a closed port")
    assert isinstance(conn.state, nc.Cancelled)


async def test_wait_ready_timeout_keeps_the_connection() -> None:
    conn = nc.Connection(nc.Endpoint.host_port("127.0.0.1", free_port()), nc.TCP(), NO_RETRY_SOON)
    try:
        with pytest.raises(nc.ConnectionTimeout) as caught:
            await conn.wait_ready(0.2, allow_waiting=True)
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value.__cause__, nc.ConnectionRefused)
        assert isinstance(conn.state, nc.Waiting)
    finally:
        await conn.cancel()
    assert isinstance(conn.state, nc.Cancelled)


async def test_wait_ready_raises_an_attempt_timeout_as_it_is() -> None:
    """An attempt's own deadline is the Waiting error, not wait_ready's timeout."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a QUIC server that never answers
    silent.bind(("127.0.0.1", 0))
    host, port = silent.getsockname()
    params = nc.Parameters(attempt_timeout=0.3)
    conn = nc.Connection(nc.Endpoint.host_port(host, port), nc.QUIC(alpn=["x"]), params)
    try:
        with pytest.raises(nc.ConnectionTimeout) as caught:
            await conn.wait_ready()
        assert "not ready after" not in str(caught.value)
        match conn.state:
            case nc.Waiting(error=error):
                assert caught.value is error
            case other:
                raise AssertionError(other)
    finally:
        await conn.cancel()
        silent.close()


async def test_cancel_while_waiting_stops_retrying() -> None:
    conn = nc.Connection(nc.Endpoint.host_port("127.0.0.1", free_port()), nc.TCP(), FAST_RETRY)
    states = record_states(conn)
    conn.start()
    await wait_until(lambda: states.count("Waiting") >= 2)
    await conn.cancel()
    count = len(states)
    await asyncio.sleep(0.3)  # several back-off periods: nothing more may happen
    assert len(states) == count and states[-1] == "Cancelled"
    with pytest.raises(nc.InvalidState) as caught:
        await conn.wait_ready()
    assert isinstance(caught.value.state, nc.Cancelled)


@pytest.mark.parametrize("kind", STREAMS)
@pytest.mark.parametrize("role", ["client", "server"])
async def test_cancel_sends_fin(kind: StreamKind, role: str, certs: Certs) -> None:
    """Graceful cancel: the peer reads every byte, then a clean end of stream."""
    async with stream_pair(client_stack(kind, certs), server_stack(kind, certs)) as pair:
        subject, peer = oriented(pair, role)
        await subject.send(b"last words")
        await subject.cancel()
        assert isinstance(subject.state, nc.Cancelled)
        assert await peer.receive_exactly(10) == b"last words"
        assert await peer.receive() == b""
        assert peer.receive_complete
        assert isinstance(peer.state, nc.Ready)  # a FIN is not a failure
        with pytest.raises(nc.InvalidState, match="cancelled"):
            await subject.send(b"more")
        await subject.cancel()  # twice is fine


@pytest.mark.parametrize("kind", STREAMS)
@pytest.mark.parametrize("role", ["client", "server"])
async def test_force_cancel_sends_rst(kind: StreamKind, role: str, certs: Certs) -> None:
    """Abortive cancel: the peer sees a reset, not an end of stream, and fails."""
    async with stream_pair(client_stack(kind, certs), server_stack(kind, certs)) as pair:
        subject, peer = oriented(pair, role)
        peer_states = record_states(peer)
        subject.force_cancel()
        assert isinstance(subject.state, nc.Cancelled)
        with pytest.raises(nc.ConnectionClosed):
            async with asyncio.timeout(timeout(5)):
                await peer.receive()
        await wait_until(lambda: peer_states == ["Failed"])
        match peer.state:
            case nc.Failed(error=error):
                assert isinstance(error, nc.ConnectionClosed)
                assert "reset" in str(error).lower()
            case other:
                raise AssertionError(other)
        with pytest.raises(nc.InvalidState):
            await peer.send(b"x")


@pytest.mark.parametrize("kind", STREAMS)
@pytest.mark.parametrize("role", ["client", "server"])
async def test_cancelled_send_sends_a_prefix(kind: StreamKind, role: str, certs: Certs) -> None:
    """A send cancelled while it waits has sent a prefix; later sends follow it intact."""
    size = 64 << 20
    data = bytes(range(256)) * (size // 256)
    async with stream_pair(client_stack(kind, certs), server_stack(kind, certs)) as pair:
        subject, peer = oriented(pair, role)
        sending = asyncio.create_task(subject.send(data))
        await wait_until(lambda: peer.buffered_bytes[1] > 0)
        for _ in range(20):
            await asyncio.sleep(0.005)
        assert not sending.done()
        sending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sending

        async def read_all() -> bytes:
            received = bytearray()
            while chunk := await peer.receive(1, 1 << 20):
                received += chunk
            return bytes(received)

        async with asyncio.timeout(timeout(20)):
            reader = asyncio.create_task(read_all())
            await subject.send(b"TAIL", is_complete=True)  # not Busy: the cancelled send let go
            received = await reader
        assert received.endswith(b"TAIL")
        prefix = len(received) - 4
        assert 0 < prefix < size
        assert received[:prefix] == data[:prefix]


@pytest.mark.parametrize("kind", STREAMS)
@pytest.mark.parametrize("role", ["client", "server"])
async def test_receive_argument_checks(kind: StreamKind, role: str, certs: Certs) -> None:
    async with stream_pair(client_stack(kind, certs), server_stack(kind, certs)) as pair:
        subject, peer = oriented(pair, role)
        for at_least, at_most in ((2, 1), (-1, 5), (0, 0)):
            with pytest.raises(ValueError):
                await subject.receive(at_least, at_most)
        await peer.send(b"abc", is_complete=True)
        assert await subject.receive(0, 1) in (b"", b"a")
        with pytest.raises(nc.EndOfStream) as caught:
            await subject.receive_exactly(10)
        assert caught.value.partial in (b"abc", b"bc")
        assert await subject.receive_exactly(0) == b""


async def test_send_waits_for_ready_and_callbacks_chain(certs: Certs) -> None:
    """send() on a started connection waits for Ready; callbacks chain and see the path."""
    async with nc.Listener(nc.TCP(), host="127.0.0.1") as listener:
        paths: list[nc.Path] = []
        viable: list[bool] = []
        conn = (
            nc.Connection(nc.Endpoint.host_port("127.0.0.1", listener.port), nc.TCP())
            .on_path_update(lambda c, path: paths.append(path))
            .on_viability_update(lambda c, v: viable.append(v))
            .on_better_path_update(lambda c, better: None)
        )
        try:
            async with asyncio.timeout(timeout(5)):
                await conn.send(b"ping")  # starts the connection
                server = await listener.accept()
                assert server is not None
                assert await server.receive_exactly(4) == b"ping"
                local = conn.local_endpoint
        finally:
            await conn.cancel()
        assert viable == [True]
        assert len(paths) == 1
        path = paths[0]
        assert path.local == local == server.remote_endpoint
        assert path.remote == nc.Address("127.0.0.1", listener.port)
        assert path.interface is not None and path.interface.type is nc.InterfaceType.LOOPBACK
        assert conn.current_path == path


async def test_dns_failure_fails_with_dns_error() -> None:
    """A name the resolver rejects at once (no query leaves the host) fails the connection."""
    for name in ("bad name.invalid", "a..b"):
        conn = nc.Connection(nc.Endpoint.host_port(name, 80), nc.TCP())
        states = record_states(conn)
        with pytest.raises(nc.DNSError) as caught:
            async with asyncio.timeout(timeout(5)):
                await conn.wait_ready()
        assert not caught.value.retryable
        assert states == ["Preparing", "Failed"]
        await conn.cancel()


async def test_temporary_dns_failure_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """EAI_AGAIN (the resolver is unreachable) is retryable: Waiting(DNSError)."""
    import socket

    async def unreachable_resolver(*args: object, **kwargs: object) -> object:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(loop, "getaddrinfo", unreachable_resolver)
    conn = nc.Connection(nc.Endpoint.host_port("example.test", 80), nc.TCP(), NO_RETRY_SOON)
    conn.start()
    try:
        await wait_until(lambda: isinstance(conn.state, nc.Waiting))
        assert isinstance(conn.state, nc.Waiting)
        assert isinstance(conn.state.error, nc.DNSError) and conn.state.error.retryable
    finally:
        await conn.cancel()


async def test_every_resolved_address_is_tried() -> None:
    """``localhost`` may resolve to ::1 first; with a listener on 127.0.0.1 only, falls back."""
    async with nc.Listener(nc.TCP(), host="127.0.0.1") as listener:
        conn = nc.Connection(nc.Endpoint.host_port("localhost", listener.port), nc.TCP())
        async with asyncio.timeout(timeout(5)), conn:
            assert conn.remote_endpoint == nc.Address("127.0.0.1", listener.port)
        report = conn.establishment_report
        assert nc.Address("127.0.0.1", listener.port) in report.resolved
        assert report.attempts[-1].outcome == "ready"
        for attempt in report.attempts[:-1]:
            assert attempt.outcome == "failed"
            assert isinstance(attempt.error, nc.ConnectionRefused)


async def test_broken_callback_is_reported_not_raised() -> None:
    reported: list[dict[str, object]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        conn = nc.Connection(nc.Endpoint.host_port("127.0.0.1", free_port()), nc.TCP())

        def broken(c: nc.Connection[nc.TCP], state: nc.State) -> None:
            raise ZeroDivisionError

        conn.on_state_update(broken)
        await conn.cancel()
    finally:
        loop.set_exception_handler(previous)
    assert isinstance(conn.state, nc.Cancelled)
    assert [type(r["exception"]) for r in reported] == [ZeroDivisionError]


async def test_task_cancelled_mid_establishment_leaves_no_socket() -> None:
    """Cancelling the task awaiting readiness, then the connection, leaks nothing."""
    conn = nc.Connection(nc.Endpoint.host_port("127.0.0.1", free_port()), nc.TCP(), FAST_RETRY)
    waiter = asyncio.create_task(conn.wait_ready(allow_waiting=True))
    await asyncio.sleep(0.05)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    conn.force_cancel()
    assert isinstance(conn.state, nc.Cancelled)


@pytest.mark.parametrize("kind", STREAMS)
@pytest.mark.parametrize("role", ["client", "server"])
async def test_cancel_fails_a_pending_receive(kind: StreamKind, role: str, certs: Certs) -> None:
    """A receive waiting when its own side cancels raises InvalidState, not a false EOF."""
    async with stream_pair(client_stack(kind, certs), server_stack(kind, certs)) as pair:
        subject, peer = oriented(pair, role)
        pending = asyncio.create_task(subject.receive())
        for _ in range(3):
            await asyncio.sleep(0)
        await subject.cancel()
        with pytest.raises(nc.InvalidState, match="cancelled"):
            async with asyncio.timeout(timeout(5)):
                await pending
        async with asyncio.timeout(timeout(5)):
            assert await peer.receive() == b""


async def test_restart_from_a_state_callback() -> None:
    """restart() called by the Waiting callback itself is not lost."""
    conn = nc.Connection(nc.Endpoint.host_port("127.0.0.1", free_port()), nc.TCP(), NO_RETRY_SOON)
    waits: list[nc.NetconnError] = []

    def retry_twice(c: nc.Connection[nc.TCP], state: nc.State) -> None:
        if isinstance(state, nc.Waiting):
            waits.append(state.error)
            if len(waits) < 3:
                c.restart()

    conn.on_state_update(retry_twice)
    conn.start()
    try:
        await wait_until(lambda: len(waits) == 3)
    finally:
        await conn.cancel()


@pytest.mark.parametrize("state", [nc.Preparing, nc.Ready, nc.Waiting])
async def test_force_cancel_from_a_state_callback(state: type[nc.State]) -> None:
    """force_cancel() inside a state callback leaves a clean Cancelled connection."""
    async with nc.Listener(nc.TCP(), host="127.0.0.1") as listener:
        port = listener.port if state is not nc.Waiting else free_port()
        conn = nc.Connection(nc.Endpoint.host_port("127.0.0.1", port), nc.TCP(), FAST_RETRY)
        states = record_states(conn)

        def stop(c: nc.Connection[nc.TCP], new: nc.State) -> None:
            if isinstance(new, state):
                c.force_cancel()

        conn.on_state_update(stop)
        conn.start()
        await wait_until(lambda: isinstance(conn.state, nc.Cancelled))
        for _ in range(10):
            await asyncio.sleep(0.01)
        expected = {"Preparing": [], "Ready": ["Ready"], "Waiting": ["Waiting"]}[state.__name__]
        assert states == ["Preparing", *expected, "Cancelled"]
        assert conn.local_endpoint is None
        with pytest.raises(nc.InvalidState):
            await conn.send(b"x")


@pytest.mark.parametrize("kind", STREAMS)
@pytest.mark.parametrize("role", ["client", "server"])
async def test_cancel_during_a_blocked_send(kind: StreamKind, role: str, certs: Certs) -> None:
    """cancel() while another task's send waits: that send raises InvalidState at once,
    what it had handed over is flushed, and the peer sees a clean end after a prefix."""
    size = 64 << 20
    data = bytes(range(256)) * (size // 256)
    async with stream_pair(client_stack(kind, certs), server_stack(kind, certs)) as pair:
        subject, peer = oriented(pair, role)
        sending = asyncio.create_task(subject.send(data))
        await wait_until(lambda: peer.buffered_bytes[1] > 0)
        for _ in range(10):
            await asyncio.sleep(0.005)
        assert not sending.done()

        async def read_all() -> bytes:
            received = bytearray()
            while chunk := await peer.receive(1, 1 << 20):
                received += chunk
            return bytes(received)

        async with asyncio.timeout(timeout(10)):
            reader = asyncio.create_task(read_all())
            await subject.cancel()
            with pytest.raises(nc.InvalidState, match="cancelled"):
                await sending
            received = await reader  # a clean end of stream, no reset or truncation
        assert 0 < len(received) < size
        assert received == data[: len(received)]
