"""Typed messages: Coder over WebSocket, TLV, LengthPrefix and UDP, and the JSON codec."""

from __future__ import annotations

import asyncio
import enum
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from conftest import timeout
from loopback import running

import netconn as nc

LOCAL = "127.0.0.1"


class Mood(enum.Enum):
    HAPPY = "happy"
    GRUMPY = "grumpy"


@dataclass(frozen=True)
class Author:
    name: str
    id: int


@dataclass(frozen=True)
class Chat:
    text: str
    author: Author
    mood: Mood = Mood.HAPPY
    tags: list[str] = field(default_factory=list)
    reply_to: int | None = None
    score: float = 0.0
    kind: Literal["chat", "notice"] = "chat"
    extra: dict[str, int] = field(default_factory=dict)
    point: tuple[int, int] = (0, 0)


SAMPLE = Chat(
    "hi ✓",
    Author("ann", 7),
    Mood.GRUMPY,
    ["a", "b"],
    reply_to=3,
    score=1.5,
    kind="notice",
    extra={"x": 1},
    point=(1, 2),
)


@asynccontextmanager
async def echo_server(stack: nc.Stack) -> AsyncIterator[int]:
    """A server on ``stack`` (a message stack) that sends every message back raw."""
    async with nc.Listener(stack, host=LOCAL) as listener:

        async def handler(conn: nc.Connection[Any]) -> None:
            while True:
                try:
                    message = await conn.receive_message()
                except nc.ConnectionClosed:
                    return
                if message.metadata.get("opcode") == "close":
                    return
                await conn.send(message.content)

        async with running(listener, handler):
            yield listener.port


def message_stacks() -> list[nc.MessageProtocol]:
    return [nc.WebSocket(), nc.TLV(), nc.LengthPrefix(), nc.UDP()]


@pytest.mark.parametrize("inner", message_stacks(), ids=lambda s: s.describe())
async def test_round_trip_over_every_message_stack(inner: nc.MessageProtocol) -> None:
    async with echo_server(inner) as port:
        stack = nc.Coder(Chat, inner)
        async with nc.Connection(nc.Endpoint.host_port(LOCAL, port), stack) as conn:
            await conn.send(SAMPLE)
            got: Chat = await asyncio.wait_for(conn.receive(), timeout(5))
            assert got == SAMPLE
            await conn.send(Chat("second", Author("bob", 8)))
            assert (await conn.receive()).text == "second"


@pytest.mark.parametrize("inner", message_stacks(), ids=lambda s: s.describe())
async def test_undecodable_message_raises_and_connection_survives(
    inner: nc.MessageProtocol,
) -> None:
    # The peer speaks raw messages: some of them are not Chats.
    async with nc.Listener(inner, host=LOCAL) as listener:

        async def handler(conn: nc.Connection[Any]) -> None:
            await conn.receive_message()  # the client's hello
            await conn.send(b"\xff not json")
            await conn.send(b'{"text": 5, "author": {"name": "x", "id": 1}}')
            await conn.send(b'{"author": {"name": "x", "id": 1}}')
            await conn.send(b'{"text": "t", "author": {"name": "x", "id": 1}, "nope": 1}')
            await conn.send(json.dumps({"text": "fine", "author": {"name": "x", "id": 1}}).encode())
            await asyncio.sleep(timeout(5))

        task = asyncio.create_task(listener.run(handler))
        stack = nc.Coder(Chat, inner)
        try:
            async with nc.Connection(nc.Endpoint.host_port(LOCAL, listener.port), stack) as conn:
                await conn.send(SAMPLE)
                errors: list[nc.DecodeError] = []
                for _ in range(4):
                    with pytest.raises(nc.DecodeError) as info:
                        await asyncio.wait_for(conn.receive(), timeout(5))
                    errors.append(info.value)
                assert "not JSON" in str(errors[0]) and errors[0].payload.startswith(b"\xff")
                assert "$.text: expected str, got number" in str(errors[1])
                assert "missing field 'text'" in str(errors[2])
                assert "unknown field(s) ['nope']" in str(errors[3])
                assert isinstance(errors[0], nc.ProtocolError)
                assert (await conn.receive()).text == "fine"
                assert isinstance(conn.state, nc.Ready)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_wrong_type_at_runtime_is_refused_before_sending() -> None:
    async with echo_server(nc.TLV()) as port:
        conn = nc.Connection(nc.Endpoint.host_port(LOCAL, port), nc.Coder(Author, nc.TLV()))
        async with conn:
            with pytest.raises(TypeError):
                await conn.send(SAMPLE)  # type: ignore[arg-type]
            await conn.send(Author("ok", 1))
            assert await conn.receive() == Author("ok", 1)


async def test_websocket_close_arrives_as_application_closed() -> None:
    async with nc.Listener(nc.WebSocket(), host=LOCAL) as listener:

        async def handler(conn: nc.Connection[nc.WebSocket]) -> None:
            await conn.close_with(4000, "bye")

        task = asyncio.create_task(listener.run(handler))
        stack = nc.Coder(Author, nc.WebSocket())
        try:
            async with nc.Connection(nc.Endpoint.host_port(LOCAL, listener.port), stack) as conn:
                with pytest.raises(nc.ApplicationClosed) as info:
                    await asyncio.wait_for(conn.receive(), timeout(5))
                assert (info.value.code, info.value.reason) == (4000, "bye")
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task


async def test_payload_too_large_for_udp_is_message_too_large() -> None:
    async with echo_server(nc.UDP()) as port:
        stack = nc.Coder(Author, nc.UDP())
        async with nc.Connection(nc.Endpoint.host_port(LOCAL, port), stack) as conn:
            with pytest.raises(nc.MessageTooLarge):
                await conn.send(Author("x" * 70_000, 1))
            await conn.send(Author("small", 2))
            assert (await conn.receive()).name == "small"


def test_json_codec_round_trips_and_checks_types() -> None:
    codec = nc.JSON
    payload = codec.encode(SAMPLE)
    assert json.loads(payload)["mood"] == "grumpy"
    assert codec.decode(payload, Chat) == SAMPLE
    assert codec.decode(b"[1, 2]", list[int]) == [1, 2]
    assert codec.decode(b'"x"', str) == "x"
    assert codec.decode(b"3", float) == 3.0
    bad: list[tuple[bytes, Any]] = [
        (b"true", int),
        (b"1", bool),
        (b'{"a": "x"}', dict[str, int]),
        (b"[1, 2, 3]", tuple[int, int]),
        (b'"sad"', Mood),
        (b'"other"', Literal["chat", "notice"]),
        (b"null", str),
        (b"1e999", float),
    ]
    for raw, kind in bad:
        with pytest.raises(nc.DecodeError):
            codec.decode(raw, kind)
    optional: Any = int | None
    assert codec.decode(b"null", optional) is None
    with pytest.raises(TypeError):
        codec.encode(object())
    with pytest.raises(TypeError):
        codec.encode({1: "non-str key"})
    with pytest.raises(ValueError):
        codec.encode(float("nan"))


def test_custom_codec_is_used() -> None:
    class Upper:
        def encode(self, value: Any) -> bytes:
            return str(value).upper().encode()

        def decode(self, payload: bytes, kind: type[Any]) -> Any:
            return kind(payload.decode().lower())

    stack = nc.Coder(int, nc.UDP(), codec=Upper())
    assert stack.codec.encode("abc") == b"ABC"
    assert stack.describe() == "Coder/UDP"


async def test_custom_codec_errors_become_decode_errors() -> None:
    class Strict:
        def encode(self, value: Any) -> bytes:
            return str(value).encode()

        def decode(self, payload: bytes, kind: type[Any]) -> Any:
            return int(payload)  # ValueError for anything else

    async with echo_server(nc.UDP()) as port:
        stack = nc.Coder(int, nc.UDP(), codec=Strict())
        async with nc.Connection(nc.Endpoint.host_port(LOCAL, port), stack) as conn:
            await conn.send(41)
            assert await conn.receive() == 41
            channel = conn._channel
            assert channel is not None
            # The echo server sends back a payload this codec cannot read.
            await channel.inner.send_message(b"not a number", True)  # type: ignore[attr-defined]
            with pytest.raises(nc.DecodeError) as info:
                await asyncio.wait_for(conn.receive(), timeout(5))
            assert isinstance(info.value.__cause__, ValueError)
            assert info.value.payload == b"not a number"
            await conn.send(42)
            assert await conn.receive() == 42
