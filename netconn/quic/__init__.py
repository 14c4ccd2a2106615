"""QUIC for netconn, on aioquic's sans-I/O engine (or qh3's, with ``QUIC(engine="qh3")``).

Usage (the public names live in :mod:`netconn`)::

    import netconn as nc

    quic = nc.QUIC(alpn=["echo"], server_name="localhost", ca_file="ca.pem")
    async with nc.Connection(nc.Endpoint.host_port("127.0.0.1", 4433), quic) as conn:
        stream = await conn.open_stream()                 # bidirectional by default
        await stream.send(b"ping", is_complete=True)      # FIN after the bytes
        reply = await stream.receive(at_least=1, at_most=65536)
        uni = await conn.open_stream("unidirectional")
        await conn.datagrams.send(b"tick")                # needs max_datagram_frame_size
        conn.negotiated_alpn, conn.remote_max_streams_bidirectional

    server = nc.QUIC(alpn=["echo"], certificate=("cert.pem", "key.pem"))
    async with nc.Listener(server, host="127.0.0.1", port=4433) as listener:
        async for conn in listener:                     # Connection[QUIC], ready
            async for stream in conn.inbound_streams():  # peer-opened streams
                data = await stream.receive()
                await stream.send(data, is_complete=True)

API of ``Connection[QUIC]`` (self-typed, so mypy rejects them on other stacks):

- ``await conn.open_stream(directionality="bidirectional", *, wait=True) -> QUICStream``:
  waits for the peer's stream credit (MAX_STREAMS) unless ``wait=False`` (then
  :class:`~netconn.Busy`). The peer learns of a stream from its first frame.
- ``conn.inbound_streams() -> AsyncIterator[QUICStream]`` or
  ``conn.handle_inbound_streams(handler)``: peer-opened streams of both
  kinds. Only one of them, once per connection (:class:`~netconn.InvalidState`
  otherwise).
- ``conn.datagrams``: :class:`QUICDatagrams` with ``send`` / ``receive`` /
  ``maximum_size``; :class:`~netconn.MessageTooLarge` over the size,
  :class:`DatagramsNotEnabled` when a side did not enable them.
- Properties: ``negotiated_alpn``, ``remote_idle_timeout``,
  ``remote_max_streams_bidirectional`` / ``_unidirectional``,
  ``usable_datagram_frame_size``, ``keepalive`` (settable, seconds or
  ``None``), ``application_error`` (settable ``(code, reason)`` sent by
  ``cancel()``), ``early_data_accepted``, ``session_resumed``,
  ``negotiated_version``, ``is_viable``, ``current_path``.
- ``await conn.close(code, reason)``: flush, then application close; the
  peer's connection fails with :class:`~netconn.ApplicationClosed` carrying
  both. A peer's close arrives the same way in ``Failed(error)``; an idle
  timeout as ``Failed(ConnectionTimeout)``.
- ``await conn.wait_handshake()`` (after an early, 0-RTT start),
  ``conn.request_key_update()``, ``conn.quic_stats()`` (RTT, congestion
  window, queued bytes, open streams, Retry, key phase, 0-RTT resends).

:class:`QUICStream`: ``send(data, *, is_complete=False, receipt=False)`` (a
:class:`DeliveryReceipt` to await with ``receipt=True``), ``receive(at_least,
at_most)``, ``receive_exactly(n)``, ``receive_complete``, ``reset(code)``,
``stop_sending(code)``, ``close()`` (FIN), ``state`` / ``send_state`` /
``receive_state``, ``priority`` (higher sends first), ``queued_bytes``,
``buffered_bytes``, ``id``, ``directionality``, ``is_local``. A peer's
RESET_STREAM or STOP_SENDING arrives as :class:`~netconn.StreamReset` with
``code``. Cancelling a waiting ``receive`` loses no bytes.

Resumption and 0-RTT: give the client ``QUIC(ticket_store=nc.MemoryTicketStore())``
(or any :class:`~netconn.QUICTicketStore`); with ``early_data=True`` and a
ticket, the connection is ready before the handshake ends and early stream
data goes as 0-RTT. If the server answers with Retry or rejects 0-RTT, that
data is sent again in 1-RTT. Listeners keep and accept tickets on their own;
``QUIC(retry=True)`` makes them validate addresses first.

How it is built: :mod:`._udp` owns the socket (batched reads with GRO,
GSO writes, 4 MiB buffers), :mod:`._engine` adjusts aioquic's
``QuicConnection`` (receive credit that follows the reader, a bounded stream
scan per packet, GSO-sized pacing bursts), :mod:`._channel` is the glue
(events, streams, datagrams, one timer), :mod:`._client` and :mod:`._server`
set connections up (connection-ID routing, Retry, version negotiation).
:mod:`._aioquic` and :mod:`._qh3` answer the channel's questions of its
engine, one for each implementation.
"""

from ._channel import QUICChannel
from ._stream import (
    DatagramsNotEnabled,
    DeliveryReceipt,
    Directionality,
    QUICDatagrams,
    QUICStream,
)

__all__ = [
    "DatagramsNotEnabled",
    "DeliveryReceipt",
    "Directionality",
    "QUICChannel",
    "QUICDatagrams",
    "QUICStream",
]
