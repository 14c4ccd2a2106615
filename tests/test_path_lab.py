"""Paths, viability, better path, interface requirements and racing in the namespace lab.

Every test builds its own client/router/server namespaces (netconn.lab) and
skips without root; CI runs as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from conftest import timeout
from racing_checks import assert_ipv4_won_one_stagger_later

import netconn as nc
from netconn.lab import Lab
from netconn.lab.fixtures import lab_fixture


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


@contextlib.asynccontextmanager
async def echo_server(lab: Lab) -> AsyncIterator[nc.Listener[nc.TCP]]:
    """A TCP echo listener in the server namespace (every address, one port)."""
    with lab.inside(lab.server):
        listener = nc.Listener(nc.TCP(), port=0)
        await listener.start()

    async def echo(conn: nc.Connection[nc.TCP]) -> None:
        with contextlib.suppress(nc.NetconnError):
            while data := await conn.receive(1, 65536):
                await conn.send(data)

    task = asyncio.create_task(listener.run(echo))
    try:
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await listener.cancel()


async def until(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """Wait until ``predicate()`` holds; fail with ``what`` after ``seconds`` (scaled)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout(seconds)
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def syn_sent_sockets() -> list[str]:
    """TCP sockets of the calling thread's namespace still in SYN_SENT."""
    found = []
    for table in ("tcp", "tcp6"):
        with open(f"/proc/thread-self/net/{table}") as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "02":  # TCP_SYN_SENT
                    found.append(line)
    return found


def params(**changes: object) -> nc.Parameters:
    base: dict[str, object] = {"viability_debounce": 0.1, "attempt_timeout": 10.0}
    base.update(changes)
    return nc.Parameters(**base)  # type: ignore[arg-type]


async def test_link_down_makes_the_connection_inviable_and_up_viable_again(lab: Lab) -> None:
    async with echo_server(lab) as listener:
        with lab.inside(lab.client):
            conn = nc.Connection(
                nc.Endpoint.host_port(lab.server.ipv4, listener.port), nc.TCP(), params()
            )
            seen: list[bool] = []
            paths: list[nc.Path] = []
            conn.on_viability_update(lambda c, viable: seen.append(viable))
            conn.on_path_update(lambda c, path: paths.append(path))
            async with conn:
                assert conn.is_viable and seen == [True]
                assert conn.current_path is not None
                assert conn.current_path.interface is not None
                assert conn.current_path.interface.name == "c0"
                assert conn.current_path.uses_interface_type(nc.InterfaceType.WIRED)
                assert conn.current_path.gateways == ("10.77.1.1", "fd77:1::1")

                lab.set_link(lab.client, up=False)
                await until(lambda: not conn.is_viable, 5, "viability false after link down")
                assert seen[-1] is False
                assert paths[-1].status is nc.PathStatus.UNSATISFIED
                assert "down" in paths[-1].unsatisfied_reason

                lab.set_link(lab.client, up=True)
                await until(lambda: conn.is_viable, 5, "viability true after link up")
                assert seen[-2:] == [False, True]
                back = paths[-1]
                assert back.status is nc.PathStatus.SATISFIED
                # The connection itself survived the flap.
                await conn.send(b"still here")
                assert await conn.receive_exactly(10) == b"still here"


async def test_a_first_question_after_the_link_went_down_sees_it(lab: Lab) -> None:
    """Nobody followed the path while the link went down: the first question
    evaluates it then, and a callback added then hears the link come back."""
    async with echo_server(lab) as listener:
        with lab.inside(lab.client):
            conn = nc.Connection(
                nc.Endpoint.host_port(lab.server.ipv4, listener.port), nc.TCP(), params()
            )
            async with conn:
                assert conn._watcher is None  # nothing asked yet: no subscription
                lab.set_link(lab.client, up=False)
                assert not conn.is_viable  # at once, not after the debounce
                assert conn.current_path is not None
                assert conn.current_path.status is nc.PathStatus.UNSATISFIED
                assert conn.current_path.interface is not None
                assert conn.current_path.interface.name == "c0"
                seen: list[bool] = []
                conn.on_viability_update(lambda c, viable: seen.append(viable))
                lab.set_link(lab.client, up=True)
                await until(lambda: seen == [True], 5, "viability true after link up")
                assert conn.is_viable
                await conn.send(b"back")
                assert await conn.receive_exactly(4) == b"back"


async def test_a_short_flap_is_debounced(lab: Lab) -> None:
    async with echo_server(lab) as listener:
        with lab.inside(lab.client):
            conn = nc.Connection(
                nc.Endpoint.host_port(lab.server.ipv4, listener.port),
                nc.TCP(),
                params(viability_debounce=2.0),
            )
            seen: list[bool] = []
            conn.on_viability_update(lambda c, viable: seen.append(viable))
            async with conn:
                lab.set_link(lab.client, up=False)
                await asyncio.sleep(0.3)
                lab.set_link(lab.client, up=True)
                await asyncio.sleep(2.5)
                assert seen == [True]


async def test_unacknowledged_data_makes_tcp_inviable_until_acks_resume(lab: Lab) -> None:
    async with echo_server(lab) as listener:
        with lab.inside(lab.client):
            conn = nc.Connection(
                nc.Endpoint.host_port(lab.server.ipv4, listener.port), nc.TCP(), params()
            )
            async with conn:
                rule = lab.blackhole(lab.server.ipv4)
                await conn.send(b"lost in the void")
                await until(lambda: not conn.is_viable, 8, "viability false while acks stop")
                # The link itself stayed up: only the transport noticed.
                assert conn.current_path is not None
                assert conn.current_path.status is nc.PathStatus.SATISFIED
                lab.remove(rule)
                await until(lambda: conn.is_viable, 10, "viability true once acks resume")
                assert await conn.receive_exactly(16) == b"lost in the void"


async def test_unanswered_keepalives_make_an_idle_connection_inviable(lab: Lab) -> None:
    keepalive = nc.TCP(keepalive=True, keepalive_idle=1, keepalive_interval=1, keepalive_count=30)
    async with echo_server(lab) as listener:
        with lab.inside(lab.client):
            endpoint = nc.Endpoint.host_port(lab.server.ipv4, listener.port)
            async with nc.Connection(endpoint, keepalive, params()) as conn:
                rule = lab.blackhole(lab.server.ipv4)  # nothing is sent but probes
                await until(lambda: not conn.is_viable, 10, "viability false without probe acks")
                lab.remove(rule)
                await until(lambda: conn.is_viable, 10, "viability true once a probe is answered")


async def test_address_changes_update_the_path(lab: Lab) -> None:
    async with echo_server(lab) as listener:
        with lab.inside(lab.client):
            conn = nc.Connection(
                nc.Endpoint.host_port(lab.server.ipv4, listener.port), nc.TCP(), params()
            )
            paths: list[nc.Path] = []
            conn.on_path_update(lambda c, path: paths.append(path))
            async with conn:
                assert len(paths) == 1
                lab.add_address(lab.client, "10.77.1.9/24")
                await until(lambda: len(paths) >= 2, 5, "a path update for a new address")
                assert paths[-1].interface is not None
                assert "10.77.1.9" in paths[-1].interface.addresses
                assert paths[-1].status is nc.PathStatus.SATISFIED

                lab.remove_address(lab.client, "10.77.1.2/24")
                await until(
                    lambda: paths[-1].status is nc.PathStatus.UNSATISFIED,
                    5,
                    "an unsatisfied path once the local address is gone",
                )
                assert "10.77.1.2" in paths[-1].unsatisfied_reason
                await until(lambda: not conn.is_viable, 5, "viability false without an address")


async def test_a_route_through_a_cheaper_second_interface_is_a_better_path(lab: Lab) -> None:
    lab.configure_interface("c0", expensive=True)
    async with echo_server(lab) as listener:
        with lab.inside(lab.client):
            conn = nc.Connection(
                nc.Endpoint.host_port(lab.server.ipv4, listener.port), nc.TCP(), params()
            )
            better: list[bool] = []
            conn.on_better_path_update(lambda c, available: better.append(available))
            async with conn:
                assert conn.current_path is not None and conn.current_path.is_expensive
                lab.add_second_link()  # no route to the server through it yet
                await asyncio.sleep(0.3)
                assert better == [] and not conn.better_path_available

                lab.route_server_via_second_link(metric=5)
                await until(lambda: better == [True], 5, "a better path through c1")
                assert conn.better_path_available
                # Only a signal: the connection stays where it is and works.
                assert conn.current_path.interface is not None
                assert conn.current_path.interface.name == "c0"
                await conn.send(b"ping")
                assert await conn.receive_exactly(4) == b"ping"

                lab.delete_route(lab.client, "10.77.2.0/24", dev="c1", metric=5)
                await until(lambda: better == [True, False], 5, "the better path going away")


async def test_required_interface_binds_to_it(lab: Lab) -> None:
    lab.add_second_link(route_metric=200)  # the kernel still prefers c0 (metric 100)
    async with echo_server(lab) as listener:
        with lab.inside(lab.client):
            endpoint = nc.Endpoint.host_port(lab.server.ipv4, listener.port)
            async with nc.Connection(endpoint, nc.TCP(), params()) as default:
                assert default.local_endpoint is not None
                assert default.local_endpoint.host == "10.77.1.2"
            async with nc.Connection(endpoint, nc.TCP(), params(required_interface="c1")) as bound:
                assert bound.local_endpoint is not None
                assert bound.local_endpoint.host == "10.77.3.2"
                assert bound.current_path is not None
                assert bound.current_path.interface is not None
                assert bound.current_path.interface.name == "c1"


async def test_required_interface_type_picks_the_allowed_interface(lab: Lab) -> None:
    lab.configure_interface("c1", type=nc.InterfaceType.CELLULAR)
    lab.add_second_link(route_metric=200)
    async with echo_server(lab) as listener:
        with lab.inside(lab.client):
            endpoint = nc.Endpoint.host_port(lab.server.ipv4, listener.port)
            async with nc.Connection(
                endpoint, nc.TCP(), params(required_interface_type=nc.InterfaceType.CELLULAR)
            ) as cellular:
                assert cellular.local_endpoint is not None
                assert cellular.local_endpoint.host == "10.77.3.2"
                path = cellular.current_path
                assert path is not None
                assert path.uses_interface_type(nc.InterfaceType.CELLULAR)
                assert path.is_expensive  # cellular is expensive by default
            prohibited = nc.Connection(
                endpoint,
                nc.TCP(),
                params(
                    prohibited_interface_types=frozenset(
                        {nc.InterfaceType.WIRED, nc.InterfaceType.CELLULAR}
                    )
                ),
            )
            with pytest.raises(nc.NoSatisfyingPath):
                await prohibited.wait_ready(timeout(5))
            assert isinstance(prohibited.state, nc.Waiting)
            prohibited.force_cancel()


async def test_waiting_for_a_missing_interface_becomes_ready_when_it_appears(lab: Lab) -> None:
    async with echo_server(lab) as listener:
        with lab.inside(lab.client):
            conn = nc.Connection(
                nc.Endpoint.host_port(lab.server.ipv4, listener.port),
                nc.TCP(),
                # Retries far apart: only the network event can make it ready in time.
                params(required_interface="c1", retry_delays=(60.0, 60.0)),
            )
            states: list[nc.State] = []
            conn.on_state_update(lambda c, state: states.append(state))
            conn.start()
            try:
                await until(lambda: isinstance(conn.state, nc.Waiting), 5, "Waiting")
                assert isinstance(conn.state, nc.Waiting)
                assert isinstance(conn.state.error, nc.NoSatisfyingPath)
                assert "c1" in str(conn.state.error)
                waiting_path = conn.current_path
                assert waiting_path is not None
                assert waiting_path.status is nc.PathStatus.UNSATISFIED
                assert waiting_path.unsatisfied_reason == "interface c1 does not exist"

                lab.add_second_link(route_metric=200)
                await conn.wait_ready(timeout(5), allow_waiting=True)
                assert conn.local_endpoint is not None
                assert conn.local_endpoint.host == "10.77.3.2"
                ready_path = conn.current_path
                assert ready_path is not None and ready_path.interface is not None
                assert ready_path.interface.name == "c1"
                assert any(isinstance(s, nc.Waiting) for s in states)
                assert isinstance(states[-1], nc.Ready)
            finally:
                await conn.cancel()


async def test_a_blackholed_ipv6_address_loses_the_race_to_ipv4(lab: Lab) -> None:
    stagger = 0.25
    lab.blackhole(lab.server.ipv6)
    async with echo_server(lab) as listener:
        with lab.inside(lab.client):
            conn = nc.Connection(
                lab.endpoint(lab.server, listener.port),
                nc.TCP(),
                params(connection_attempt_delay=stagger),
            )
            async with conn:
                assert conn.remote_endpoint is not None
                assert conn.remote_endpoint.host == lab.server.ipv4
                assert_ipv4_won_one_stagger_later(conn.establishment_report, lab.server, stagger)
                # The losing socket is gone, not left half-open.
                assert syn_sent_sockets() == []
                await conn.send(b"v4")
                assert await conn.receive_exactly(2) == b"v4"


async def test_ipv6_wins_when_it_works(lab: Lab) -> None:
    async with echo_server(lab) as listener:
        with lab.inside(lab.client):
            async with nc.Connection(
                lab.endpoint(lab.server, listener.port), nc.TCP(), params()
            ) as conn:
                assert conn.remote_endpoint is not None
                assert conn.remote_endpoint.family == socket.AF_INET6
                assert [a.outcome for a in conn.establishment_report.attempts] == ["ready"]
                path = conn.current_path
                assert path is not None and path.supports_ipv6 and path.supports_ipv4


async def test_path_monitor_follows_the_client_and_filters_by_type(lab: Lab) -> None:
    lab.configure_interface("c1", type=nc.InterfaceType.CELLULAR)
    with lab.inside(lab.client):
        every: list[nc.Path] = []
        cellular: list[nc.Path] = []
        async with (
            nc.PathMonitor(debounce=0.05).on_update(lambda m, p: every.append(p)),
            nc.PathMonitor(
                required_interface_type=nc.InterfaceType.CELLULAR, debounce=0.05
            ).on_update(lambda m, p: cellular.append(p)) as cellular_monitor,
        ):
            assert every[-1].status is nc.PathStatus.SATISFIED
            assert every[-1].interface is not None and every[-1].interface.name == "c0"
            assert every[-1].supports_ipv4 and every[-1].supports_ipv6
            assert cellular[-1].status is nc.PathStatus.UNSATISFIED

            lab.add_second_link()
            await until(
                lambda: cellular[-1].status is nc.PathStatus.SATISFIED, 5, "a cellular path"
            )
            path = cellular[-1]
            assert path.uses_interface_type(nc.InterfaceType.CELLULAR) and path.is_expensive
            assert [i.name for i in path.available_interfaces] == ["c1"]

            lab.set_link(lab.client, "c1", up=False)
            await until(
                lambda: cellular[-1].status is nc.PathStatus.UNSATISFIED, 5, "cellular down"
            )
            lab.set_link(lab.client, "c0", up=False)
            await until(lambda: every[-1].status is nc.PathStatus.UNSATISFIED, 5, "every link down")
            assert cellular_monitor.current_path is cellular[-1]


async def test_path_monitor_async_iteration(lab: Lab) -> None:
    with lab.inside(lab.client):
        monitor = nc.PathMonitor(debounce=0.05)
        seen: list[nc.PathStatus] = []

        async def consume() -> None:
            async for path in monitor:
                seen.append(path.status)
                if path.status is nc.PathStatus.SATISFIED and len(seen) > 1:
                    return

        task = asyncio.create_task(consume())
        await until(lambda: len(seen) == 1, 5, "the first path")
        lab.set_link(lab.client, up=False)
        await until(lambda: len(seen) == 2, 5, "the path going down")
        lab.set_link(lab.client, up=True)
        await asyncio.wait_for(task, timeout(5))
        monitor.cancel()
        assert seen == [
            nc.PathStatus.SATISFIED,
            nc.PathStatus.UNSATISFIED,
            nc.PathStatus.SATISFIED,
        ]


async def test_paths_follow_the_namespace_they_started_in(lab: Lab) -> None:
    async with echo_server(lab) as listener:
        with lab.inside(lab.client):
            monitor = nc.PathMonitor(debounce=0.05).start()
            conn = nc.Connection(
                nc.Endpoint.host_port(lab.server.ipv4, listener.port), nc.TCP(), params()
            )
            await conn.wait_ready(timeout(5))
        # Back in the test's own namespace: both still describe the client.
        try:
            lab.set_link(lab.client, up=False)
            await until(lambda: not conn.is_viable, 5, "viability false after link down")
            path = monitor.current_path
            assert path is not None and path.status is nc.PathStatus.UNSATISFIED
            lab.set_link(lab.client, up=True)
            await until(lambda: conn.is_viable, 5, "viability true after link up")
            path = monitor.current_path
            assert path is not None and path.interface is not None
            assert path.interface.name == "c0"
        finally:
            monitor.cancel()
            await conn.cancel()
