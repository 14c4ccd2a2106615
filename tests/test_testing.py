"""The shared byte-stream contract (netconn.testing), run against TCP and TLS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from conftest import Certs, timeout
from loopback import STREAMS, StreamKind, client_stack, server_stack, stream_pair

from netconn import testing
from netconn.testing import ByteStream, PairFactory


def pairs(kind: StreamKind, certs: Certs) -> PairFactory:
    @asynccontextmanager
    async def make() -> AsyncIterator[tuple[ByteStream, ByteStream]]:
        async with stream_pair(client_stack(kind, certs), server_stack(kind, certs)) as pair:
            yield pair

    return make


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
async def test_back_pressure(kind: StreamKind, certs: Certs) -> None:
    await testing.check_back_pressure(pairs(kind, certs), seconds=timeout(60))
