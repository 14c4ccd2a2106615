"""Shared fixtures: certificates, timeouts, and strict asyncio."""

from __future__ import annotations

import asyncio
import datetime
import gc
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

pytest_plugins = ["quic_helpers"]  # its quic_engine fixture runs QUIC tests on each engine

# One time unit for every bound in the tests; raise it on a slow machine.
TIMEOUT_SCALE = float(os.environ.get("NETCONN_TEST_TIMEOUT_SCALE", "1"))


def timeout(seconds: float) -> float:
    """``seconds`` scaled by ``NETCONN_TEST_TIMEOUT_SCALE``."""
    return seconds * TIMEOUT_SCALE


@pytest.fixture(autouse=True)
async def strict_loop() -> AsyncIterator[None]:
    """Run every test with asyncio debug mode and fail it on anything the loop reports.

    The loop's exception handler catches "Task was destroyed but it is
    pending", "Future exception was never retrieved" and exceptions in
    callbacks; tasks a test leaves running count as leaks. Unclosed
    transports and sockets raise ``ResourceWarning``, an error here.
    """
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = 1.0  # debug mode logs slower callbacks; not an error
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    yield
    # Let aborted transports run their connection_lost callbacks.
    for _ in range(5):
        await asyncio.sleep(0)
    gc.collect()
    current = asyncio.current_task()
    leaked = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in leaked:
        task.cancel()
    loop.set_exception_handler(None)
    problems = [f"{c.get('message')} ({c.get('exception')!r})" for c in reported]
    assert not problems, f"the event loop reported: {problems}"
    assert not leaked, f"tasks left running: {leaked}"


@dataclass(frozen=True)
class Certs:
    """PEM files for a test CA and server certificates it signed."""

    ca: str
    """The trusted test CA."""
    cert: str
    """Chain for localhost, 127.0.0.1 and ::1."""
    key: str
    expired_cert: str
    expired_key: str
    other_host_cert: str
    """Valid, but only for other.example."""
    other_host_key: str
    untrusted_cert: str
    """Valid for localhost, signed by a CA nobody trusts."""
    untrusted_key: str
    client_cert: str
    """A client certificate signed by the test CA."""
    client_key: str


def _write(directory: Path, name: str, blob: trustme.Blob) -> str:
    path = directory / name
    blob.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Certs]:
    d = tmp_path_factory.mktemp("certs")
    ca = trustme.CA()
    other_ca = trustme.CA()
    good = ca.issue_cert("localhost", "127.0.0.1", "::1")
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    expired = ca.issue_cert(
        "localhost", "127.0.0.1", not_before=past, not_after=past + datetime.timedelta(days=1)
    )
    other = ca.issue_cert("other.example")
    untrusted = other_ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("client@netconn.test")
    yield Certs(
        ca=_write(d, "ca.pem", ca.cert_pem),
        cert=_write(d, "cert.pem", good.private_key_and_cert_chain_pem),
        key=_write(d, "key.pem", good.private_key_pem),
        expired_cert=_write(d, "expired.pem", expired.private_key_and_cert_chain_pem),
        expired_key=_write(d, "expired-key.pem", expired.private_key_pem),
        other_host_cert=_write(d, "other.pem", other.private_key_and_cert_chain_pem),
        other_host_key=_write(d, "other-key.pem", other.private_key_pem),
        untrusted_cert=_write(d, "untrusted.pem", untrusted.private_key_and_cert_chain_pem),
        untrusted_key=_write(d, "untrusted-key.pem", untrusted.private_key_pem),
        client_cert=_write(d, "client.pem", client.private_key_and_cert_chain_pem),
        client_key=_write(d, "client-key.pem", client.private_key_pem),
    )
