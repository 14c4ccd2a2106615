"""Paths without a lab: classification, evaluation on snapshots, the host's own view.

Snapshots (``HostNetwork``) are built by hand here to pin the rules; the
loopback tests read the real kernel.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest
from conftest import timeout

import netconn as nc
from netconn import _netlink, pathmonitor
from netconn.path import (
    HostNetwork,
    Interface,
    InterfaceType,
    PathStatus,
    _classify,
    _interface,
    connection_path,
    monitor_path,
)
from netconn.pathmonitor import Debouncer, ViabilityTracker, _EventSource
from netconn.stacks.tcp import _ViabilityPoller

UP = 0x1 | 0x40 | 0x10000  # IFF_UP | IFF_RUNNING | IFF_LOWER_UP


@pytest.fixture(autouse=True)
def no_overrides() -> Iterator[None]:
    yield
    nc.clear_interface_configuration()


@pytest.fixture
def short_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    """The netlink subscription closes 10 ms after its last subscriber left."""
    monkeypatch.setattr(pathmonitor, "_LINGER", 0.01)


async def netlink_closed() -> bool:
    """Whether every netlink subscription closed, once its linger time passed."""
    assert all(not source._subscribers for source in _EventSource._sources.values())
    for _ in range(round(timeout(2) / 0.01)):
        if not _EventSource._sources:
            return True
        await asyncio.sleep(0.01)
    return False


def link(
    name: str, index: int, *, arphrd: int = 1, kind: str = "", up: bool = True
) -> _netlink.Link:
    return _netlink.Link(index, name, arphrd, UP if up else 0, kind, 6 if up else 2)


def route(
    destination: str | None, length: int, oif: int, *, gateway: str | None = None, metric: int = 0
) -> _netlink.Route:
    family = socket.AF_INET6 if ":" in (destination or gateway or "") else socket.AF_INET
    return _netlink.Route(family, destination, length, oif, gateway, None, metric, 254, 1)


def wired(name: str, index: int, *addresses: str, up: bool = True) -> Interface:
    return Interface(name, index, InterfaceType.WIRED, addresses, is_up=up)


def test_classification_from_kernel_attributes() -> None:
    assert _classify(_netlink.Link(1, "lo", 772, 0x8 | 0x1, "", 0)) is InterfaceType.LOOPBACK
    assert _classify(link("nc-test-veth", 90, kind="veth")) is InterfaceType.WIRED
    assert _classify(link("nc-test-eth", 91)) is InterfaceType.WIRED
    assert _classify(link("nc-test-raw", 92, arphrd=519)) is InterfaceType.CELLULAR
    assert _classify(link("wwan7", 93, arphrd=65534)) is InterfaceType.CELLULAR
    assert _classify(link("nc-test-dummy", 94, kind="dummy")) is InterfaceType.OTHER
    assert _classify(link("nc-test-tun", 95, arphrd=65534, kind="tun")) is InterfaceType.OTHER


def test_interface_policy_defaults_and_overrides() -> None:
    cellular = _interface(link("nc-test-raw", 92, arphrd=519), ())
    assert cellular.is_expensive and not cellular.is_constrained
    plain = _interface(link("nc-test-eth", 91), ())
    assert not plain.is_expensive

    nc.configure_interface("nc-test-eth", type=InterfaceType.WIFI, constrained=True)
    changed = _interface(link("nc-test-eth", 91), ())
    assert changed.type is InterfaceType.WIFI
    assert changed.is_constrained and not changed.is_expensive
    nc.configure_interface("nc-test-raw", expensive=False)
    assert not _interface(link("nc-test-raw", 92, arphrd=519), ()).is_expensive
    nc.clear_interface_configuration("nc-test-eth")
    assert _interface(link("nc-test-eth", 91), ()).type is InterfaceType.WIRED


NET = HostNetwork(
    (
        Interface("lo", 1, InterfaceType.LOOPBACK, ("127.0.0.1", "::1")),
        wired("eth0", 2, "192.0.2.10", "2001:db8::10", "fe80::10"),
        Interface("wwan0", 3, InterfaceType.CELLULAR, ("198.51.100.7",), is_expensive=True),
    ),
    (
        route("192.0.2.0", 24, 2),
        route(None, 0, 2, gateway="192.0.2.1"),
        route(None, 0, 2, gateway="2001:db8::1", metric=1024),
        route("2001:db8::", 64, 2),
        route("198.51.100.0", 24, 3),
        route(None, 0, 3, gateway="198.51.100.1", metric=50),
    ),
)


def test_monitor_path_picks_the_default_route_interface() -> None:
    path = monitor_path(NET)
    assert path.status is PathStatus.SATISFIED
    assert path.interface is not None and path.interface.name == "eth0"
    assert path.uses_interface_type(InterfaceType.WIRED)
    assert [i.name for i in path.available_interfaces] == ["eth0", "wwan0"]
    assert path.gateways == ("192.0.2.1", "198.51.100.1", "2001:db8::1")
    assert path.supports_ipv4 and path.supports_ipv6
    assert not path.is_expensive
    assert "satisfied eth0[wired]" in path.describe()


def test_monitor_path_filters_and_explains() -> None:
    cellular = monitor_path(NET, nc.Parameters(required_interface_type=InterfaceType.CELLULAR))
    assert cellular.interface is not None and cellular.interface.name == "wwan0"
    assert cellular.is_expensive and cellular.supports_ipv4 and not cellular.supports_ipv6

    no_wired = nc.Parameters(
        prohibited_interface_types=frozenset({InterfaceType.WIRED, InterfaceType.CELLULAR})
    )
    refused = monitor_path(NET, no_wired)
    assert refused.status is PathStatus.UNSATISFIED
    assert refused.unsatisfied_reason == "no interface satisfies the parameters"
    assert not refused.supports_ipv4

    missing = monitor_path(NET, nc.Parameters(required_interface="eth9"))
    assert missing.unsatisfied_reason == "interface eth9 does not exist"

    down = HostNetwork((NET.interfaces[0], wired("eth0", 2, "192.0.2.10", up=False)), NET.routes)
    assert monitor_path(down).unsatisfied_reason == "every interface is down"
    loopback = monitor_path(down, nc.Parameters(required_interface="lo"))
    assert loopback.status is PathStatus.SATISFIED


def test_connection_path_status_and_reasons() -> None:
    local, remote = nc.Address("192.0.2.10", 5000), nc.Address("203.0.113.5", 443)
    path = connection_path(NET, local, remote)
    assert path.status is PathStatus.SATISFIED
    assert path.interface is not None and path.interface.name == "eth0"
    assert path.gateways == ("192.0.2.1", "2001:db8::1")
    assert path.supports_ipv4 and path.supports_ipv6  # eth0 has a global IPv6 address

    mapped = connection_path(NET, nc.Address("::ffff:192.0.2.10", 5000), remote)
    assert mapped.interface is not None and mapped.interface.name == "eth0"

    down = HostNetwork((wired("eth0", 2, "192.0.2.10", up=False),), NET.routes)
    assert connection_path(down, local, remote).unsatisfied_reason == "eth0[wired] is down"

    no_route = HostNetwork(NET.interfaces, (route("192.0.2.0", 24, 2),))
    reason = connection_path(no_route, local, remote).unsatisfied_reason
    assert reason == "no route to 203.0.113.5 through eth0[wired]"

    gone = connection_path(NET, nc.Address("192.0.2.99", 5000), remote)
    assert gone.status is PathStatus.UNSATISFIED
    assert "192.0.2.99" in gone.unsatisfied_reason

    forbidden = connection_path(
        NET, local, remote, nc.Parameters(required_interface_type=InterfaceType.WIFI)
    )
    assert forbidden.unsatisfied_reason == "eth0[wired] is not a wifi interface"


def test_the_hosts_own_loopback() -> None:
    net = HostNetwork.capture()
    lo = net.by_index(1)
    assert lo is not None and lo.type is InterfaceType.LOOPBACK and lo.is_up
    assert "127.0.0.1" in lo.addresses
    assert net.holding("127.0.0.1") == lo
    chosen = _netlink.route_get("127.0.0.1")
    assert chosen is not None and chosen.oif == 1
    assert net.routes_to("127.0.0.1", lo)


def test_parameters_reject_negative_delays() -> None:
    with pytest.raises(ValueError):
        nc.Parameters(connection_attempt_delay=-1)


async def test_debouncer_runs_once_after_a_burst() -> None:
    runs: list[float] = []
    loop = asyncio.get_running_loop()
    debouncer = Debouncer(0.05, lambda: runs.append(loop.time()), max_wait=1.0)
    start = loop.time()
    for _ in range(5):
        debouncer.poke()
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.15)
    assert len(runs) == 1 and runs[0] - start >= 0.05
    debouncer.poke()
    debouncer.cancel()
    await asyncio.sleep(0.1)
    assert len(runs) == 1


async def test_viability_tracker_ignores_flaps_shorter_than_the_debounce() -> None:
    seen: list[bool] = []
    tracker = ViabilityTracker(0.1, seen.append)
    tracker.become_viable_now()
    tracker.set_link(False)
    await asyncio.sleep(0.03)
    tracker.set_link(True)
    await asyncio.sleep(0.2)
    assert seen == [True]
    tracker.set_transport(False)
    await asyncio.sleep(0.2)
    assert seen == [True, False] and not tracker.reported
    tracker.set_transport(True)
    tracker.set_link(False)  # still inviable: nothing new to report
    await asyncio.sleep(0.2)
    assert seen == [True, False]
    tracker.stop(final=False)
    assert seen == [True, False]


@pytest.mark.usefixtures("short_linger")
async def test_path_monitor_reports_the_host_and_ends_iteration_on_cancel() -> None:
    monitor = nc.PathMonitor(required_interface_type=InterfaceType.LOOPBACK)
    updates: list[nc.Path] = []
    monitor.on_update(lambda m, path: updates.append(path))
    seen: list[nc.Path] = []

    async def consume() -> None:
        async for path in monitor:
            seen.append(path)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    assert updates and updates[0] == monitor.current_path
    assert updates[0].status is PathStatus.SATISFIED
    assert updates[0].uses_interface_type(InterfaceType.LOOPBACK)
    assert seen == updates
    monitor.cancel()
    await asyncio.wait_for(task, timeout(2))
    assert await netlink_closed()  # the netlink socket closed after its last subscriber


@pytest.mark.usefixtures("short_linger")
async def test_loopback_connection_path_and_clean_up() -> None:
    listener = nc.Listener(nc.TCP(), host="127.0.0.1", port=0)
    async with listener:
        endpoint = nc.Endpoint.host_port("127.0.0.1", listener.port)
        paths: list[nc.Path] = []
        conn = nc.Connection(endpoint, nc.TCP(), nc.Parameters(required_interface="lo"))
        conn.on_path_update(lambda c, path: paths.append(path))
        async with conn:
            assert conn.is_viable
            assert len(paths) == 1 and paths[0] is conn.current_path
            path = paths[0]
            assert path.status is PathStatus.SATISFIED
            assert path.interface is not None and path.interface.name == "lo"
            assert path.local == conn.local_endpoint and path.remote == conn.remote_endpoint
            assert not conn.better_path_available
        assert isinstance(conn.state, nc.Cancelled)
    assert await netlink_closed()


async def test_connections_one_after_another_share_one_netlink_subscription() -> None:
    listener = nc.Listener(nc.TCP(), host="127.0.0.1", port=0)
    async with listener:
        endpoint = nc.Endpoint.host_port("127.0.0.1", listener.port)
        sources: list[set[_EventSource]] = []
        for _ in range(3):
            async with nc.Connection(endpoint, nc.TCP()) as conn:
                assert conn.current_path is not None
                sources.append(set(_EventSource._sources.values()))
            await asyncio.sleep(0)  # the accepted side ends too
        # Each connection found the subscription (and its snapshot) the last one left.
        assert len(sources[0]) == 1 and sources[0] == sources[1] == sources[2]
        (source,) = sources[0]
        assert source._snapshot is not None


@pytest.mark.usefixtures("short_linger")
async def test_a_missing_required_interface_waits() -> None:
    endpoint = nc.Endpoint.host_port("127.0.0.1", 9)
    conn = nc.Connection(endpoint, nc.TCP(), nc.Parameters(required_interface="nc-missing0"))
    with pytest.raises(nc.NoSatisfyingPath, match="nc-missing0 does not exist"):
        await conn.wait_ready(timeout(5))
    assert isinstance(conn.state, nc.Waiting)
    conn.force_cancel()
    assert await netlink_closed()


def _polled() -> set[object]:
    poller = _ViabilityPoller._pollers.get(asyncio.get_running_loop())
    return set() if poller is None else set(poller._channels)


def _subscribers() -> int:
    return sum(len(source._subscribers) for source in _EventSource._sources.values())


async def test_a_connection_nobody_asks_about_follows_no_network_events() -> None:
    """Neither end subscribes, nor polls TCP_INFO, until its path is asked for;
    the first question subscribes and answers from the network as it is then."""
    listener = nc.Listener(nc.TCP(), host="127.0.0.1", port=0)
    async with listener:
        endpoint = nc.Endpoint.host_port("127.0.0.1", listener.port)
        before = _subscribers()
        async with asyncio.timeout(timeout(5)), nc.Connection(endpoint, nc.TCP()) as conn:
            server = await listener.accept()
            assert server is not None
            assert _subscribers() == before
            assert conn._watcher is None
            assert _polled() == set()

            path = conn.current_path
            assert _subscribers() == before + 1
            assert path is not None and path.interface is not None
            assert path.interface.name == "lo" and path.status is PathStatus.SATISFIED
            assert path.local == conn.local_endpoint and path.remote == conn.remote_endpoint
            assert conn.current_path is path and _subscribers() == before + 1

            seen: list[bool] = []
            server.on_viability_update(lambda c, viable: seen.append(viable))
            assert _subscribers() == before + 2  # a callback subscribes too
            assert server.is_viable and seen == []
            assert _polled() == {conn._channel, server._channel}
            await server.cancel()
            assert _subscribers() == before + 1


async def test_a_waiting_connection_follows_network_events() -> None:
    """It retries when the network changes, so waiting subscribes."""
    before = _subscribers()
    endpoint = nc.Endpoint.host_port("127.0.0.1", 9)
    conn = nc.Connection(endpoint, nc.TCP(), nc.Parameters(required_interface="nc-missing1"))
    with pytest.raises(nc.NoSatisfyingPath):
        await conn.wait_ready(timeout(5))
    assert isinstance(conn.state, nc.Waiting)
    assert _subscribers() == before + 1
    conn.force_cancel()
    assert _subscribers() == before
