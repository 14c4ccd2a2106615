"""A private network namespace for tests that must drop packets without touching the host."""

from __future__ import annotations

import ctypes
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["blackhole_tcp_port", "inside", "namespace"]

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _run(*command: str, stdin: str | None = None) -> None:
    subprocess.run(command, input=stdin, text=True, check=True, capture_output=True, timeout=30)


@contextmanager
def namespace() -> Iterator[str]:
    """A new network namespace with only ``lo`` up; deleted afterwards. Needs root, ip, nft."""
    name = f"netconn-test-{os.getpid()}"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        _run("ip", "netns", "delete", name)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


@contextmanager
def inside(name: str) -> Iterator[None]:
    """Run this thread (the event loop's) in namespace ``name``; sockets made here stay in it."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _setns(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def blackhole_tcp_port(name: str, port: int) -> None:
    """Drop every TCP segment to or from ``port`` as it arrives (ingress, not OUTPUT)."""
    rules = f"""
    table inet netconn_blackhole {{
        chain input {{
            type filter hook input priority 0;
            tcp dport {port} drop
            tcp sport {port} drop
        }}
    }}
    """
    _run("ip", "netns", "exec", name, "nft", "-f", "-", stdin=rules)
