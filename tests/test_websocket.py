"""WebSocket over TCP and TLS: netconn on both sides, and against the ``websockets`` library."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from conftest import Certs, timeout
from loopback import running
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed as WSConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol
from websockets.utils import accept_key

import netconn as nc

LOCAL = "127.0.0.1"
Handler = Callable[[nc.Connection[nc.WebSocket]], Awaitable[None]]


async def echo(conn: nc.Connection[nc.WebSocket]) -> None:
    """Send every message back (text as text) until the peer closes."""
    async for message in conn.messages():
        if message.metadata["opcode"] == "close":
            return
        if message.metadata["opcode"] == "text":
            await conn.send(message.content.decode())
        else:
            await conn.send(message.content)


@asynccontextmanager
async def netconn_server(
    stack: nc.WebSocket, handler: Handler = echo, parameters: nc.Parameters | None = None
) -> AsyncIterator[nc.Listener[nc.WebSocket]]:
    async with (
        nc.Listener(stack, host=LOCAL, parameters=parameters) as listener,
        running(listener, handler),
    ):
        yield listener


def endpoint(port: int) -> nc.Endpoint:
    return nc.Endpoint.host_port(LOCAL, port)


async def accept_upgrade(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer a WebSocket opening handshake by hand (for raw servers that misbehave after it)."""
    request = await reader.readuntil(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip()
        for line in request.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key")
    )
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n\r\n"
    )


async def test_messages_keep_boundaries_and_opcodes() -> None:
    async with (
        netconn_server(nc.WebSocket()) as listener,
        nc.Connection(endpoint(listener.port), nc.WebSocket(path="/chat?room=1")) as conn,
    ):
        await conn.send(b"\x00binary")
        await conn.send("text ✓")
        await conn.send(b"")
        first = await conn.receive_message()
        second = await conn.receive_message()
        third = await conn.receive_message()
        assert (first.content, first.metadata["opcode"]) == (b"\x00binary", "binary")
        assert (second.content.decode(), second.metadata["opcode"]) == ("text ✓", "text")
        assert (third.content, third.metadata["opcode"]) == (b"", "binary")
        handshake = conn.websocket_handshake
        assert handshake is not None
        assert handshake.path == "/chat?room=1"
        assert handshake.extensions == ["permessage-deflate"]


async def test_server_sees_request_path_headers_and_subprotocol() -> None:
    seen: asyncio.Queue[nc.WebSocketHandshake | None] = asyncio.Queue()

    async def handler(conn: nc.Connection[nc.WebSocket]) -> None:
        seen.put_nowait(conn.websocket_handshake)
        await echo(conn)

    server = nc.WebSocket(subprotocols=["b", "a"], compression=False)
    client = nc.WebSocket(path="/room/7?x=1", subprotocols=["a"], headers=[("X-Id", "42")])
    async with (
        netconn_server(server, handler) as listener,
        nc.Connection(endpoint(listener.port), client) as conn,
    ):
        handshake = await asyncio.wait_for(seen.get(), timeout(5))
        assert handshake is not None
        assert handshake.path == "/room/7?x=1"
        assert ("X-Id", "42") in handshake.request_headers
        assert handshake.subprotocol == "a" and handshake.extensions == []
        client_view = conn.websocket_handshake
        assert client_view is not None and client_view.subprotocol == "a"


async def test_fragmented_send_arrives_as_one_message() -> None:
    async with (
        netconn_server(nc.WebSocket()) as listener,
        nc.Connection(endpoint(listener.port), nc.WebSocket()) as conn,
    ):
        await conn.send(b"one ", is_complete=False)
        await conn.send(b"two ", is_complete=False)
        await conn.send(b"three")
        await conn.send("ä", is_complete=False)
        with pytest.raises(nc.InvalidState):
            await conn.send(b"bytes cannot continue a text message")
        await conn.send("ö")
        assert (await conn.receive_message()).content == b"one two three"
        text = await conn.receive_message()
        assert (text.content.decode(), text.metadata["opcode"]) == ("äö", "text")


async def test_concurrent_receives_are_refused_not_interleaved() -> None:
    async with (
        netconn_server(nc.WebSocket()) as listener,
        nc.Connection(endpoint(listener.port), nc.WebSocket()) as conn,
    ):
        first = asyncio.create_task(conn.receive_message())
        await asyncio.sleep(0.05)
        with pytest.raises(nc.Busy):
            await conn.receive_message()
        first.cancel()  # a cancelled receive loses nothing
        with pytest.raises(asyncio.CancelledError):
            await first
        await conn.send(b"after")
        assert (await conn.receive_message()).content == b"after"


async def test_receives_fragmented_messages_from_websockets_library() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send(iter([b"frag", b"ment", b"ed"]))  # one message in three frames
        await ws.send(iter(["te", "xt"]))
        await ws.wait_closed()

    async with serve(handler, LOCAL, 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with nc.Connection(endpoint(port), nc.WebSocket()) as conn:
            binary = await conn.receive_message()
            text = await conn.receive_message()
    assert (binary.content, binary.metadata["opcode"]) == (b"fragmented", "binary")
    assert (text.content, text.metadata["opcode"]) == (b"text", "text")


async def test_client_interoperates_with_websockets_server() -> None:
    seen: dict[str, Any] = {}

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        seen["path"] = ws.request.path
        seen["header"] = ws.request.headers.get("X-Test")
        seen["subprotocol"] = ws.subprotocol
        async for message in ws:
            await ws.send(message)

    stack = nc.WebSocket(
        path="/echo", subprotocols=["chat.v2", "chat.v1"], headers=[("X-Test", "1")]
    )
    async with serve(handler, LOCAL, 0, subprotocols=[Subprotocol("chat.v1")]) as server:
        port = server.sockets[0].getsockname()[1]
        async with nc.Connection(endpoint(port), stack) as conn:
            await conn.send("hello")
            await conn.send(os.urandom(100_000))
            reply = await conn.receive_message()
            big = await conn.receive_message()
            handshake = conn.websocket_handshake
    assert reply.content == b"hello" and reply.metadata["opcode"] == "text"
    assert len(big.content) == 100_000 and big.metadata["opcode"] == "binary"
    assert seen == {"path": "/echo", "header": "1", "subprotocol": "chat.v1"}
    assert handshake is not None and handshake.subprotocol == "chat.v1"
    assert handshake.extensions == ["permessage-deflate"]


async def test_server_interoperates_with_websockets_client() -> None:
    async with netconn_server(nc.WebSocket(subprotocols=["chat.v1"])) as listener:
        uri = f"ws://{LOCAL}:{listener.port}/x"
        async with ws_connect(uri, subprotocols=[Subprotocol("chat.v1")]) as ws:
            await ws.send("ping ✓")
            assert await ws.recv() == "ping ✓"
            await ws.send(b"\x01\x02")
            assert await ws.recv() == b"\x01\x02"
            await ws.send(["frag", "mented"])  # fragmented by the library
            assert await ws.recv() == "fragmented"
            assert ws.subprotocol == "chat.v1"
            await ws.close(4001, "done")
            assert ws.close_code == 4001


async def test_server_sees_websockets_client_close_code() -> None:
    closes: asyncio.Queue[nc.Message] = asyncio.Queue()

    async def handler(conn: nc.Connection[nc.WebSocket]) -> None:
        async for message in conn.messages():
            if message.metadata["opcode"] == "close":
                closes.put_nowait(message)

    async with netconn_server(nc.WebSocket(), handler) as listener:
        async with ws_connect(f"ws://{LOCAL}:{listener.port}/") as ws:
            await ws.close(4002, "client done")
        close = await asyncio.wait_for(closes.get(), timeout(5))
    assert close.metadata == {"opcode": "close", "close_code": 4002, "close_reason": "client done"}


async def test_close_code_and_reason_from_netconn_server() -> None:
    async def handler(conn: nc.Connection[nc.WebSocket]) -> None:
        await conn.receive_message()
        await conn.close_with(4003, "server done")

    async with (
        netconn_server(nc.WebSocket(), handler) as listener,
        nc.Connection(endpoint(listener.port), nc.WebSocket()) as conn,
    ):
        await conn.send(b"go")
        close = await conn.receive_message()
        assert close.metadata == {
            "opcode": "close",
            "close_code": 4003,
            "close_reason": "server done",
        }
        with pytest.raises(nc.ApplicationClosed) as info:
            await conn.receive_message()
        assert (info.value.code, info.value.reason, info.value.by_peer) == (
            4003,
            "server done",
            True,
        )


async def test_cancel_sends_close_frame_to_websockets_server() -> None:
    codes: asyncio.Queue[int | None] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        with pytest.raises(WSConnectionClosed):
            await ws.recv()
        codes.put_nowait(ws.close_code)

    async with serve(handler, LOCAL, 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = await nc.Connection(endpoint(port), nc.WebSocket()).wait_ready()
        await conn.cancel()
        assert await asyncio.wait_for(codes.get(), timeout(5)) == 1000
        conn2 = await nc.Connection(endpoint(port), nc.WebSocket()).wait_ready()
        await conn2.close_with(4010, "custom")
        assert await asyncio.wait_for(codes.get(), timeout(5)) == 4010
        assert isinstance(conn2.state, nc.Cancelled)
        with pytest.raises(ValueError):
            await nc.Connection(endpoint(port), nc.WebSocket()).close_with(1005)


async def test_tls_websocket_both_ways(certs: Certs) -> None:
    server_stack = nc.WebSocket(nc.TLS(certificate=(certs.cert, certs.key)))
    client_stack = nc.WebSocket(nc.TLS(ca_file=certs.ca), path="/secure")
    async with (
        netconn_server(server_stack) as listener,
        nc.Connection(nc.Endpoint.host_port("localhost", listener.port), client_stack) as conn,
    ):
        await conn.send("over TLS")
        assert (await conn.receive_message()).content == b"over TLS"
        assert conn.tls_info is not None
        # The websockets library's client against netconn's wss server.
        context = ssl.create_default_context(cafile=certs.ca)
        async with ws_connect(f"wss://localhost:{listener.port}/", ssl=context) as ws:
            await ws.send(b"library over TLS")
            assert await ws.recv() == b"library over TLS"


async def test_tls_websocket_to_websockets_server(certs: Certs) -> None:
    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert, certs.key)
    async with serve(handler, "localhost", 0, ssl=context) as server:
        port = server.sockets[0].getsockname()[1]
        stack = nc.WebSocket(nc.TLS(ca_file=certs.ca))
        async with nc.Connection(nc.Endpoint.host_port("localhost", port), stack) as conn:
            await conn.send(b"wss")
            assert (await conn.receive_message()).content == b"wss"


@pytest.mark.parametrize("compression", [False, True])
async def test_16_mib_messages_both_ways(compression: bool) -> None:
    size = 16 << 20
    # Random bytes do not compress; a repeating pattern does (and stays bounded
    # by max_message_size after decompression).
    payload = os.urandom(size) if not compression else bytes(range(256)) * (size // 256)
    stack = nc.WebSocket(max_message_size=size, compression=compression)
    async with (
        netconn_server(stack) as listener,
        nc.Connection(endpoint(listener.port), stack) as conn,
    ):
        await conn.send(payload)
        reply = await asyncio.wait_for(conn.receive_message(), timeout(60))
        assert reply.content == payload
        handshake = conn.websocket_handshake
        assert handshake is not None
        assert handshake.extensions == (["permessage-deflate"] if compression else [])


async def test_oversize_message_is_refused_with_1009() -> None:
    failed: asyncio.Queue[nc.State] = asyncio.Queue()

    def watch(conn: nc.Connection[nc.WebSocket]) -> None:
        conn.on_state_update(
            lambda c, s: failed.put_nowait(s) if isinstance(s, nc.Failed) else None
        )

    async def handler(conn: nc.Connection[nc.WebSocket]) -> None:
        watch(conn)
        assert len((await conn.receive_message()).content) == 1024
        with pytest.raises((nc.MessageTooLarge, nc.InvalidState)):
            await conn.receive_message()

    server = nc.WebSocket(max_message_size=1024)
    async with (
        netconn_server(server, handler) as listener,
        nc.Connection(endpoint(listener.port), nc.WebSocket(compression=False)) as conn,
    ):
        await conn.send(b"x" * 1024)  # at the limit: fine
        await conn.send(b"x" * 1025)
        close = await asyncio.wait_for(conn.receive_message(), timeout(5))
        assert close.metadata["opcode"] == "close"
        assert close.metadata["close_code"] == 1009
        # The connection failed with the peer's 1009; a later receive says so.
        with pytest.raises(nc.NetconnError) as info:
            await conn.receive_message()
        closed = (
            info.value if isinstance(info.value, nc.ApplicationClosed) else info.value.__cause__
        )
        assert isinstance(closed, nc.ApplicationClosed) and closed.code == 1009
        state = await asyncio.wait_for(failed.get(), timeout(5))
        assert isinstance(state, nc.Failed) and isinstance(state.error, nc.MessageTooLarge)
        assert state.error.maximum == 1024
        assert isinstance(conn.state, nc.Failed)
        assert isinstance(conn.state.error, nc.ApplicationClosed) and conn.state.error.code == 1009


async def raw_handshake(port: int, path: str = "/") -> socket.socket:
    """A raw TCP socket that has completed a WebSocket client handshake."""
    sock = socket.create_connection((LOCAL, port))
    sock.settimeout(timeout(5))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {LOCAL}:{port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    )
    await asyncio.to_thread(sock.sendall, request.encode())
    response = b""
    while b"\r\n\r\n" not in response:
        chunk = await asyncio.to_thread(sock.recv, 4096)
        assert chunk, "server closed during the handshake"
        response += chunk
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x83\x80\x00\x00\x00\x00", 1002),  # reserved opcode 3
        (b"\xc2\x80\x00\x00\x00\x00", 1002),  # RSV1 without an extension... on a binary frame
        (b"\x82\x00", 1002),  # unmasked frame from a client
        (b"\x09\x80\x00\x00\x00\x00", 1002),  # fragmented ping
        (b"\x81\x82\x00\x00\x00\x00\xc3\x28", 1007),  # invalid UTF-8 in a text message
    ],
)
async def test_invalid_frames_from_raw_socket_fail_with_close_code(frame: bytes, code: int) -> None:
    states: asyncio.Queue[nc.State] = asyncio.Queue()

    async def handler(conn: nc.Connection[nc.WebSocket]) -> None:
        conn.on_state_update(lambda c, s: states.put_nowait(s))
        with pytest.raises((nc.ProtocolError, nc.InvalidState)):
            await conn.receive_message()

    async with netconn_server(nc.WebSocket(compression=False), handler) as listener:
        sock = await raw_handshake(listener.port)
        with sock:
            await asyncio.to_thread(sock.sendall, frame)
            # The server answers with a close frame and ends the stream: no hang.
            data = await asyncio.to_thread(read_all, sock)
        assert data[0] == 0x88, data  # an unmasked close frame
        assert struct.unpack("!H", data[2:4])[0] == code
        state = await asyncio.wait_for(states.get(), timeout(5))
        assert isinstance(state, nc.Failed) and isinstance(state.error, nc.ProtocolError)


async def test_invalid_frame_to_waiting_client_raises_protocol_error() -> None:
    # A raw server that accepts the upgrade, then sends a masked frame (which a
    # server must never do).
    ready = asyncio.Event()
    received: list[bytes] = []

    async def raw_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_upgrade(reader, writer)
        await ready.wait()
        writer.write(b"\x82\x81\x00\x00\x00\x00x")
        header = await reader.readexactly(2)  # the client's close frame
        received.append(header + await reader.readexactly(4 + (header[1] & 0x7F)))
        writer.close()  # a server closes TCP first

    server = await asyncio.start_server(raw_server, LOCAL, 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        conn = nc.Connection(endpoint(port), nc.WebSocket(compression=False))
        async with conn:
            waiting = asyncio.create_task(conn.receive_message())
            await asyncio.sleep(0)
            ready.set()
            with pytest.raises(nc.ProtocolError):
                await asyncio.wait_for(waiting, timeout(15))
        assert received and received[0][0] == 0x88
        close_payload = bytes(
            b ^ m for b, m in zip(received[0][6:8], received[0][2:4], strict=True)
        )
        assert struct.unpack("!H", close_payload)[0] == 1002


async def test_ping_timeout_marks_not_viable_then_fails() -> None:
    # A peer that completes the handshake and then never answers (never reads).
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_upgrade(reader, writer)
        await done.wait()
        writer.close()

    done = asyncio.Event()
    events: list[Any] = []
    server = await asyncio.start_server(silent, LOCAL, 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        stack = nc.WebSocket(ping_interval=0.1, ping_timeout=0.3)
        conn = nc.Connection(endpoint(port), stack)
        conn.on_viability_update(lambda c, viable: events.append(("viable", viable)))
        conn.on_state_update(lambda c, s: events.append(s))
        await conn.wait_ready()
        with pytest.raises(nc.ConnectionTimeout):
            await asyncio.wait_for(conn.receive_message(), timeout(5))
        done.set()
        conn.force_cancel()
    viable_false = events.index(("viable", False))
    failed = next(i for i, e in enumerate(events) if isinstance(e, nc.Failed))
    assert viable_false < failed
    failed_state = events[failed]
    assert isinstance(failed_state.error, nc.ConnectionTimeout)


async def test_ping_pong_keeps_connection_alive() -> None:
    stack = nc.WebSocket(ping_interval=0.05, ping_timeout=0.5)
    async with (
        netconn_server(stack) as listener,
        nc.Connection(endpoint(listener.port), stack) as conn,
    ):
        await asyncio.sleep(0.4)  # several pings answered
        assert isinstance(conn.state, nc.Ready) and conn.is_viable
        await conn.send(b"still here")
        assert (await conn.receive_message()).content == b"still here"


async def test_handshake_403_from_websockets_server() -> None:
    def forbid(connection: ServerConnection, request: Request) -> Response:
        response = connection.respond(403, "go away\n")
        response.headers["X-Reason"] = "no token"
        return response

    async def handler(ws: ServerConnection) -> None:
        raise AssertionError("not reached")

    async with serve(handler, LOCAL, 0, process_request=forbid) as server:
        port = server.sockets[0].getsockname()[1]
        conn = nc.Connection(endpoint(port), nc.WebSocket())
        with pytest.raises(nc.HandshakeRejected) as info:
            await conn.wait_ready(timeout(5))
    error = info.value
    assert "403" in str(error)
    assert error.status == 403
    assert ("X-Reason", "no token") in error.headers
    assert error.body == b"go away\n"
    assert isinstance(conn.state, nc.Failed) and conn.state.error is error


async def test_check_request_rejects_with_status() -> None:
    def check(request: nc.HandshakeRequest) -> int | None:
        return None if request.header("Authorization") == "Bearer ok" else 403

    async with netconn_server(nc.WebSocket(check_request=check)) as listener:
        with pytest.raises(nc.HandshakeRejected) as info:
            await nc.Connection(endpoint(listener.port), nc.WebSocket()).wait_ready(timeout(5))
        assert info.value.status == 403
        stack = nc.WebSocket(headers=[("Authorization", "Bearer ok")])
        async with nc.Connection(endpoint(listener.port), stack) as conn:
            await conn.send(b"allowed")
            assert (await conn.receive_message()).content == b"allowed"
        assert listener.failed_handshakes == 1


async def test_check_request_that_raises_or_returns_no_error_status_gives_500() -> None:
    def broken(request: nc.HandshakeRequest) -> int | None:
        if request.path == "/raise":
            raise RuntimeError("bug in the hook")
        return 200  # not an error status

    async with netconn_server(nc.WebSocket(check_request=broken)) as listener:
        for path in ("/raise", "/ok"):
            conn = nc.Connection(endpoint(listener.port), nc.WebSocket(path=path))
            with pytest.raises(nc.HandshakeRejected) as info:
                await conn.wait_ready(timeout(5))
            assert info.value.status == 500


async def test_not_a_websocket_server_is_a_protocol_error() -> None:
    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http, LOCAL, 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(nc.HandshakeRejected) as info:
            await nc.Connection(endpoint(port), nc.WebSocket()).wait_ready(timeout(5))
    assert info.value.status == 200


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the peer closed (FIN) or aborted (RST) without sending anything."""
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


async def test_silent_client_handshake_times_out_on_server() -> None:
    async with netconn_server(nc.WebSocket(open_timeout=0.2)) as listener:
        with socket.create_connection((LOCAL, listener.port)) as sock:
            sock.settimeout(timeout(5))
            assert await asyncio.to_thread(_closed_by_peer, sock)
        assert listener.failed_handshakes == 1


async def test_silent_client_under_tls_times_out_on_server(certs: Certs) -> None:
    stack = nc.WebSocket(nc.TLS(certificate=(certs.cert, certs.key)), open_timeout=0.2)
    async with netconn_server(stack) as listener:
        with socket.create_connection((LOCAL, listener.port)) as sock:
            sock.settimeout(timeout(5))
            assert await asyncio.to_thread(_closed_by_peer, sock)
        assert listener.failed_handshakes == 1


async def test_receive_side_is_bounded_when_application_does_not_read() -> None:
    channels: asyncio.Queue[Any] = asyncio.Queue()

    async def idle(conn: nc.Connection[nc.WebSocket]) -> None:
        channels.put_nowait(conn._channel)
        await asyncio.sleep(timeout(30))

    limit = 256 * 1024
    params = nc.Parameters(receive_buffer=limit, send_buffer=limit)
    message = os.urandom(64 * 1024)
    # The idle server never reads the close frame: keep the close timeout short.
    stack = nc.WebSocket(compression=False, close_timeout=0.2)
    async with (
        netconn_server(stack, idle, params) as listener,
        nc.Connection(endpoint(listener.port), stack, params) as conn,
    ):
        channel = await channels.get()
        sent = 0
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                while True:
                    await conn.send(message)
                    sent += len(message)
        # The sender was stopped by back-pressure: the server holds at most its
        # receive bound, one read (at most 256 KiB) and one partial message; the
        # TCP channel keeps at most the one read that found no room (the
        # transport stops reading then), and the rest waits in the kernel.
        assert channel.buffered_bytes <= limit + 256 * 1024 + len(message)
        assert channel.inner.buffered_bytes[1] <= 256 * 1024
        assert sent < 64 << 20


async def test_a_message_reaches_a_waiting_receive_in_one_loop_turn() -> None:
    """Frames are parsed in the TCP transport's callback: no reader task between the socket
    and a waiting ``receive_message`` (which would cost a loop turn per message)."""
    frames: asyncio.Queue[bytes] = asyncio.Queue()

    async def raw_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accept_upgrade(reader, writer)
        while frame := await frames.get():
            writer.write(frame)  # loopback: in the client's socket when this returns
        writer.close()

    server = await asyncio.start_server(raw_server, LOCAL, 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        async with nc.Connection(endpoint(port), nc.WebSocket(compression=False)) as conn:
            for i in range(3):
                waiting = asyncio.create_task(conn.receive_message())
                await asyncio.sleep(0)  # now waiting for a message
                frames.put_nowait(b"\x82\x01" + bytes([i]))
                await asyncio.sleep(0)  # the server task writes the frame
                turns = 0
                while not waiting.done():
                    await asyncio.sleep(0)
                    turns += 1
                    assert turns < 10
                # Turn 1: the transport reads the frame and wakes the receive;
                # turn 2: the receive returns (this loop sees it done in turn 3).
                assert turns <= 3
                assert waiting.result().content == bytes([i])
            frames.put_nowait(b"")
            conn.force_cancel()


async def test_an_idle_websocket_layer_allocates_little() -> None:
    """What netconn's WebSocket layer itself keeps per idle connection, both sides counted.

    No reader task over TCP, no instance dict (slots), no queue, ping table or
    fragment list until one is needed: about 1.5 KiB a side (3.7 KiB
    with an instance dict, an Event and a deque per connection), plus the
    protocol core's parser and byte reader, made here in place of the
    library's own (about 0.5 KiB a side, the size of the ones they replace).
    """
    import gc
    import tracemalloc

    async with netconn_server(nc.WebSocket(compression=False, ping_interval=None)) as listener:
        stack = nc.WebSocket(compression=False, ping_interval=None)
        conns: list[nc.Connection[nc.WebSocket]] = []

        async def open_one() -> None:
            conn = nc.Connection(endpoint(listener.port), stack)
            conns.append(conn)
            await conn.wait_ready(timeout(5))
            await conn.send(b"x")
            assert (await conn.receive_message()).content == b"x"

        count = 20
        try:
            await open_one()  # caches and first-use allocations
            gc.collect()
            tracemalloc.start(1)
            try:
                before = tracemalloc.take_snapshot()
                for _ in range(count):
                    await open_one()
                await asyncio.sleep(0.05)
                gc.collect()
                after = tracemalloc.take_snapshot()
            finally:
                tracemalloc.stop()
            only = [tracemalloc.Filter(True, "*/netconn/stacks/websocket.py")]
            stats = after.filter_traces(only).compare_to(before.filter_traces(only), "lineno")
            per_pair = sum(s.size_diff for s in stats) / count
            assert per_pair < 4608, [str(s) for s in stats[:8]]
        finally:
            for conn in conns:
                await conn.cancel()
