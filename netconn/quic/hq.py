"""hq-interop: HTTP/0.9 over QUIC, the interop runners' raw-stream file transfer.

A client opens one bidirectional stream per file, sends ``GET /path\\r\\n``
and ends its direction; the server answers with the file's bytes and ends
the stream. There is no status line: a missing file is a stream reset (code
:data:`HQ_NOT_FOUND`). No library implements it over netconn's streams, and
it is a dozen lines of protocol, so it is written here.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ..errors import NetconnError, ProtocolError

if TYPE_CHECKING:
    from ..connection import Connection
    from ..stacks.quic import QUIC
    from ._channel import QUICStream

__all__ = [
    "HQ_ALPN",
    "HQ_NOT_FOUND",
    "Download",
    "hq_fetch",
    "hq_get",
    "resolve_under",
    "serve_hq",
    "serve_hq_stream",
]

HQ_ALPN = "hq-interop"
"""The ALPN token interop runners use for HTTP/0.9 over QUIC."""

HQ_NOT_FOUND = 0x10
"""Stream reset code this server uses for a path it does not serve."""

_MAX_REQUEST = 4096
_CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class Download:
    """One fetched resource."""

    path: str
    """The path asked for."""
    size: int
    """Bytes received."""
    sha256: str
    """Hex SHA-256 of the bytes received."""
    stream_id: int
    """The QUIC stream it came on."""


class _Sink:
    """Hashes the body and, with a target file, writes it.

    Local file I/O runs on the loop, in chunks of at most 256 KiB: short enough,
    and a cancelled task cannot leave a handle half-used in a worker thread.
    """

    def __init__(self, target: Path | None) -> None:
        self.hash = hashlib.sha256()
        self.size = 0
        self._file: BinaryIO | None = None
        self._target = target

    def open(self) -> None:
        if self._target is not None:
            self._file = _open_for_writing(self._target)

    def write(self, data: bytes) -> None:
        self.hash.update(data)
        self.size += len(data)
        if self._file is not None:
            self._file.write(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def _open_for_writing(path: Path) -> BinaryIO:
    """``path`` opened for writing, its folder created if needed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "wb")


def _open_for_reading(path: Path) -> BinaryIO:
    """``path`` opened for reading."""
    return open(path, "rb")


async def hq_get(
    connection: Connection[QUIC],
    path: str,
    *,
    target: Path | None = None,
    max_size: int | None = None,
) -> Download:
    """Fetch ``path`` on a new stream; return its size and hash once the stream ended.

    With ``target``, the body is also written to that file. Raises
    :class:`~netconn.StreamReset` if the server reset the stream (code
    :data:`HQ_NOT_FOUND` for a missing file), :class:`~netconn.ProtocolError`
    when the body exceeds ``max_size``, and the connection's errors. If
    cancelled, the stream is reset and ``target`` may hold a prefix.
    """
    if not path.startswith("/") or any(c in path for c in "\r\n "):
        raise ValueError(f"not a request path: {path!r}")
    stream = await connection.open_stream()
    sink = _Sink(target)
    sink.open()
    try:
        await stream.send(f"GET {path}\r\n".encode(), is_complete=True)
        while chunk := await stream.receive(1, _CHUNK):
            sink.write(chunk)
            if max_size is not None and sink.size > max_size:
                stream.stop_sending(0)
                raise ProtocolError(f"{path}: body larger than {max_size} bytes")
    except asyncio.CancelledError:
        stream.stop_sending(0)
        raise
    finally:
        sink.close()
    return Download(path, sink.size, sink.hash.hexdigest(), stream.id)


async def hq_fetch(
    connection: Connection[QUIC],
    paths: Sequence[str],
    *,
    directory: Path | None = None,
    concurrency: int = 64,
) -> list[Download]:
    """Fetch every path, up to ``concurrency`` streams at once; results in ``paths`` order.

    With ``directory``, each body is saved under its path's base name. The
    first failure cancels the other fetches and is raised.
    """
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    gate = asyncio.Semaphore(concurrency)

    async def one(path: str) -> Download:
        async with gate:
            target = None if directory is None else directory / os.path.basename(path)
            return await hq_get(connection, path, target=target)

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(one(p)) for p in paths]
    return [t.result() for t in tasks]


def resolve_under(root: Path, request_path: str) -> Path | None:
    """The file ``request_path`` names inside ``root``, or ``None`` if outside or missing."""
    relative = request_path.lstrip("/")
    try:
        candidate = (root / relative).resolve()
        base = root.resolve()
    except (OSError, RuntimeError):
        return None
    if base != candidate and base not in candidate.parents:
        return None
    return candidate if candidate.is_file() else None


async def serve_hq_stream(stream: QUICStream, root: Path) -> int:
    """Answer one hq-interop request on ``stream`` from the files under ``root``.

    Returns the bytes sent. A malformed request or a path outside ``root`` or
    missing resets the stream with :data:`HQ_NOT_FOUND`.
    """
    request = await stream.receive(1, _MAX_REQUEST)
    while not stream.receive_complete and len(request) < _MAX_REQUEST:
        more = await stream.receive(1, _MAX_REQUEST - len(request))
        if not more:
            break
        request += more
    line = request.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
    parts = line.split()
    file = None
    if len(parts) == 2 and parts[0] == b"GET":
        file = await asyncio.to_thread(resolve_under, root, parts[1].decode("utf-8", "replace"))
    if file is None:
        stream.reset(HQ_NOT_FOUND)
        return 0
    sent = 0
    with _open_for_reading(file) as handle:
        while chunk := handle.read(_CHUNK):
            await stream.send(chunk)
            sent += len(chunk)
    await stream.send(b"", is_complete=True)
    return sent


async def serve_hq(
    connection: Connection[QUIC],
    root: Path,
    *,
    on_served: Callable[[str, int], None] | None = None,
) -> None:
    """Serve hq-interop requests on ``connection`` until it ends.

    Each inbound bidirectional stream is answered in its own task;
    ``on_served(stream description, bytes sent)`` is called after each one.
    Takes over ``connection.inbound_streams()``. Returns when the connection
    ends; a stream the peer reset is skipped.
    """

    async def answer(stream: QUICStream) -> None:
        try:
            sent = await serve_hq_stream(stream, root)
        except NetconnError:
            return  # the peer reset this stream or closed the connection
        if on_served is not None:
            on_served(f"stream {stream.id}", sent)

    async with asyncio.TaskGroup() as group:
        async for stream in connection.inbound_streams():
            if stream.directionality == "bidirectional":
                group.create_task(answer(stream))
