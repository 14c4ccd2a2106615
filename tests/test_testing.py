"""The shared byte-stream contract (netconn.testing), run against TCP and TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from conftest import Certs, timeout
from loopback import STREAMS, StreamKind, client_stack, server_stack, stream_pair

import netconn as nc
from netconn import testing
from netconn.testing import ByteStream, PairFactory


def pairs(kind: StreamKind, certs: Certs, parameters: nc.Parameters | None = None) -> PairFactory:
    @asynccontextmanager
    async def make() -> AsyncIterator[tuple[ByteStream, ByteStream]]:
        client, server = client_stack(kind, certs), server_stack(kind, certs)
        async with stream_pair(client, server, parameters=parameters) as pair:
            yield pair

    return make


def bound(kind: StreamKind, parameters: nc.Parameters) -> int:
    """What a sender and a stalled reader may hold: the send buffer and one
    256 KiB write that lands on it when full, the receive buffer and one 256 KiB
    socket read that arrives just before reading pauses, and for TLS one read
    of ciphertext (256 KiB) waiting to be decrypted."""
    chunk = 256 << 10
    tls_read = chunk if kind == "tls" else 0
    return parameters.send_buffer + chunk + parameters.receive_buffer + chunk + tls_read


@pytest.mark.parametrize("kind", STREAMS)
async def test_ordering(kind: StreamKind, certs: Certs) -> None:
    await testing.check_ordering(pairs(kind, certs), seconds=timeout(30))


@pytest.mark.parametrize("kind", STREAMS)
async def test_half_close(kind: StreamKind, certs: Certs) -> None:
    await testing.check_half_close(pairs(kind, certs), seconds=timeout(30))


@pytest.mark.parametrize("kind", STREAMS)
async def test_graceful_cancel(kind: StreamKind, certs: Certs) -> None:
    await testing.check_graceful_cancel(pairs(kind, certs), seconds=timeout(30))


@pytest.mark.parametrize("kind", STREAMS)
async def test_receive_cancellation(kind: StreamKind, certs: Certs) -> None:
    await testing.check_receive_cancellation(pairs(kind, certs), seconds=timeout(30))


@pytest.mark.parametrize("kind", STREAMS)
async def test_busy(kind: StreamKind, certs: Certs) -> None:
    await testing.check_busy(pairs(kind, certs), seconds=timeout(30))


@pytest.mark.parametrize("kind", STREAMS)
@pytest.mark.parametrize("buffers", [1 << 20, 64 << 10], ids=["1MiB", "64KiB"])
async def test_back_pressure(kind: StreamKind, buffers: int, certs: Certs) -> None:
    """A slow reader: the bytes held follow the configured buffers, not the data size."""
    params = nc.Parameters(send_buffer=buffers, receive_buffer=buffers)
    peak = await testing.check_back_pressure(
        pairs(kind, certs, params), bound=bound(kind, params), size=32 << 20, seconds=timeout(60)
    )
    assert peak > buffers  # the sender did fill the buffers
    print(
        f"{kind} {buffers >> 10} KiB buffers: peak {peak} bytes held, bound {bound(kind, params)}"
    )
