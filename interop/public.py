"""Public QUIC endpoints run by the major implementations, for users with the internet.

The runner contacts these only when asked (``python -m interop --public``);
the tests never do. Entries reflect what each operator has advertised for
interop testing; endpoints come and go, so a failure here says as much about
the server's current state as about netconn.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PUBLIC_SERVERS", "PublicServer", "public_server"]

_COMMON = frozenset({"handshake", "chacha20", "resumption", "zerortt", "keyupdate", "http3"})


@dataclass(frozen=True)
class PublicServer:
    """One public endpoint."""

    name: str
    """The implementation behind it."""
    host: str
    """Its DNS name."""
    port: int = 443
    """UDP port for HTTP/3 (and hq-interop where offered); default 443."""
    retry_port: int | None = None
    """A port that always answers with Retry, if the operator runs one."""
    path: str = "/"
    """A path that exists."""
    alpn: tuple[str, ...] = ("h3",)
    """Application protocols it accepts."""
    cases: frozenset[str] = _COMMON
    """The runner's cases it can take part in (as a server)."""


PUBLIC_SERVERS: tuple[PublicServer, ...] = (
    PublicServer(
        "aioquic",
        "quic.aiortc.org",
        443,
        4434,
        alpn=("h3", "hq-interop"),
        cases=_COMMON | {"retry"},
    ),
    PublicServer(
        "picoquic",
        "test.privateoctopus.com",
        4433,
        4434,
        alpn=("h3", "hq-interop"),
        cases=_COMMON | {"retry", "v2"},
    ),
    PublicServer("quic-go", "quic.seemann.io", 443, 443, cases=_COMMON | {"retry"}),
    PublicServer("quiche", "quic.tech", 8443, 8444, cases=_COMMON | {"retry"}),
    PublicServer("ngtcp2", "nghttp2.org", 4433, 4434, cases=_COMMON | {"retry"}),
    PublicServer("lsquic", "http3-test.litespeedtech.com", 4433, 4434, cases=_COMMON | {"retry"}),
    PublicServer("mvfst", "fb.mvfst.net", 443),
    PublicServer("nginx", "cloudflare-quic.com", 443),
    PublicServer("google", "quic.rocks", 4433),
)
"""The list ``--public`` selects from."""


def public_server(name: str) -> PublicServer:
    """The entry named ``name``; raises ``KeyError`` listing the known names."""
    for server in PUBLIC_SERVERS:
        if server.name == name:
            return server
    raise KeyError(f"no public server {name!r}; known: {', '.join(s.name for s in PUBLIC_SERVERS)}")
