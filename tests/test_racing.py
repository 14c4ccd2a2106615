"""Happy Eyeballs (RFC 8305): ordering, staggering, cancelling losers, the report.

The race only calls ``stack.open_channel``; a scripted stack shows the rules
without a network, and real TCP over loopback shows them with one.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from conftest import timeout

import netconn as nc
from netconn.endpoint import Address
from netconn.lab import LabEndpoint
from netconn.racing import interleave
from netconn.stacks.base import AttemptContext, Channel, StreamProtocol


@dataclass
class FakeChannel:
    """A channel that only records how it ended."""

    remote_address: Address | None
    local_address: Address | None = None
    aborted: bool = False
    closed: bool = False

    async def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True


@dataclass
class Log:
    """What the scripted stack saw: attempts that were cancelled, channels handed out."""

    cancelled: list[str] = field(default_factory=list)
    channels: list[FakeChannel] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class Scripted(StreamProtocol):
    """A stack whose attempt to each host takes a set time, then works or fails."""

    script: dict[str, tuple[float, str]]
    """host -> (seconds, "ok" | "refused" | "certificate"); unknown hosts hang."""
    log: Log = field(default_factory=Log)

    async def open_channel(self, ctx: AttemptContext, address: Address) -> Channel:
        seconds, result = self.script.get(address.host, (3600.0, "ok"))
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.log.cancelled.append(address.host)
            raise
        if result == "refused":
            raise nc.ConnectionRefused(f"{address} refused")
        if result == "certificate":
            raise nc.CertificateError("bad certificate")
        channel = FakeChannel(address)
        self.log.channels.append(channel)
        return channel


V6 = ["fd00::1", "fd00::2"]
V4 = ["192.0.2.1", "192.0.2.2"]


def named(*addresses: str, delays: dict[int, float] | None = None) -> LabEndpoint:
    return LabEndpoint(
        "racing.test", 443, addresses=addresses, delays=tuple((delays or {}).items())
    )


def fast(**changes: Any) -> nc.Parameters:
    base: dict[str, Any] = {"connection_attempt_delay": 0.1, "retry_delays": (30.0, 30.0)}
    base.update(changes)
    return nc.Parameters(**base)


async def until(predicate: Callable[[], bool], seconds: float = 5) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout(seconds)
    while not predicate():
        if loop.time() > deadline:
            pytest.fail("timed out")
        await asyncio.sleep(0.01)


def test_interleave_alternates_families_from_the_first() -> None:
    addresses = [Address(h, 1) for h in [*V6, *V4, "fd00::3"]]
    assert [a.host for a in interleave(addresses)] == [
        "fd00::1",
        "192.0.2.1",
        "fd00::2",
        "192.0.2.2",
        "fd00::3",
    ]
    v4_first = [Address(h, 1) for h in [*V4, *V6]]
    assert [a.host for a in interleave(v4_first)][:2] == ["192.0.2.1", "fd00::1"]


async def test_attempts_are_staggered_interleaved_and_losers_cancelled() -> None:
    stack = Scripted({"192.0.2.2": (0.0, "ok")})  # only the fourth attempt answers
    conn = nc.Connection(named(*V4, *V6), stack, fast())
    await conn.wait_ready(timeout(5))
    report = conn.establishment_report
    hosts = [a.address.host for a in report.attempts]
    assert hosts == ["fd00::1", "192.0.2.1", "fd00::2", "192.0.2.2"]  # IPv6 first
    for i, attempt in enumerate(report.attempts):
        assert attempt.started_after >= i * 0.1  # one stagger apart
    assert [a.outcome for a in report.attempts] == ["cancelled"] * 3 + ["ready"]
    assert sorted(stack.log.cancelled) == sorted(hosts[:3])  # the losers saw CancelledError
    assert conn.remote_endpoint == Address("192.0.2.2", 443)
    conn.force_cancel()


async def test_a_failed_attempt_starts_the_next_at_once() -> None:
    stack = Scripted({"fd00::1": (0.0, "refused"), "192.0.2.1": (0.0, "ok")})
    conn = nc.Connection(named("fd00::1", "192.0.2.1"), stack, fast(connection_attempt_delay=5))
    await conn.wait_ready(timeout(5))
    first, second = conn.establishment_report.attempts
    assert first.outcome == "failed" and isinstance(first.error, nc.ConnectionRefused)
    assert second.outcome == "ready"
    assert second.started_after < 5  # not a whole stagger later
    conn.force_cancel()


async def test_a_final_error_stops_the_race() -> None:
    stack = Scripted({"fd00::1": (0.0, "certificate"), "192.0.2.1": (0.5, "ok")})
    conn = nc.Connection(named("fd00::1", "192.0.2.1"), stack, fast(connection_attempt_delay=0))
    with pytest.raises(nc.CertificateError):
        await conn.wait_ready(timeout(5))
    assert isinstance(conn.state, nc.Failed)
    outcomes = {a.address.host: a.outcome for a in conn.establishment_report.attempts}
    assert outcomes == {"fd00::1": "failed", "192.0.2.1": "cancelled"}
    assert stack.log.channels == []


async def test_every_failure_leads_to_waiting_with_the_last_error() -> None:
    stack = Scripted({h: (0.0, "refused") for h in [*V6, *V4]})
    conn = nc.Connection(named(*V6, *V4), stack, fast())
    with pytest.raises(nc.ConnectionRefused):
        await conn.wait_ready(timeout(5))
    assert isinstance(conn.state, nc.Waiting)
    assert [a.outcome for a in conn.establishment_report.attempts] == ["failed"] * 4
    conn.force_cancel()


async def test_ipv4_answers_wait_the_resolution_delay_for_ipv6() -> None:
    stack = Scripted({"fd00::1": (0.0, "ok"), "192.0.2.1": (0.0, "ok")})
    # AAAA answers 30 ms after A: within the 200 ms resolution delay, so IPv6 still goes first.
    endpoint = named("fd00::1", "192.0.2.1", delays={socket.AF_INET6: 0.03})
    conn = nc.Connection(endpoint, stack, fast(resolution_delay=0.2))
    await conn.wait_ready(timeout(5))
    assert [a.address.host for a in conn.establishment_report.attempts] == ["fd00::1"]
    conn.force_cancel()


async def test_late_ipv6_answers_join_the_race() -> None:
    stack = Scripted({"fd00::1": (0.0, "ok")})  # IPv4 hangs
    # AAAA is slower than the resolution delay: IPv4 starts first, IPv6 joins when it arrives.
    endpoint = named("fd00::1", "192.0.2.1", delays={socket.AF_INET6: 0.3})
    conn = nc.Connection(endpoint, stack, fast(resolution_delay=0.05, connection_attempt_delay=0.5))
    await conn.wait_ready(timeout(5))
    first, second = conn.establishment_report.attempts
    assert first.address.host == "192.0.2.1" and first.outcome == "cancelled"
    assert 0.05 <= first.started_after < 0.3
    # It takes the next turn, one stagger after the IPv4 attempt.
    assert second.address.host == "fd00::1" and second.outcome == "ready"
    assert second.started_after >= first.started_after + 0.5
    conn.force_cancel()


async def test_try_next_endpoint_while_preparing_skips_the_attempt_in_flight() -> None:
    stack = Scripted({"192.0.2.1": (0.0, "ok")})  # fd00::1 hangs
    conn = nc.Connection(named("fd00::1", "192.0.2.1"), stack, fast(connection_attempt_delay=30))
    conn.start()
    await until(lambda: len(conn.establishment_report.attempts) >= 1)
    conn.try_next_endpoint()
    await conn.wait_ready(timeout(5))
    first, second = conn.establishment_report.attempts
    assert first.outcome == "cancelled" and first.error is not None
    assert "try_next_endpoint" in str(first.error)
    assert second.address.host == "192.0.2.1" and second.started_after < 30
    conn.force_cancel()


async def test_an_ip_literal_attempt_is_reported_like_a_race_of_one() -> None:
    stack = Scripted({"192.0.2.1": (0.0, "refused")})
    conn = nc.Connection(nc.Endpoint.host_port("192.0.2.1", 443), stack, fast())
    with pytest.raises(nc.ConnectionRefused):
        await conn.wait_ready(timeout(5))
    report = conn.establishment_report
    assert [str(a) for a in report.resolved] == ["192.0.2.1:443"]
    (attempt,) = report.attempts
    assert attempt.outcome == "failed" and isinstance(attempt.error, nc.ConnectionRefused)
    assert isinstance(conn.state, nc.Waiting)
    conn.force_cancel()


async def test_try_next_endpoint_skips_the_only_attempt_to_an_ip_literal() -> None:
    stack = Scripted({})  # hangs
    conn = nc.Connection(nc.Endpoint.host_port("192.0.2.1", 443), stack, fast())
    conn.start()
    await until(lambda: len(conn.establishment_report.attempts) >= 1)
    conn.try_next_endpoint()
    # As a race of one address: nothing is left to try.
    await until(lambda: isinstance(conn.state, nc.Failed))
    assert "no more addresses" in str(conn.state)
    (attempt,) = conn.establishment_report.attempts
    assert attempt.outcome == "cancelled" and "try_next_endpoint" in str(attempt.error)
    assert stack.log.cancelled == ["192.0.2.1"]
    conn.force_cancel()


async def test_cancelling_the_only_attempt_to_an_ip_literal() -> None:
    stack = Scripted({})  # hangs
    conn = nc.Connection(nc.Endpoint.host_port("192.0.2.1", 443), stack, fast())
    conn.start()
    await until(lambda: len(conn.establishment_report.attempts) >= 1)
    conn.try_next_endpoint()  # a skip and a cancel at once: the cancel wins
    await conn.cancel()
    await until(lambda: conn.establishment_report.attempts[0].outcome != "running")
    assert conn.establishment_report.attempts[0].outcome == "cancelled"
    assert isinstance(conn.state, nc.Cancelled)
    assert stack.log.cancelled == ["192.0.2.1"]


async def test_try_next_endpoint_while_waiting_starts_further_down() -> None:
    stack = Scripted({h: (0.0, "refused") for h in ["fd00::1", "192.0.2.1"]})
    conn = nc.Connection(named("fd00::1", "192.0.2.1"), stack, fast())
    with pytest.raises(nc.ConnectionRefused):
        await conn.wait_ready(timeout(5))
    conn.try_next_endpoint()
    await until(lambda: len(conn.establishment_report.attempts) >= 4)
    hosts = [a.address.host for a in conn.establishment_report.attempts]
    assert hosts == ["fd00::1", "192.0.2.1", "192.0.2.1", "fd00::1"]
    conn.force_cancel()
    with pytest.raises(nc.InvalidState):
        conn.try_next_endpoint()


async def test_cancelling_during_the_race_cancels_every_attempt() -> None:
    stack = Scripted({})  # everything hangs
    conn = nc.Connection(named(*V6, *V4), stack, fast(connection_attempt_delay=0.05))
    conn.start()
    await until(lambda: len(conn.establishment_report.attempts) >= 3)
    await conn.cancel()
    await until(lambda: all(a.outcome != "running" for a in conn.establishment_report.attempts))
    attempts = conn.establishment_report.attempts
    assert all(a.outcome == "cancelled" for a in attempts)
    assert sorted(stack.log.cancelled) == sorted(a.address.host for a in attempts)


async def test_real_tcp_a_refused_ipv6_port_falls_back_to_ipv4_at_once() -> None:
    listener = nc.Listener(nc.TCP(), host="127.0.0.1", port=0)
    async with listener:
        endpoint = LabEndpoint("localhost.test", listener.port, addresses=("::1", "127.0.0.1"))
        conn = nc.Connection(endpoint, nc.TCP(), nc.Parameters(connection_attempt_delay=10))
        async with conn:
            first, second = conn.establishment_report.attempts
            assert first.address.host == "::1" and first.outcome == "failed"
            assert isinstance(first.error, nc.ConnectionRefused)
            assert second.address.host == "127.0.0.1" and second.outcome == "ready"
            assert second.started_after < 10
            assert "ready after" in conn.establishment_report.describe()


async def test_a_temporary_dns_failure_of_one_family_means_waiting() -> None:
    class Flaky(LabEndpoint):
        async def resolve(
            self, *, kind: Literal["stream", "datagram"] = "stream", family: int = 0
        ) -> list[Address]:
            if family == socket.AF_INET6:
                raise nc.DNSError("no AAAA records")
            raise nc.DNSError("the server timed out", retryable=True)

    conn = nc.Connection(Flaky("flaky.test", 443), Scripted({}), fast())
    with pytest.raises(nc.DNSError, match="timed out"):
        await conn.wait_ready(timeout(5))
    assert isinstance(conn.state, nc.Waiting)
    assert conn.establishment_report.attempts == []
    conn.force_cancel()


async def test_one_family_without_records_still_connects() -> None:
    stack = Scripted({"192.0.2.1": (0.0, "ok")})
    conn = nc.Connection(named("192.0.2.1"), stack, fast())  # AAAA: no addresses
    await conn.wait_ready(timeout(5))
    assert [a.address.host for a in conn.establishment_report.attempts] == ["192.0.2.1"]
    conn.force_cancel()


async def test_a_query_that_fails_after_the_race_is_won_is_reaped() -> None:
    # localhost often has no AAAA record: that failure may come after IPv4 won.
    class SlowNoAAAA(LabEndpoint):
        async def resolve(
            self, *, kind: Literal["stream", "datagram"] = "stream", family: int = 0
        ) -> list[Address]:
            if family == socket.AF_INET6:
                await asyncio.sleep(0.2)
                raise nc.DNSError("no AAAA records")
            return [Address("192.0.2.1", self.port)]

    params = nc.Parameters(resolution_delay=0.0, connection_attempt_delay=0.01)
    conn = nc.Connection(SlowNoAAAA("slow.test", 443), Scripted({"192.0.2.1": (0.0, "ok")}), params)
    await conn.wait_ready(timeout(5))
    await asyncio.sleep(0.3)  # past the AAAA failure: nothing may be left unretrieved
    conn.force_cancel()
    # The autouse loop checker fails the test on "Task exception was never retrieved".
