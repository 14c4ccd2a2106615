"""The QUIC baselines: raw aioquic, and qh3 (aioquic's API on a Rust core), through
their own asyncio ``connect``/``serve`` and stream reader/writer API.

Both packages share one API, so one adapter serves both; each runs with its
own default configuration, as an application that just calls ``connect`` gets.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from .api import (
    ConnectOptions,
    DatagramHandler,
    Datagrams,
    Env,
    Stream,
    StreamHandler,
    Unavailable,
)

__all__ = ["RawQUIC"]

_HOST = "127.0.0.1"
_ALPN = ["netconn-bench"]
_DATAGRAM_FRAME = 65536


class _Stream:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def send(self, data: bytes, end: bool = False) -> None:
        # The library queues without bound and has no back-pressure to wait on.
        self._writer.write(data)
        if end:
            self._writer.write_eof()

    async def recv(self, at_most: int) -> bytes:
        return await self._reader.read(at_most)

    async def recv_exactly(self, size: int) -> bytes:
        try:
            return await self._reader.readexactly(size)
        except asyncio.IncompleteReadError as exc:
            raise EOFError(f"stream ended after {len(exc.partial)} of {size} bytes") from exc


class _Datagrams:
    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    async def send(self, data: bytes) -> None:
        self._protocol._quic.send_datagram_frame(data)
        self._protocol.transmit()

    async def recv(self) -> bytes:
        queue: collections.deque[bytes] = self._protocol.bench_datagrams
        while not queue:
            self._protocol.bench_waiter = asyncio.get_running_loop().create_future()
            await self._protocol.bench_waiter
        return queue.popleft()


class _Session:
    def __init__(self, protocol: Any, exit_stack: AsyncExitStack) -> None:
        self._protocol = protocol
        self._exit_stack = exit_stack

    async def stream(self) -> Stream:
        reader, writer = await self._protocol.create_stream()
        return _Stream(reader, writer)

    def datagrams(self) -> Datagrams:
        return _Datagrams(self._protocol)

    @property
    def resumed(self) -> bool:
        return bool(self._protocol.bench_resumed)

    async def close(self) -> None:
        await self._exit_stack.aclose()


def _protocol_class(package: str) -> type:
    """A ``QuicConnectionProtocol`` that also keeps received DATAGRAM frames and
    notes whether the handshake resumed a session."""
    base = importlib.import_module(f"{package}.asyncio").QuicConnectionProtocol
    events = importlib.import_module(f"{package}.quic.events")

    class Protocol(base):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.bench_datagrams: collections.deque[bytes] = collections.deque(maxlen=1024)
            self.bench_waiter: asyncio.Future[None] | None = None
            self.bench_on_datagram: DatagramHandler | None = None
            self.bench_resumed = False

        def quic_event_received(self, event: Any) -> None:
            if isinstance(event, events.DatagramFrameReceived):
                if self.bench_on_datagram is not None:
                    reply = self.bench_on_datagram(event.data)
                    if reply is not None:
                        self._quic.send_datagram_frame(reply)
                        self.transmit()
                    return
                self.bench_datagrams.append(event.data)
                if self.bench_waiter is not None and not self.bench_waiter.done():
                    self.bench_waiter.set_result(None)
                return
            if isinstance(event, events.HandshakeCompleted):
                self.bench_resumed = bool(event.session_resumed)
            super().quic_event_received(event)

    return Protocol


class RawQUIC:
    """``connect``/``serve`` of ``package`` (``"aioquic"`` or ``"qh3"``)."""

    def __init__(self, package: str) -> None:
        self.name = package
        self._package = package
        self._ticket: Any = None
        self._protocol: type | None = None

    def check(self) -> None:
        try:
            importlib.import_module(f"{self._package}.asyncio")
        except ImportError as exc:
            raise Unavailable(f"{self._package} is not installed: {exc}") from exc

    def _api(self) -> tuple[Any, type]:
        module = importlib.import_module(f"{self._package}.asyncio")
        if self._protocol is None:
            self._protocol = _protocol_class(self._package)
        return module, self._protocol

    def _configuration(self, env: Env, *, is_client: bool) -> Any:
        config_module = importlib.import_module(f"{self._package}.quic.configuration")
        config = config_module.QuicConfiguration(alpn_protocols=_ALPN, is_client=is_client)
        if env.datagram_frames:
            config.max_datagram_frame_size = _DATAGRAM_FRAME
        if is_client:
            config.load_verify_locations(cafile=env.ca)
            config.server_name = "localhost"
        else:
            config.load_cert_chain(env.cert, env.key)
        return config

    @asynccontextmanager
    async def serve(
        self, env: Env, on_stream: StreamHandler, on_datagram: DatagramHandler
    ) -> AsyncIterator[int]:
        module, protocol_class = self._api()
        tickets: dict[bytes, Any] = {}
        tasks: set[asyncio.Task[None]] = set()

        async def run(stream: _Stream) -> None:
            with contextlib.suppress(EOFError, ConnectionError):
                await on_stream(stream)

        def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.get_running_loop().create_task(run(_Stream(reader, writer)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        def create_protocol(*args: Any, **kwargs: Any) -> Any:
            protocol = protocol_class(*args, **kwargs)
            protocol.bench_on_datagram = on_datagram
            return protocol

        def keep_ticket(ticket: Any) -> None:
            tickets[ticket.ticket] = ticket

        server = await module.serve(
            _HOST,
            0,
            configuration=self._configuration(env, is_client=False),
            create_protocol=create_protocol,
            stream_handler=handle,
            session_ticket_fetcher=tickets.get,  # reuse allowed: no anti-replay here
            session_ticket_handler=keep_ticket,
        )
        try:
            yield int(server._transport.get_extra_info("sockname")[1])
        finally:
            server.close()

    async def connect(self, env: Env, port: int, options: ConnectOptions) -> _Session:
        module, protocol_class = self._api()
        config = self._configuration(env, is_client=True)
        if options.resume and self._ticket is not None:
            config.session_ticket = self._ticket

        def keep_ticket(ticket: Any) -> None:
            self._ticket = ticket

        exit_stack = AsyncExitStack()
        try:
            protocol = await exit_stack.enter_async_context(
                module.connect(
                    _HOST,
                    port,
                    configuration=config,
                    create_protocol=protocol_class,
                    session_ticket_handler=keep_ticket if options.resume else None,
                    wait_connected=not (options.early_data and config.session_ticket is not None),
                )
            )
        except BaseException:
            await exit_stack.aclose()
            raise
        return _Session(protocol, exit_stack)
