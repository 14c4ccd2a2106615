"""What every stack provides, and the channels that stacks build.

A *stack* is a small frozen option object (``TCP()``, ``TLS(TCP())``...). When
a connection starts it asks its top stack for a *channel*: the running
protocol. Outer stacks build their channel on the channel of the stack inside
them, so ``TLS(TCP())`` is a TLS channel reading and writing a TCP channel.
Channels do the I/O; the :class:`~netconn.Connection` holds one and manages
its state.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, TypeVar

from ..endpoint import Address, Endpoint
from ..errors import NetconnError
from ..parameters import Parameters

if TYPE_CHECKING:
    from ..listener import Listener

__all__ = [
    "AttemptContext",
    "Layered",
    "ByteChannel",
    "Channel",
    "Message",
    "MessageChannel",
    "MessageProtocol",
    "MultiplexProtocol",
    "Stack",
    "StreamProtocol",
    "TypedChannel",
]


@dataclass(frozen=True, slots=True)
class Message:
    """One received message: its bytes and what the protocol says about them."""

    content: bytes
    """The payload."""
    is_complete: bool = True
    """False for a fragment of a larger message (more follows)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Protocol details, e.g. ``{"opcode": "text"}`` for WebSocket."""


class ContextOwner(Protocol):
    """Who hears an attempt's transport events once it won (a connection)."""

    def _lost(self, error: NetconnError | None) -> None: ...
    def _set_viable(self, viable: bool) -> None: ...
    def _peer_moved(self) -> None: ...


def _no_viability(viable: bool) -> None:
    return None


def ignore_loss(error: NetconnError | None) -> None:
    """An ``on_lost`` hook that does nothing (:meth:`AttemptContext.lost` skips calling it)."""
    return None


def _no_path_change() -> None:
    return None


class AttemptContext:
    """What a stack needs to establish one attempt.

    The three hooks are the callables given, or, once :attr:`owner` is set,
    the owner's methods: one reference per connection instead of a bound
    method per hook.
    """

    __slots__ = (
        "_on_lost",
        "_on_path_change",
        "_on_viability",
        "endpoint",
        "loop",
        "owner",
        "parameters",
    )

    def __init__(
        self,
        endpoint: Endpoint | None,
        parameters: Parameters,
        on_lost: Callable[[NetconnError | None], None],
        on_viability: Callable[[bool], None] = _no_viability,
        on_path_change: Callable[[], None] = _no_path_change,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.endpoint = endpoint
        """The endpoint asked for (``None`` on the server side)."""
        self.parameters = parameters
        """The connection's parameters."""
        self._on_lost = on_lost
        self._on_viability = on_viability
        self._on_path_change = on_path_change
        self.owner: ContextOwner | None = None
        """Who the hooks go to, once set (instead of the callables given)."""
        self.loop = loop
        """The running loop, when the maker knows it: asking asyncio costs a
        ``getpid()`` on Python 3.11."""

    def __repr__(self) -> str:
        return f"AttemptContext(endpoint={self.endpoint!r}, owner={self.owner!r})"

    def lost(self, error: NetconnError | None) -> None:
        """Call :attr:`on_lost` with ``error``: the property's work without its
        call, and nothing at all for :func:`ignore_loss`."""
        owner = self.owner
        if owner is not None:
            owner._lost(error)
        elif self._on_lost is not ignore_loss:
            self._on_lost(error)

    @property
    def on_lost(self) -> Callable[[NetconnError | None], None]:
        """Channels call this once when the transport goes away (``None``: closed cleanly)."""
        owner = self.owner
        return self._on_lost if owner is None else owner._lost

    @on_lost.setter
    def on_lost(self, hook: Callable[[NetconnError | None], None]) -> None:
        self._on_lost = hook

    @property
    def on_viability(self) -> Callable[[bool], None]:
        """Channels call this when the transport's viability changes."""
        owner = self.owner
        return self._on_viability if owner is None else owner._set_viable

    @on_viability.setter
    def on_viability(self, hook: Callable[[bool], None]) -> None:
        self._on_viability = hook

    @property
    def on_path_change(self) -> Callable[[], None]:
        """Channels call this when their local or remote address changed (e.g. NAT rebinding)."""
        owner = self.owner
        return self._on_path_change if owner is None else owner._peer_moved

    @on_path_change.setter
    def on_path_change(self, hook: Callable[[], None]) -> None:
        self._on_path_change = hook


class Channel(Protocol):
    """What a :class:`~netconn.Connection` needs of every running protocol."""

    @property
    def local_address(self) -> Address | None: ...

    @property
    def remote_address(self) -> Address | None: ...

    async def close(self) -> None:
        """Flush what was sent, close gracefully and wait for the transport to finish."""

    def abort(self) -> None:
        """Drop everything at once (RST, no close_notify); never blocks."""


class ByteChannel(Channel, Protocol):
    """A reliable, ordered byte stream (TCP, TLS, a QUIC stream)."""

    async def send(self, data: bytes | bytearray | memoryview, is_complete: bool) -> None:
        """Return once the data is taken under the send-buffer bound.

        ``is_complete`` ends the sending direction after ``data`` (FIN).
        """

    async def receive(self, at_least: int, at_most: int) -> bytes:
        """At least ``at_least`` bytes (fewer only at end of stream), at most ``at_most``."""

    @property
    def receive_complete(self) -> bool:
        """Whether the peer ended its direction and every byte was read."""


class MessageChannel(Channel, Protocol):
    """A channel that keeps message boundaries (UDP, WebSocket, framers)."""

    def send_message(
        self, data: bytes | bytearray | memoryview, is_complete: bool
    ) -> Awaitable[None]:
        """Send one message (or, with ``is_complete=False``, one fragment of it).

        An ``async def`` does; UDP sends during the call and returns a done future.
        """

    def receive_message(self) -> Awaitable[Message]:
        """The next message."""

    @property
    def maximum_message_size(self) -> int:
        """The largest message ``send_message`` accepts."""


class TypedChannel(Channel, Protocol):
    """A channel that moves values of one type (a ``Coder`` on a message channel)."""

    async def send_value(self, value: Any) -> None:
        """Encode ``value`` and send it as one message."""

    async def receive_value(self) -> Any:
        """Receive one message and decode it."""


C = TypeVar("C", bound=Channel)


class Layered(Generic[C]):
    """Base of channels that run on an inner channel (TLS, WebSocket, framers, coders).

    The addresses are the inner channel's; ``inner`` lets a connection walk
    down the layers (to find TLS details, for example).
    """

    _inner: C

    @property
    def inner(self) -> C:
        """The channel underneath."""
        return self._inner

    @property
    def local_address(self) -> Address | None:
        return self._inner.local_address

    @property
    def remote_address(self) -> Address | None:
        return self._inner.remote_address


class Stack(abc.ABC):
    """Base of every stack option object.

    Subclasses are frozen dataclasses. ``inner`` is the stack underneath, if any.
    """

    kind: ClassVar[Literal["stream", "message", "multiplex", "typed"]]
    """Which shape of data the stack moves ("typed": values of one type, see ``Coder``)."""
    resolve_kind: ClassVar[Literal["stream", "datagram"]] = "stream"
    """Which socket type DNS is asked about."""

    @property
    def inner_stack(self) -> Stack | None:
        """The stack this one runs on, or ``None`` at the bottom."""
        return None

    @property
    def bottom(self) -> Stack:
        """The transport at the bottom of this stack (TCP, UDP or QUIC)."""
        inner = self.inner_stack
        return self if inner is None else inner.bottom

    def layers(self) -> list[Stack]:
        """This stack and every stack below it, top first."""
        out: list[Stack] = [self]
        while (inner := out[-1].inner_stack) is not None:
            out.append(inner)
        return out

    @abc.abstractmethod
    async def open_channel(self, ctx: AttemptContext, address: Address) -> Channel:
        """Client side: establish a channel to ``address``."""

    async def accept_channel(self, ctx: AttemptContext, inner: Channel) -> Channel:
        """Server side: build this layer on an accepted ``inner`` channel."""
        return inner

    def check_listener_options(self) -> None:
        """Raise a :class:`NetconnError` if these options cannot serve a listener.

        :meth:`Listener.start` calls it on every layer before binding, so that
        a missing certificate fails the listener rather than every client.
        """
        return  # most options have nothing to check

    async def start_listener(self, listener: Listener[Any], host: str | None, port: int) -> None:
        """Bottom stacks only: bind and feed accepted channels to ``listener``."""
        raise TypeError(f"{type(self).__name__} cannot listen on its own")

    def describe(self) -> str:
        """The stack top first, e.g. ``TLS/TCP``."""
        return "/".join(type(layer).__name__ for layer in self.layers())


class StreamProtocol(Stack):
    """Stacks that move an ordered byte stream (TCP, TLS)."""

    kind = "stream"


class MessageProtocol(Stack):
    """Stacks that move whole messages (UDP, WebSocket, TLV)."""

    kind = "message"


class MultiplexProtocol(Stack):
    """Stacks that carry many streams in one connection (QUIC)."""

    kind = "multiplex"


_T = TypeVar("_T")


def constant(value: _T) -> Callable[[], _T]:
    """A factory that returns ``value``: for asyncio's protocol factories.

    A C callable (an endless iterator's ``__next__``): calling it runs no Python.
    """
    return itertools.repeat(value).__next__
