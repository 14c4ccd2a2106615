"""The error tree and the mapping of foreign exceptions onto it."""

from __future__ import annotations

import errno
import socket
import ssl

import pytest

import netconn as nc
from netconn.errors import certificate_problem, map_os_error, map_ssl_error, mapped


def os_error(code: int) -> OSError:
    return OSError(code, errno.errorcode[code])


@pytest.mark.parametrize(
    ("code", "kind", "retryable"),
    [
        (errno.ECONNREFUSED, nc.ConnectionRefused, True),
        (errno.EHOSTUNREACH, nc.HostUnreachable, True),
        (errno.ENETUNREACH, nc.HostUnreachable, True),
        (errno.ETIMEDOUT, nc.HostUnreachable, True),
        (errno.ECONNRESET, nc.ConnectionClosed, False),
        (errno.EPIPE, nc.ConnectionClosed, False),
        (errno.EACCES, nc.NetconnError, False),
    ],
)
def test_os_errors_map_by_errno(code: int, kind: type[nc.NetconnError], retryable: bool) -> None:
    error = map_os_error(os_error(code), "connect to x")
    assert type(error) is kind
    assert error.retryable is retryable
    assert str(error).startswith("connect to x: ")


def test_dns_errors() -> None:
    temporary = map_os_error(socket.gaierror(socket.EAI_AGAIN, "Temporary failure"))
    assert isinstance(temporary, nc.DNSError) and temporary.retryable
    final = map_os_error(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    assert isinstance(final, nc.DNSError) and not final.retryable
    assert isinstance(final, nc.ConnectError)


def test_timeouts_are_timeout_errors() -> None:
    error = map_os_error(TimeoutError())
    assert isinstance(error, nc.ConnectionTimeout)
    assert isinstance(error, TimeoutError) and error.retryable


def test_ssl_errors() -> None:
    verify = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verify.verify_code = 10
    verify.verify_message = "certificate has expired"
    error = map_os_error(verify)
    assert isinstance(error, nc.CertificateError)
    assert error.reason == "certificate has expired" and error.code == 10
    assert certificate_problem(error) == "expired"
    assert not error.retryable
    other = map_ssl_error(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"))
    assert type(other) is nc.TLSError


@pytest.mark.parametrize(
    ("code", "word"),
    [
        (10, "expired"),
        (9, "not yet valid"),
        (18, "self-signed"),
        (20, "untrusted"),
        (62, "hostname mismatch"),
        (64, "ip address mismatch"),
        (None, "rejected"),
        (99, "rejected"),
    ],
)
def test_certificate_problem_words(code: int | None, word: str) -> None:
    assert certificate_problem(nc.CertificateError("x", code=code)) == word


def test_mapped_keeps_the_cause() -> None:
    original = os_error(errno.ECONNREFUSED)
    with pytest.raises(nc.ConnectionRefused) as caught, mapped("connect"):
        raise original
    assert caught.value.__cause__ is original
    with pytest.raises(nc.Busy), mapped("send"):
        raise nc.Busy("already sending")
    with pytest.raises(ValueError), mapped("send"):
        raise ValueError("not an OSError: not ours to map")


def test_error_data() -> None:
    partial = nc.EndOfStream(b"abc", 10)
    assert isinstance(partial, nc.ConnectionClosed)
    assert (partial.partial, partial.expected) == (b"abc", 10)
    closed = nc.ApplicationClosed(42, "bye", by_peer=False)
    assert (closed.code, closed.reason, closed.by_peer) == (42, "bye", False)
    assert "local application" in str(closed)
    too_large = nc.MessageTooLarge(70000, 65507, "datagram")
    assert (too_large.size, too_large.maximum) == (70000, 65507)
    reset = nc.StreamReset(7)
    assert reset.code == 7 and reset.by_peer
    state = nc.Cancelled()
    invalid = nc.InvalidState("no", state)
    assert invalid.state is state


def test_one_root() -> None:
    for name in nc.__all__:
        value = getattr(nc, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, nc.NetconnError), name
