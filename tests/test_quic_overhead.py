"""What netconn's QUIC glue costs per connection on aioquic, counted without timing:
bytes kept per idle connection."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

from aioquic import tls
from conftest import Certs, timeout
from quic_helpers import client_options, endpoint, server_options, serving

import netconn as nc

_IDLE = 20


async def test_idle_connection_memory(certs: Certs) -> None:
    """Once the handshake is confirmed, an idle connection keeps no handshake state:
    no 16 KiB crypto buffers, no Initial/Handshake streams or keys, shared
    frame tables. Counted with tracemalloc, client and server together."""

    async def echo_one(conn: nc.Connection[nc.QUIC]) -> None:
        async for stream in conn.inbound_streams():
            await stream.send(await stream.receive_exactly(1))

    async with serving(server_options(certs), echo_one) as listener:
        options = client_options(certs)
        held: list[nc.Connection[nc.QUIC]] = []

        async def open_one() -> None:
            conn = nc.Connection(endpoint(listener), options)
            held.append(conn)
            stream = await conn.open_stream()
            await stream.send(b"x")
            await stream.receive_exactly(1)

        try:
            async with asyncio.timeout(timeout(30)):
                await open_one()  # imports, caches and the listener's first allocations
                gc.collect()
                tracemalloc.start()
                try:
                    before = tracemalloc.get_traced_memory()[0]
                    for _ in range(_IDLE):
                        await open_one()
                    await asyncio.sleep(0.05)  # the last ACKs and tickets
                    gc.collect()
                    used = tracemalloc.get_traced_memory()[0] - before
                finally:
                    tracemalloc.stop()
            engines = [conn._quic_channel().quic for conn in held[1:]]
            engines += [conn._quic_channel().quic for conn in listener.connections]
        finally:
            for conn in held:
                conn.force_cancel()
    for engine in engines:
        assert engine._handshake_confirmed
        assert set(engine._crypto_buffers) == {tls.Epoch.ONE_RTT}
        assert engine._crypto_buffers[tls.Epoch.ONE_RTT].capacity < 1024
        assert set(engine._crypto_streams) == {tls.Epoch.ONE_RTT}
        assert not engine._cryptos[tls.Epoch.INITIAL].send.is_valid()
    handlers = [e.__dict__["_QuicConnection__frame_handlers"] for e in engines[:2]]
    assert handlers[0][0x06][1] is handlers[1][0x06][1]  # one set for CRYPTO's epochs
    # Both sides of a connection, with the glue and the listener's share:
    # about 250 KB with aioquic's handshake state kept, about 125 KB without.
    per_pair = used / _IDLE
    assert per_pair < 175_000, per_pair
