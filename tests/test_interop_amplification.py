"""The amplificationlimit evidence: RFC 9000 section 8.1 checked on the relay's trace."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from conftest import timeout

from interop.amplification import check_amplification, packet_types, validates
from interop.runner import CaseFailed, _amplification_evidence
from netconn import ConnectionTimeout
from netconn.lab.relay import Schedule, Trace, UDPRelay

V1 = 0x00000001
V2 = 0x6B3343CF


def _long(version: int, type_bits: int, payload: int, *, initial: bool = False) -> bytes:
    """A long header packet with ``payload`` bytes after the Length field."""
    header = bytes([0xC0 | type_bits << 4]) + version.to_bytes(4, "big")
    header += bytes([8]) + b"d" * 8 + bytes([8]) + b"s" * 8
    if initial:
        header += bytes([0])  # no token
    return header + (0x4000 | payload).to_bytes(2, "big") + b"\x00" * payload


def _padded(packet: bytes, size: int) -> bytes:
    return packet + b"\x00" * (size - len(packet))


def test_packet_types_walks_coalesced_packets_of_v1_and_v2() -> None:
    v1 = _long(V1, 0, 200, initial=True) + _long(V1, 2, 300) + b"\x40" + b"x" * 40
    assert packet_types(v1) == ("initial", "handshake", "1rtt")
    v2 = _long(V2, 1, 100, initial=True) + _long(V2, 3, 100)
    assert packet_types(v2) == ("initial", "handshake")
    # v2's Initial type bits are v1's 0-RTT: the version decides.
    assert packet_types(_long(V1, 1, 50)) == ("0rtt",)
    assert packet_types(b"\x80" + bytes(4) + b"\x00\x00") == ("version_negotiation",)
    # A packet cut short is still named by its header; a header cut short is not.
    assert packet_types(_long(V1, 2, 300)[:40]) == ("handshake",)
    assert packet_types(_long(V1, 2, 300)[:10]) == ("unknown",)
    assert packet_types(_long(0x0A0A0A0A, 0, 10)) == ("unknown",)


def test_trace_over_three_times_fails_and_validation_ends_the_count() -> None:
    initial = _padded(_long(V1, 0, 100, initial=True), 1200)
    handshake = _long(V1, 2, 60)
    # 3600 bytes on 1200: exactly at the limit.
    at_limit = check_amplification([(True, initial), (False, 1200), (False, 1200), (False, 1200)])
    assert not at_limit.over(3) and at_limit.sent == 3600 and at_limit.received == 1200
    # One byte more before validation is over, whatever comes after.
    over = check_amplification(
        [(True, initial), (False, 2400), (False, 1201), (True, handshake), (False, 1)]
    )
    assert over.over(3) and over.validated and over.sent == 3601
    # A second client Initial raises the allowance; a Handshake ends the count.
    trace: list[tuple[bool, bytes | int]] = [(True, initial), (False, 3600)]
    trace += [(True, initial), (False, 3600), (True, handshake), (False, 100_000)]
    later = check_amplification(trace)
    assert not later.over(3) and later.received == 2400 and later.sent == 7200
    assert later.validated
    # The limit holds at every moment, not just at the end: early bursts count.
    early = check_amplification(
        [(True, initial), (False, 4000), (True, initial), (True, handshake)]
    )
    assert early.over(3) and early.received == 2400
    # Sending before anything was received is unbounded.
    assert check_amplification([(False, 10)]).over(1000)


class _Amplifier(asyncio.DatagramProtocol):
    """Answers every datagram with ``factor`` datagrams of the same size."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        for _ in range(self.factor):
            self.transport.sendto(b"\x00" * len(data), addr)


async def _relay_trace(factor: int) -> Trace:
    """Through a relay dropping client datagram 2: an Initial, a lost one, a Handshake."""
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(
        lambda: _Amplifier(factor), local_addr=("127.0.0.1", 0)
    )
    port = int(server.get_extra_info("sockname")[1])
    got: list[bytes] = []
    arrived = asyncio.Event()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            got.append(data)
            arrived.set()

    try:
        trace = Trace(until=validates)
        schedule = Schedule(drop_from_client=frozenset({2}))
        async with UDPRelay(("127.0.0.1", port), schedule=schedule, trace=trace) as relay:
            client, _ = await loop.create_datagram_endpoint(Client, remote_addr=relay.address)
            try:
                async with asyncio.timeout(timeout(5)):
                    for datagram, wanted in (
                        (_padded(_long(V1, 0, 100, initial=True), 1200), factor),
                        (_long(V1, 2, 60), factor),  # dropped by the relay
                        (_long(V1, 2, 60), 2 * factor),
                    ):
                        client.sendto(datagram)
                        while len(got) < wanted:
                            arrived.clear()
                            await arrived.wait()
                        await asyncio.sleep(0.05)
            finally:
                client.close()
        return trace
    finally:
        server.close()


@pytest.mark.timeout(30)
async def test_relay_trace_of_an_amplifying_server_fails() -> None:
    five = await _relay_trace(5)
    assert five.ended
    with pytest.raises(CaseFailed, match="over 4x"):
        _amplification_evidence(five, strict=False)
    with pytest.raises(CaseFailed, match="over 3x"):
        _amplification_evidence(five, strict=True)
    # Only what came before the Handshake counts: the 5 answers to the Initial.
    assert check_amplification(five.datagrams).sent == 5 * 1200

    three = await _relay_trace(3)
    assert "3.00x" in _amplification_evidence(three, strict=True)

    four = await _relay_trace(4)
    with pytest.raises(CaseFailed, match="over 3x"):
        _amplification_evidence(four, strict=True)
    assert "within the Interop Runner's 4x tolerance" in _amplification_evidence(four, strict=False)


def test_no_handshake_means_nothing_was_validated() -> None:
    trace = Trace(datagrams=[(True, _padded(_long(V1, 0, 10, initial=True), 1200))])
    with pytest.raises(CaseFailed, match="nothing validated"):
        _amplification_evidence(trace, strict=True)


async def test_an_idle_timeout_inside_a_case_is_not_reported_as_the_case_time_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import interop.runner as runner

    async def idle(*args: object) -> None:
        raise ConnectionTimeout("QUIC idle timeout (30.0 s)")

    monkeypatch.setattr(runner, "_run_one", idle)
    options = runner.RunOptions(columns=[("netconn", "client")], cases=["handshake"])
    [result] = (await runner.run_matrix(options)).results
    assert result.reason == "ConnectionTimeout: QUIC idle timeout (30.0 s)"
