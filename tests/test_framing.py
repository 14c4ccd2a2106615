"""TLV and length-prefix framers over TCP, TLS and an in-memory byte channel."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from conftest import Certs, timeout
from loopback import running

import netconn as nc
from netconn.stacks.base import Message
from netconn.stacks.framing import FramerChannel

LOCAL = "127.0.0.1"


async def echo(conn: nc.Connection[Any]) -> None:
    """Send every frame back with its type."""
    while True:
        try:
            message = await conn.receive_message()
        except nc.ConnectionClosed:
            return
        if "type" in message.metadata:
            await conn.send(message.content, type=message.metadata["type"])
        else:
            await conn.send(message.content)


@asynccontextmanager
async def server(
    stack: nc.Stack, handler: Callable[[nc.Connection[Any]], Awaitable[None]] = echo
) -> AsyncIterator[nc.Listener[Any]]:
    async with nc.Listener(stack, host=LOCAL) as listener, running(listener, handler):
        yield listener


@asynccontextmanager
async def raw_server(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[int]:
    srv = await asyncio.start_server(handler, LOCAL, 0)
    async with srv:
        yield srv.sockets[0].getsockname()[1]


def endpoint(port: int) -> nc.Endpoint:
    return nc.Endpoint.host_port(LOCAL, port)


async def test_tlv_round_trip_keeps_types_and_boundaries() -> None:
    stack = nc.TLV(nc.TCP(), max_length=1 << 21)
    async with server(stack) as listener, nc.Connection(endpoint(listener.port), stack) as conn:
        big = os.urandom(1 << 21)
        await conn.send(b"hello", type=1)
        await conn.send(b"", type=0xFFFFFFFF)
        await conn.send(big, type=7)
        await conn.send(b"default type")
        got = [await conn.receive_message() for _ in range(4)]
    assert [(m.content[:5], m.metadata["type"]) for m in got] == [
        (b"hello", 1),
        (b"", 0xFFFFFFFF),
        (big[:5], 7),
        (b"defau", 0),
    ]
    assert got[2].content == big


async def test_tlv_wire_format_is_type_then_length_big_endian() -> None:
    seen: asyncio.Queue[bytes] = asyncio.Queue()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.put_nowait(await reader.readexactly(2 + 2 + 3))
        writer.write(b"\x00\x05\x00\x02ok")
        await writer.drain()
        await reader.read()
        writer.close()

    stack = nc.TLV(nc.TCP(), type_width=2, length_width=2)
    async with raw_server(handler) as port, nc.Connection(endpoint(port), stack) as conn:
        await conn.send(b"abc", type=0x0102)
        assert await asyncio.wait_for(seen.get(), timeout(5)) == b"\x01\x02\x00\x03abc"
        reply = await conn.receive_message()
        assert (reply.content, reply.metadata) == (b"ok", {"type": 5})


async def test_length_prefix_round_trip_and_wire_format() -> None:
    stack = nc.LengthPrefix(nc.TCP(), width=2, max_length=1000)
    async with server(stack) as listener, nc.Connection(endpoint(listener.port), stack) as conn:
        for payload in (b"", b"x", b"y" * 1000):
            await conn.send(payload)
            reply = await conn.receive_message()
            assert (reply.content, reply.metadata) == (payload, {})

    seen: asyncio.Queue[bytes] = asyncio.Queue()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.put_nowait(await reader.readexactly(4 + 2))
        await reader.read()
        writer.close()

    async with (
        raw_server(handler) as port,
        nc.Connection(endpoint(port), nc.LengthPrefix()) as conn,
    ):
        await conn.send(b"hi")
        assert await asyncio.wait_for(seen.get(), timeout(5)) == b"\x00\x00\x00\x02hi"


async def test_oversize_send_is_refused_and_connection_survives() -> None:
    stack = nc.TLV(nc.TCP(), max_length=100)
    async with server(stack) as listener, nc.Connection(endpoint(listener.port), stack) as conn:
        with pytest.raises(nc.MessageTooLarge) as info:
            await conn.send(b"x" * 101, type=1)
        assert (info.value.size, info.value.maximum) == (101, 100)
        with pytest.raises(ValueError):
            await conn.send(b"x", type=1 << 32)
        with pytest.raises(ValueError):
            await conn.send(b"x", is_complete=False)
        await conn.send(b"x" * 100, type=2)
        reply = await conn.receive_message()
        assert (len(reply.content), reply.metadata["type"]) == (100, 2)
        assert isinstance(conn.state, nc.Ready)


async def test_oversize_frame_from_peer_fails_without_buffering_it() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Claims a 4 GiB value, then sends a little of it.
        writer.write(struct.pack("!II", 9, 0xFFFFFFFF) + b"\x00" * 1000)
        await writer.drain()
        with contextlib.suppress(ConnectionResetError):  # the client aborts: RST
            await reader.read()
        writer.close()

    stack = nc.TLV(nc.TCP(), max_length=1 << 16)
    async with raw_server(handler) as port:
        conn = await nc.Connection(endpoint(port), stack).wait_ready()
        channel = conn._channel
        assert isinstance(channel, FramerChannel)
        with pytest.raises(nc.MessageTooLarge) as info:
            await conn.receive_message()
        assert (info.value.size, info.value.maximum) == (0xFFFFFFFF, 1 << 16)
        assert channel.buffered_bytes <= 8  # only the header was held
        assert isinstance(conn.state, nc.Failed)
        assert isinstance(conn.state.error, nc.MessageTooLarge)
        await conn.cancel()


async def test_stream_ending_inside_a_frame_is_end_of_stream() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(struct.pack("!I", 10) + b"only5")
        await writer.drain()
        writer.close()

    async with raw_server(handler) as port:
        conn = await nc.Connection(endpoint(port), nc.LengthPrefix()).wait_ready()
        with pytest.raises(nc.EndOfStream) as info:
            await conn.receive_message()
        assert (info.value.partial, info.value.expected) == (b"only5", 10)
        await conn.cancel()


async def test_clean_end_between_frames_is_connection_closed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(struct.pack("!I", 2) + b"ok")
        await writer.drain()
        writer.close()

    async with (
        raw_server(handler) as port,
        nc.Connection(endpoint(port), nc.LengthPrefix()) as conn,
    ):
        assert (await conn.receive_message()).content == b"ok"
        with pytest.raises(nc.ConnectionClosed):
            await conn.receive_message()


async def test_cancelled_receive_resumes_the_same_frame() -> None:
    go = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(struct.pack("!HI", 3, 7) + b"par")  # header and half the body
        await writer.drain()
        await go.wait()
        writer.write(b"tial" + struct.pack("!HI", 4, 0))
        await writer.drain()
        await reader.read()
        writer.close()

    stack = nc.TLV(nc.TCP(), type_width=2)
    async with raw_server(handler) as port, nc.Connection(endpoint(port), stack) as conn:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.receive_message(), 0.2)
        go.set()
        first = await conn.receive_message()
        second = await conn.receive_message()
        assert (first.content, first.metadata) == (b"partial", {"type": 3})
        assert (second.content, second.metadata) == (b"", {"type": 4})


async def test_tlv_over_tls(certs: Certs) -> None:
    server_stack = nc.TLV(nc.TLS(certificate=(certs.cert, certs.key)))
    client_stack = nc.TLV(nc.TLS(ca_file=certs.ca))
    async with (
        server(server_stack) as listener,
        nc.Connection(nc.Endpoint.host_port("localhost", listener.port), client_stack) as conn,
    ):
        await conn.send(b"secret", type=42)
        reply = await conn.receive_message()
        assert (reply.content, reply.metadata) == (b"secret", {"type": 42})
        assert conn.negotiated_alpn is None and conn.tls_info is not None


class MemoryStream:
    """One direction of an in-memory byte stream, delivered in small pieces."""

    def __init__(self, data: bytes = b"", piece: int = 3) -> None:
        self.incoming = bytearray(data)
        self.outgoing = bytearray()
        self.piece = piece
        self.closed = False

    @property
    def local_address(self) -> nc.Address | None:
        return None

    @property
    def remote_address(self) -> nc.Address | None:
        return None

    @property
    def receive_complete(self) -> bool:
        return not self.incoming

    async def send(self, data: bytes | bytearray | memoryview, is_complete: bool) -> None:
        self.outgoing += data

    async def receive(self, at_least: int, at_most: int) -> bytes:
        await asyncio.sleep(0)
        n = min(at_most, self.piece, len(self.incoming))
        data = bytes(self.incoming[:n])
        del self.incoming[:n]
        return data

    async def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True


async def test_framers_work_on_any_byte_channel() -> None:
    # What a QUIC stream (or any ByteChannel) gets: the framer only calls
    # send/receive on the channel it is given.
    wire = struct.pack("!BH", 1, 5) + b"hello" + struct.pack("!BH", 2, 0)
    stream = MemoryStream(wire, piece=2)
    framer = nc.TLV(type_width=1, length_width=2).frame(stream)
    got: list[Message] = [await framer.receive_message(), await framer.receive_message()]
    assert [(m.content, m.metadata["type"]) for m in got] == [(b"hello", 1), (b"", 2)]
    with pytest.raises(nc.ConnectionClosed):
        await framer.receive_message()
    await framer.send_message(b"back", True, type=9)
    assert bytes(stream.outgoing) == b"\x09\x00\x04back"

    # Typed values over a framed stream: what Coder(T, TLV()) does on one QUIC stream.
    @dataclass
    class Point:
        x: int

    reply = struct.pack("!BH", 0, 7) + b'{"x":5}'
    typed = nc.Coder(Point, nc.TLV(type_width=1, length_width=2)).wrap(
        nc.TLV(type_width=1, length_width=2).frame(MemoryStream(reply))
    )
    await typed.send_value(Point(4))
    assert await typed.receive_value() == Point(5)

    plain = nc.LengthPrefix(width=1).frame(MemoryStream(b"\x03abc"))
    assert (await plain.receive_message()).content == b"abc"
    await plain.close()


def test_options_are_validated() -> None:
    with pytest.raises(ValueError):
        nc.TLV(type_width=3)
    with pytest.raises(ValueError):
        nc.TLV(max_length=0)
    assert nc.TLV(length_width=1).frame(MemoryStream()).maximum_message_size == 255
    assert nc.TLV(length_width=2, max_length=100).frame(MemoryStream()).maximum_message_size == 100
    with pytest.raises(ValueError):
        nc.TLV(type_width=1, default_type=256)
    with pytest.raises(ValueError):
        nc.LengthPrefix(width=2, max_length=0)
    assert nc.LengthPrefix(width=1).frame(MemoryStream()).maximum_message_size == 255
