"""Typed messages: ``Coder(Chat, inner)`` sends and receives ``Chat`` values.

A coder sits on any message stack (WebSocket, TLV, LengthPrefix, UDP): each
value is encoded into one message and each message decoded into one value.
``Connection[Coder[Chat]]`` has ``send(Chat)`` and ``receive() -> Chat``,
both checked by mypy.

The default codec, :data:`JSON`, encodes dataclasses (nested ones too) and
the JSON-shaped types (``str``, ``int``, ``float``, ``bool``, ``None``,
``list``, ``tuple``, ``dict[str, ...]``, ``Literal``, enums, unions) with the
standard library, and checks every field's type on the way in, so a payload
that does not match raises :class:`DecodeError` rather than handing back a
half-built object. Any object with ``encode`` / ``decode`` methods (see
:class:`Codec`) can replace it, e.g. a wrapper around a faster library.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar, Union

from ..endpoint import Address
from ..errors import ApplicationClosed, DecodeError
from .base import AttemptContext, Channel, Layered, MessageChannel, MessageProtocol, Stack

__all__ = ["JSON", "Codec", "Coder", "CoderChannel", "JSONCodec"]

T = TypeVar("T")


class Codec(Protocol):
    """Turns values into message payloads and back."""

    def encode(self, value: Any) -> bytes:
        """The payload for ``value``; raises ``TypeError`` for a value it cannot encode."""
        ...

    def decode(self, payload: bytes, kind: type[T]) -> T:
        """The ``kind`` value in ``payload``; raises :class:`DecodeError` if there is none."""
        ...


class JSONCodec:
    """UTF-8 JSON for dataclasses and JSON-shaped types, checked on decode."""

    def __init__(self) -> None:
        self._hints: dict[type[Any], dict[str, Any]] = {}

    def encode(self, value: Any) -> bytes:
        return json.dumps(
            self._plain(value), ensure_ascii=False, separators=(",", ":"), allow_nan=False
        ).encode()

    def decode(self, payload: bytes, kind: type[T]) -> T:
        try:
            tree = json.loads(payload, parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise DecodeError(f"not JSON: {exc}", payload) from exc
        try:
            return typing.cast(T, self._build(tree, kind, "$"))
        except _Mismatch as exc:
            raise DecodeError(f"JSON does not match {_name(kind)}: {exc}", payload) from None

    def _plain(self, value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: self._plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, enum.Enum):
            return self._plain(value.value)
        if isinstance(value, list | tuple):
            return [self._plain(v) for v in value]
        if isinstance(value, dict):
            if not all(isinstance(k, str) for k in value):
                raise TypeError("JSON objects need str keys")
            return {k: self._plain(v) for k, v in value.items()}
        if value is None or isinstance(value, str | int | float):
            return value
        raise TypeError(f"cannot encode {type(value).__name__} as JSON")

    def _fields(self, kind: type[Any]) -> dict[str, Any]:
        hints = self._hints.get(kind)
        if hints is None:
            hints = typing.get_type_hints(kind)
            self._hints[kind] = hints
        return hints

    def _build(self, tree: Any, kind: Any, where: str) -> Any:
        if kind is Any:
            return tree
        if kind is None or kind is type(None):
            if tree is None:
                return None
            raise _Mismatch(f"{where}: expected null, got {_json_type(tree)}")
        origin = typing.get_origin(kind)
        args = typing.get_args(kind)
        if origin is Union or origin is types.UnionType:
            for option in args:
                try:
                    return self._build(tree, option, where)
                except _Mismatch:
                    continue
            raise _Mismatch(f"{where}: {_json_type(tree)} matches none of {_name(kind)}")
        if origin is Literal:
            if any(tree == a and type(tree) is type(a) for a in args):
                return tree
            raise _Mismatch(f"{where}: {tree!r} is not one of {list(args)}")
        if origin is list or kind is list:
            if not isinstance(tree, list):
                raise _Mismatch(f"{where}: expected array, got {_json_type(tree)}")
            item = args[0] if args else Any
            return [self._build(v, item, f"{where}[{i}]") for i, v in enumerate(tree)]
        if origin is tuple or kind is tuple:
            if not isinstance(tree, list):
                raise _Mismatch(f"{where}: expected array, got {_json_type(tree)}")
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(self._build(v, args[0], f"{where}[{i}]") for i, v in enumerate(tree))
            if args and len(args) != len(tree):
                raise _Mismatch(f"{where}: expected {len(args)} items, got {len(tree)}")
            items = args or (Any,) * len(tree)
            return tuple(
                self._build(v, a, f"{where}[{i}]")
                for i, (v, a) in enumerate(zip(tree, items, strict=True))
            )
        if origin is dict or kind is dict:
            if not isinstance(tree, dict):
                raise _Mismatch(f"{where}: expected object, got {_json_type(tree)}")
            value_kind = args[1] if len(args) == 2 else Any
            return {k: self._build(v, value_kind, f"{where}.{k}") for k, v in tree.items()}
        if isinstance(kind, type):
            if dataclasses.is_dataclass(kind):
                return self._build_dataclass(tree, kind, where)
            if issubclass(kind, enum.Enum):
                try:
                    return kind(tree)
                except ValueError:
                    raise _Mismatch(f"{where}: {tree!r} is not a {kind.__name__}") from None
            if kind is bool:
                if isinstance(tree, bool):
                    return tree
            elif kind is int:
                if isinstance(tree, int) and not isinstance(tree, bool):
                    return tree
            elif kind is float:
                if isinstance(tree, int | float) and not isinstance(tree, bool):
                    if math.isfinite(tree):
                        return float(tree)
                    raise _Mismatch(f"{where}: {tree} is not a finite number")
            elif kind is str:
                if isinstance(tree, str):
                    return tree
            else:
                raise _Mismatch(f"{where}: {kind.__name__} cannot be decoded from JSON")
            raise _Mismatch(f"{where}: expected {kind.__name__}, got {_json_type(tree)}")
        raise _Mismatch(f"{where}: {kind!r} cannot be decoded from JSON")

    def _build_dataclass(self, tree: Any, kind: type[Any], where: str) -> Any:
        if not isinstance(tree, dict):
            raise _Mismatch(f"{where}: expected object, got {_json_type(tree)}")
        hints = self._fields(kind)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(kind):
            if not f.init:
                continue
            if f.name in tree:
                values[f.name] = self._build(tree[f.name], hints[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise _Mismatch(f"{where}: missing field {f.name!r}")
        unknown = set(tree) - {f.name for f in dataclasses.fields(kind)}
        if unknown:
            raise _Mismatch(f"{where}: unknown field(s) {sorted(unknown)}")
        try:
            return kind(**values)
        except (TypeError, ValueError) as exc:  # a __post_init__ may validate further
            raise _Mismatch(f"{where}: {kind.__name__}: {exc}") from None


class _Mismatch(Exception):
    pass


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259 §6), though Python's parser takes them.
    raise ValueError(f"{name} is not valid JSON")


def _json_type(tree: Any) -> str:
    names: dict[type[Any], str] = {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }
    return names.get(type(tree), type(tree).__name__)


def _name(kind: Any) -> str:
    return kind.__name__ if isinstance(kind, type) else repr(kind)


JSON: Codec = JSONCodec()
"""The default codec: checked JSON for dataclasses."""


@dataclass(frozen=True, slots=True)
class Coder(Stack, Generic[T]):
    """Typed messages of ``message_type`` over the message stack ``inner``.

    ``Connection(ep, Coder(Chat, WebSocket()))`` is a ``Connection[Coder[Chat]]``:
    ``await conn.send(Chat(...))`` and ``chat = await conn.receive()``.
    """

    kind = "typed"

    message_type: type[T]
    """The type of every message (a dataclass, for the default codec)."""
    inner: MessageProtocol
    """The message stack underneath: WebSocket, TLV, LengthPrefix, UDP..."""
    codec: Codec = JSON
    """How values become payloads; default :data:`JSON`."""

    @property
    def inner_stack(self) -> Stack:
        return self.inner

    def wrap(self, channel: MessageChannel) -> CoderChannel[T]:
        """Values over ``channel`` (any message channel, e.g. ``TLV().frame(stream)``)."""
        return CoderChannel(self, channel)

    async def open_channel(self, ctx: AttemptContext, address: Address) -> CoderChannel[T]:
        return self.wrap(_message_channel(await self.inner.open_channel(ctx, address)))

    async def accept_channel(self, ctx: AttemptContext, inner: Channel) -> CoderChannel[T]:
        return self.wrap(_message_channel(await self.inner.accept_channel(ctx, inner)))


def _message_channel(channel: Channel) -> MessageChannel:
    if not (hasattr(channel, "receive_message") and hasattr(channel, "send_message")):
        raise TypeError("Coder needs a message protocol underneath")
    return channel  # type: ignore[return-value]


class CoderChannel(Layered[MessageChannel], Generic[T]):
    """Values of one type over a message channel."""

    def __init__(self, options: Coder[T], inner: MessageChannel) -> None:
        self._type = options.message_type
        self._codec = options.codec
        self._inner = inner
        self._check: Callable[[object], bool] = (
            (lambda v: isinstance(v, self._type))
            if isinstance(self._type, type)
            else (lambda v: True)
        )

    async def send_value(self, value: T) -> None:
        """Encode ``value`` and send it as one message.

        Raises ``TypeError`` for a value of the wrong type (nothing is sent),
        and what the message channel raises (e.g. :class:`MessageTooLarge`).
        """
        if not self._check(value):
            raise TypeError(f"expected {_name(self._type)}, got {type(value).__name__}")
        payload = self._codec.encode(value)
        await self._inner.send_message(payload, True)

    async def receive_value(self) -> T:
        """Receive one message and decode it.

        Raises :class:`DecodeError` for a payload that is not a ``T``; the
        channel stays usable. A WebSocket close arrives as :class:`ApplicationClosed`.
        """
        message = await self._inner.receive_message()
        if message.metadata.get("opcode") == "close":
            raise ApplicationClosed(
                int(message.metadata.get("close_code", 1005)),
                str(message.metadata.get("close_reason", "")),
            )
        try:
            return self._codec.decode(message.content, self._type)
        except DecodeError:
            raise
        except Exception as exc:  # a custom codec's own error type must not escape
            raise DecodeError(
                f"{_name(self._type)} did not decode: {exc}", message.content
            ) from exc

    async def close(self) -> None:
        await self._inner.close()

    def abort(self) -> None:
        self._inner.abort()
