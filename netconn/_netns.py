"""Network namespaces: which one a thread or a socket is in, and entering one.

A thread can be moved by ``setns(2)`` (see :meth:`netconn.lab.Lab.inside`),
and a socket keeps the namespace it was made in.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import socket
import threading
from collections.abc import Iterator

_CLONE_NEWNET = 0x40000000
_SIOCGSKNS = 0x894C  # linux/sockios.h: an fd of the socket's network namespace

_libc = ctypes.CDLL(None, use_errno=True)


class _ThreadNamespace(threading.local):
    """Where this thread's network namespace link is: resolving ``thread-self`` costs more."""

    path = ""


_thread_namespace = _ThreadNamespace()


def _forget_namespace_link() -> None:
    _thread_namespace.path = ""  # a forked child: another pid, another link


os.register_at_fork(after_in_child=_forget_namespace_link)


def thread_netns() -> str:
    """This thread's network namespace, as ``net:[inode]`` ("" if unknown)."""
    cached = _thread_namespace
    if not cached.path:  # first use in this thread, or a forked child
        cached.path = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"
    try:
        return os.readlink(cached.path)
    except OSError:
        return ""


def socket_netns(sock: socket.socket) -> tuple[str, int] | None:
    """The namespace ``sock`` lives in: its name as :func:`thread_netns` spells
    it and an open fd of it (the caller closes it); ``None`` if the kernel cannot say."""
    try:
        fd = fcntl.ioctl(sock.fileno(), _SIOCGSKNS)
    except OSError:
        return None
    try:
        return f"net:[{os.fstat(fd).st_ino}]", fd
    except OSError:
        os.close(fd)
        return None


def setns(fd: int) -> None:
    """Move the calling thread into the network namespace ``fd`` refers to."""
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        error = ctypes.get_errno()
        raise OSError(error, os.strerror(error))


@contextlib.contextmanager
def entered(fd: int) -> Iterator[None]:
    """Run the block in the namespace ``fd`` refers to; the thread's own is restored after."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
        try:
            yield
        finally:
            setns(own)
    finally:
        os.close(own)
