"""The table of what is benchmarked: every stack, its workloads, netconn and its baselines.

Adding a stack means adding one :class:`StackBench` row here; adding a
library means one more implementation in a row. Ratios compare ``pairs``:
(subject, reference) names, each > 1 when the subject does better.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .api import Env, Implementation
from .asyncio_impl import AsyncioStreams, AsyncioUDP
from .netconn_impl import NetconnQUIC, NetconnStream, NetconnUDP, NetconnWebSocket
from .rawquic_impl import RawQUIC
from .websockets_impl import WebsocketsLibrary
from .workloads import WORKLOADS, Scale, Workload

__all__ = ["STACKS", "Scenario", "StackBench", "scenarios"]

MiB = 1 << 20


@dataclass(frozen=True)
class StackBench:
    """One stack: how to run it in each library, and which workloads apply."""

    title: str
    """Shown in reports, e.g. ``"TLS over TCP"``."""
    implementations: tuple[Implementation, ...]
    """netconn first, then the raw baseline, then outside references."""
    workloads: tuple[str, ...]
    """Names from :data:`benchmarks.workloads.WORKLOADS`."""
    pairs: tuple[tuple[str, str], ...]
    """(subject, reference) implementation names whose ratio is reported."""
    scale: dict[str, int] = field(default_factory=dict)
    """Scale fields this stack overrides in the full run (e.g. less bulk data for QUIC)."""
    quick_scale: dict[str, int] = field(default_factory=dict)
    """Scale fields this stack overrides in the quick mode."""
    datagram_frames: bool = False
    """Whether the ``datagrams`` workload needs QUIC DATAGRAM frames switched on."""


STACKS: dict[str, StackBench] = {
    "tcp": StackBench(
        "TCP",
        (NetconnStream(tls=False), AsyncioStreams(tls=False)),
        ("bulk", "echo", "handshake", "idle", "slow_reader"),
        (("netconn", "asyncio"),),
    ),
    "tls": StackBench(
        "TLS 1.3 over TCP",
        (NetconnStream(tls=True), AsyncioStreams(tls=True)),
        ("bulk", "echo", "handshake", "resumed", "idle", "slow_reader"),
        (("netconn", "asyncio"),),
    ),
    "udp": StackBench(
        "UDP",
        (NetconnUDP(), AsyncioUDP()),
        ("echo", "datagrams"),
        (("netconn", "asyncio"),),
    ),
    "websocket": StackBench(
        "WebSocket over TCP",
        (NetconnWebSocket(), WebsocketsLibrary()),
        ("bulk", "echo", "handshake", "idle", "slow_reader"),
        (("netconn", "websockets"),),
    ),
    "quic": StackBench(
        "QUIC",
        (NetconnQUIC(), NetconnQUIC(engine="qh3"), RawQUIC("aioquic"), RawQUIC("qh3")),
        (
            "bulk",
            "streams",
            "echo",
            "handshake",
            "resumed",
            "zero_rtt",
            "datagrams",
            "idle",
            "slow_reader",
        ),
        (("netconn", "aioquic"), ("netconn-qh3", "qh3"), ("qh3", "aioquic")),
        scale={"bulk_bytes": 16 * MiB, "handshakes": 50, "datagram_size": 1000},
        quick_scale={"bulk_bytes": 1 * MiB, "datagram_size": 1000},
        datagram_frames=True,
    ),
}
"""Every benchmarked stack, by the name used on the command line."""


@dataclass(frozen=True)
class Scenario:
    """One workload on one stack, ready to run."""

    stack: str
    """Key in :data:`STACKS`."""
    workload: Workload
    """What is measured."""
    scale: Scale
    """How much of it."""
    env: Env
    """Certificates and event loop."""

    @property
    def bench(self) -> StackBench:
        """The stack's row of the table."""
        return STACKS[self.stack]

    def implementation(self, name: str) -> Implementation:
        """The implementation called ``name`` in this stack's row."""
        for impl in self.bench.implementations:
            if impl.name == name:
                return impl
        raise KeyError(f"{self.stack} has no implementation {name!r}")


def scenarios(
    stacks: list[str], workloads: list[str] | None, *, quick: bool, env: Env, base: Scale
) -> list[Scenario]:
    """The scenarios for ``stacks`` (in order), optionally only ``workloads``."""
    out: list[Scenario] = []
    for name in stacks:
        bench = STACKS[name]
        overrides = bench.quick_scale if quick else bench.scale
        scale = dataclasses.replace(base, **overrides)
        stack_env = dataclasses.replace(env, datagram_frames=bench.datagram_frames)
        for workload in bench.workloads:
            if workloads is None or workload in workloads:
                out.append(Scenario(name, WORKLOADS[workload], scale, stack_env))
    return out
