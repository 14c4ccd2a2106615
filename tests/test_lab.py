"""The namespace lab itself: isolation, teardown, and each fault it injects."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest
from conftest import timeout

from netconn.lab import Lab, LabError
from netconn.lab.fixtures import lab_fixture


@pytest.fixture
def lab() -> Iterator[Lab]:
    yield from lab_fixture()


def namespaces() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def udp_pair(lab: Lab) -> tuple[socket.socket, socket.socket]:
    """A client socket and a server socket bound to the server's IPv4 address."""
    with lab.inside(lab.server):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind((lab.server.ipv4, 0))
    with lab.inside(lab.client):
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.settimeout(timeout(2))
    return client, server


def test_teardown_removes_everything_even_after_an_error() -> None:
    if (reason := Lab.unavailable_reason()) is not None:
        pytest.skip(reason)
    built = Lab()
    with pytest.raises(RuntimeError, match="boom"), built:
        assert {built.client.netns, built.router.netns, built.server.netns} <= namespaces()
        process = built.spawn(built.server, ["sleep", "60"])
        raise RuntimeError("boom")
    assert not {built.client.netns, built.router.netns, built.server.netns} & namespaces()
    assert process.poll() is not None  # the spawned process was killed


def test_two_labs_side_by_side_do_not_collide(lab: Lab) -> None:
    with Lab() as other:
        assert other.id != lab.id
        for each in (lab, other):
            client, server = udp_pair(each)
            with client, server:
                client.sendto(b"hello", (each.server.ipv4, server.getsockname()[1]))
                data, source = server.recvfrom(100)
                assert data == b"hello" and source[0] == each.client.ipv4


def test_inside_restores_the_namespace_after_an_error(lab: Lab) -> None:
    before = os.stat("/proc/thread-self/ns/net").st_ino
    with pytest.raises(ValueError), lab.inside(lab.client):
        assert os.stat("/proc/thread-self/ns/net").st_ino != before
        raise ValueError
    assert os.stat("/proc/thread-self/ns/net").st_ino == before


def test_run_and_addresses(lab: Lab) -> None:
    shown = lab.run(lab.server, "ip", "-o", "addr", "show", "dev", "s0").stdout
    assert "10.77.2.2/24" in shown and "fd77:2::2/64" in shown
    with pytest.raises(LabError, match="no-such-device"):
        lab.run(lab.server, "ip", "link", "show", "no-such-device")


def test_ipv6_works_end_to_end(lab: Lab) -> None:
    with lab.inside(lab.server):
        server = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        server.bind((lab.server.ipv6, 0))
    with lab.inside(lab.client):
        client = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    server.settimeout(timeout(2))
    with client, server:
        client.sendto(b"six", (lab.server.ipv6, server.getsockname()[1]))
        data, source = server.recvfrom(100)
        assert data == b"six" and source[0] == lab.client.ipv6


def test_blackhole_drops_until_removed(lab: Lab) -> None:
    client, server = udp_pair(lab)
    port = server.getsockname()[1]
    with client, server:
        rule = lab.blackhole(lab.server.ipv4)
        client.sendto(b"dropped", (lab.server.ipv4, port))
        server.settimeout(0.3)
        with pytest.raises(TimeoutError):
            server.recvfrom(100)
        lab.remove(rule)
        server.settimeout(timeout(2))
        client.sendto(b"through", (lab.server.ipv4, port))
        assert server.recvfrom(100)[0] == b"through"


def test_random_loss_drops_some_and_passes_some(lab: Lab) -> None:
    client, server = udp_pair(lab)
    port = server.getsockname()[1]
    lab.loss(500)  # 50 %
    received = 0
    with client, server:
        for i in range(200):
            client.sendto(i.to_bytes(2, "big"), (lab.server.ipv4, port))
        server.settimeout(0.5)
        try:
            while True:
                server.recvfrom(100)
                received += 1
        except TimeoutError:
            pass
    # 200 tries at 50 %: fewer than 40 or more than 160 is a 1e-17 event.
    assert 40 < received < 160


def test_rate_limit_slows_a_transfer(lab: Lab) -> None:
    lab.rate_limit(lab.router, "r1", "2mbit", burst="16kb", latency="200ms")
    shown = lab.run(lab.router, "tc", "qdisc", "show", "dev", "r1").stdout
    assert "tbf" in shown and "2Mbit" in shown
    with lab.inside(lab.server):
        listening = socket.create_server((lab.server.ipv4, 0))
    port = listening.getsockname()[1]
    with lab.inside(lab.client):
        sender = socket.create_connection((lab.server.ipv4, port), timeout=timeout(10))
    receiver, _ = listening.accept()
    payload = b"x" * 250_000  # 2 Mbit at 2 Mbit/s: about one second
    with listening, sender, receiver:
        receiver.settimeout(timeout(20))
        start = time.monotonic()
        sender.sendall(payload)
        sender.shutdown(socket.SHUT_WR)
        got = 0
        while chunk := receiver.recv(65536):
            got += len(chunk)
        elapsed = time.monotonic() - start
    assert got == len(payload)
    # The shaper cannot let it through faster than its rate (minus one burst).
    assert elapsed >= (len(payload) - 16_000) * 8 / 2_000_000 * 0.9
    lab.clear_rate_limit(lab.router, "r1")


def test_nat_rebinding_changes_the_source_port_and_address(lab: Lab) -> None:
    lab.enable_nat()
    client, server = udp_pair(lab)
    port = server.getsockname()[1]
    with client, server:
        client.sendto(b"one", (lab.server.ipv4, port))
        _, first = server.recvfrom(100)
        assert first[0] == lab.router.interfaces["r1"][0]  # translated
        client.sendto(b"two", (lab.server.ipv4, port))
        assert server.recvfrom(100)[1] == first  # the mapping holds

        lab.rebind()
        client.sendto(b"three", (lab.server.ipv4, port))
        _, second = server.recvfrom(100)
        assert second[0] == first[0] and second[1] != first[1]

        lab.rebind(new_address="10.77.2.3")
        client.sendto(b"four", (lab.server.ipv4, port))
        _, third = server.recvfrom(100)
        assert third[0] == "10.77.2.3"


def test_rebind_needs_nat(lab: Lab) -> None:
    with pytest.raises(LabError, match="enable_nat"):
        lab.rebind()


def test_routes_come_back_after_a_link_flap(lab: Lab) -> None:
    lab.add_route(lab.client, "10.77.9.0/24", via="10.77.1.1", dev="c0", metric=7)

    def routes() -> str:
        return lab.run(lab.client, "ip", "-4", "route").stdout

    assert "10.77.9.0/24 via 10.77.1.1 dev c0 metric 7" in routes()
    lab.set_link(lab.client, up=False)
    assert "10.77.9.0/24" not in routes()  # the kernel drops them with the link
    lab.set_link(lab.client, up=True)
    assert "10.77.9.0/24 via 10.77.1.1 dev c0 metric 7" in routes()
    assert "default via 10.77.1.1 dev c0" in routes()
    lab.delete_route(lab.client, "10.77.9.0/24", dev="c0", metric=7)
    assert "10.77.9.0/24" not in routes()
