"""A QUIC interop runner for netconn, modelled on the QUIC Interop Runner's test cases.

``python -m interop`` (or ``netconn-interop``) runs each case with netconn as
client against peer servers and as server against peer clients, on loopback,
and writes a results matrix as Markdown, JSON and HTML. Peers: netconn
itself, picoquic (``picoquicdemo``) and quic-go (inside Caddy); see
:mod:`interop.peers`. Each case passes only on evidence: file hashes, the
connection's own record, qlog events, or the peer's own report.
"""

from .results import Matrix, Outcome, Result

__all__ = ["Matrix", "Outcome", "Result"]
