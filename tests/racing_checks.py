"""Checks shared by the lab tests that race a blackholed IPv6 address against IPv4."""

from __future__ import annotations

from conftest import timeout

import netconn as nc
from netconn.lab import Host


def assert_ipv4_won_one_stagger_later(
    report: nc.EstablishmentReport, server: Host, stagger: float
) -> None:
    """IPv6 went first and was cancelled; IPv4 started one stagger later and won quickly."""
    assert [a.host for a in report.resolved] == [server.ipv6, server.ipv4]
    first, second = report.attempts
    # The loser is in the report, cancelled once IPv4 won.
    assert first.address.host == server.ipv6
    assert first.outcome == "cancelled"
    assert first.duration >= stagger
    assert second.address.host == server.ipv4
    assert second.outcome == "ready"
    assert second.started_after >= stagger
    # Ready about one stagger after the start, far below the attempt timeout.
    assert report.duration < stagger + timeout(2.0)
