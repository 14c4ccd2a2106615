"""TLS over any byte stream, on the ``ssl`` module's memory BIOs.

``ssl.SSLObject`` is OpenSSL's record layer without I/O: we feed it what the
inner channel received and send what it produced. Doing the I/O ourselves (not
through asyncio's SSL transport) lets TLS sit on any channel, gives a real
half-close (TLS 1.3 allows reading after our close_notify), and keeps the same
back-pressure as the channel underneath.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from .._turn import Turn
from ..endpoint import Address
from ..errors import (
    Busy,
    CertificateError,
    ConnectionClosed,
    InvalidState,
    NetconnError,
    TLSError,
    map_os_error,
    map_ssl_error,
)
from .base import AttemptContext, ByteChannel, Channel, Layered, Stack, StreamProtocol
from .tcp import TCP

__all__ = ["TLS", "PeerCertificate", "TLSChannel", "TLSSessionCache", "TLSVersion"]

TLSVersion = ssl.TLSVersion
_READ_CHUNK = 256 * 1024
_WRITE_CHUNK = 64 * 1024
_ALERT_CLOSE_TIMEOUT = 2.0  # seconds to deliver a handshake alert before aborting


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """What a verify hook is shown of the peer."""

    der: bytes
    """The peer's leaf certificate, DER encoded."""
    server_name: str | None
    """The name the client asked for (SNI), if any."""
    verified_by_default: bool
    """Whether OpenSSL's chain and host-name checks already passed."""


class TLSSessionCache:
    """Sessions kept for resumption, per server name and port.

    Share one cache between connections to resume their sessions
    (``TLS(session_cache=cache)``). Holds at most ``size`` sessions.
    """

    def __init__(self, size: int = 256) -> None:
        self._sessions: dict[tuple[str, int], ssl.SSLSession] = {}
        self._size = size

    def get(self, key: tuple[str, int]) -> ssl.SSLSession | None:
        return self._sessions.get(key)

    def put(self, key: tuple[str, int], session: ssl.SSLSession) -> None:
        self._sessions.pop(key, None)
        self._sessions[key] = session
        while len(self._sessions) > self._size:
            del self._sessions[next(iter(self._sessions))]

    def __len__(self) -> int:
        return len(self._sessions)


@dataclass(frozen=True, slots=True)
class TLS(StreamProtocol):
    """TLS options. ``TLS()`` runs over ``TCP()``.

    Certificates and host names are verified against the system's trust store
    by default. Turning that off takes ``insecure_skip_verify=True``.
    """

    inner: Stack = field(default_factory=TCP)
    """The byte stream under TLS; default ``TCP()``."""
    alpn: Sequence[str] = ()
    """Application protocols to offer (client) or accept (server), in preference order."""
    server_name: str | None = None
    """Name to send (SNI) and verify; default: the endpoint's host name."""
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    """Lowest TLS version allowed; default TLS 1.2."""
    max_version: ssl.TLSVersion = ssl.TLSVersion.MAXIMUM_SUPPORTED
    """Highest TLS version allowed; default the newest."""
    ca_file: str | None = None
    """PEM file of trusted CAs, replacing the system store; default: the system store."""
    ca_data: str | None = None
    """PEM text of trusted CAs, replacing the system store."""
    certificate: tuple[str, str] | None = None
    """(certificate chain PEM file, private key PEM file): the server's identity,
    or the client's certificate."""
    verify_hook: Callable[[PeerCertificate], bool] | None = None
    """Called with the peer's certificate after the handshake; returning False
    rejects it. With ``insecure_skip_verify`` the hook alone decides."""
    insecure_skip_verify: bool = False
    """Accept any certificate and host name. Only for testing."""
    require_client_certificate: bool = False
    """Server: ask for a client certificate and reject clients without one."""
    session_cache: TLSSessionCache | None = None
    """Client: resume sessions from this cache; default no resumption."""
    ciphers: str | None = None
    """OpenSSL cipher string for TLS 1.2; default OpenSSL's."""
    keylog_file: str | None = None
    """Append key material here (NSS key log format) to decrypt captures."""
    allow_truncation: bool = False
    """Accept a peer that closes TCP without close_notify as a clean end of stream."""

    def __post_init__(self) -> None:
        if isinstance(self.alpn, str | bytes):  # would offer each letter as a protocol
            raise TypeError(f"alpn takes a list of names, e.g. [{self.alpn!r}], not a string")

    @property
    def inner_stack(self) -> Stack:
        return self.inner

    def context(self, *, server_side: bool) -> ssl.SSLContext:
        """Build the ``ssl.SSLContext`` these options describe."""
        purpose = ssl.Purpose.CLIENT_AUTH if server_side else ssl.Purpose.SERVER_AUTH
        if server_side or self.ca_file or self.ca_data:
            ctx = ssl.SSLContext(
                ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT
            )
            if self.ca_file or self.ca_data:
                ctx.load_verify_locations(cafile=self.ca_file, cadata=self.ca_data)
        else:
            ctx = ssl.create_default_context(purpose)
        ctx.minimum_version = self.min_version
        ctx.maximum_version = self.max_version
        if self.certificate is not None:
            ctx.load_cert_chain(*self.certificate)
        if server_side:
            if self.require_client_certificate:
                ctx.verify_mode = ssl.CERT_REQUIRED
                if not (self.ca_file or self.ca_data):
                    ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        elif self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.alpn:
            ctx.set_alpn_protocols(list(self.alpn))
        if self.ciphers:
            ctx.set_ciphers(self.ciphers)
        if self.keylog_file:
            ctx.keylog_filename = self.keylog_file
        return ctx

    def check_listener_options(self) -> None:
        """A server needs a certificate, and its files must load."""
        if self.certificate is None:
            raise TLSError("a TLS listener needs a certificate: TLS(certificate=(chain, key))")
        try:
            _cached_context(self, server_side=True)
        except ssl.SSLError as exc:
            raise map_ssl_error(exc) from exc
        except OSError as exc:
            raise map_os_error(exc, "load the TLS certificate") from exc

    async def open_channel(self, ctx: AttemptContext, address: Address) -> TLSChannel:
        inner = await self.inner.open_channel(ctx, address)
        if not _is_byte_channel(inner):
            raise TypeError("TLS needs a byte stream underneath")
        server_name = self.server_name
        if server_name is None:
            # ssl verifies an IP literal against the certificate's IP addresses
            # (and sends no SNI for it); check_hostname needs it either way.
            host = ctx.endpoint.host if ctx.endpoint is not None else address.host
            server_name = host.split("%", 1)[0]
        key = (server_name, address.port)
        session = self.session_cache.get(key) if self.session_cache else None
        channel = TLSChannel(
            self,
            inner,
            _cached_context(self, server_side=False),
            server_side=False,
            server_name=server_name,
            session=session,
            ctx=ctx,
        )
        try:
            await channel.handshake()
        except NetconnError:
            await _close_after_alert(inner)
            raise
        except BaseException:
            inner.abort()
            raise
        cache = self.session_cache
        if cache is not None:  # not truthiness: an empty cache has len() 0
            channel.on_session(lambda session: cache.put(key, session))
        return channel

    async def accept_channel(self, ctx: AttemptContext, inner: Channel) -> TLSChannel:
        inner = await self.inner.accept_channel(ctx, inner)
        if not _is_byte_channel(inner):
            raise TypeError("TLS needs a byte stream underneath")
        context = _cached_context(self, server_side=True)
        channel = TLSChannel(self, inner, context, server_side=True, ctx=ctx)
        try:
            await channel.handshake()
        except NetconnError:
            await _close_after_alert(inner)
            raise
        except BaseException:
            inner.abort()
            raise
        return channel


async def _close_after_alert(inner: ByteChannel) -> None:
    """Close gracefully after a failed handshake: an abort (RST) could make the
    peer's kernel drop our alert, and the peer would not learn why."""
    try:
        async with asyncio.timeout(_ALERT_CLOSE_TIMEOUT):
            await inner.close()
    except (NetconnError, TimeoutError):
        inner.abort()
    except asyncio.CancelledError:
        inner.abort()
        raise


_contexts: dict[tuple[int, bool], tuple[TLS, ssl.SSLContext]] = {}
_CONTEXTS = 64


def _cached_context(options: TLS, *, server_side: bool) -> ssl.SSLContext:
    # Loading a trust store costs milliseconds: build each options object's
    # context once (keyed by identity; the stored reference keeps it alive).
    # The least recently used goes first: the options in use keep theirs, and
    # with it the sessions their cache holds (a session resumes only with the
    # context that made it).
    key = (id(options), server_side)
    hit = _contexts.pop(key, None)
    if hit is not None and hit[0] is options:
        _contexts[key] = hit  # the most recent, last in order
        return hit[1]
    ctx = options.context(server_side=server_side)
    while len(_contexts) >= _CONTEXTS:
        del _contexts[next(iter(_contexts))]
    _contexts[key] = (options, ctx)
    return ctx


def _is_byte_channel(channel: Channel) -> TypeGuard[ByteChannel]:
    return hasattr(channel, "receive") and hasattr(channel, "send")


class TLSChannel(Layered[ByteChannel]):
    """TLS records over an inner byte channel."""

    def __init__(
        self,
        options: TLS,
        inner: ByteChannel,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_name: str | None = None,
        session: ssl.SSLSession | None = None,
        ctx: AttemptContext | None = None,
    ) -> None:
        self._ctx = ctx
        self._options = options
        self._inner = inner
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._server_side = server_side
        hostname = None if server_side else server_name
        try:
            self._ssl = context.wrap_bio(
                self._incoming, self._outgoing, server_side, hostname, session=session
            )
        except ValueError:
            if session is None:
                raise
            # A session made with a context that has since been replaced
            # (more options objects than _cached_context keeps): no resumption.
            self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side, hostname)
        self._server_name = server_name
        self._plain = bytearray()
        self._eof = False
        self._write_closed = False
        self._closing = False
        # One flush at a time (see _flush); the others wait for their turn, in order.
        self._flush_turn = Turn()
        self._receiving = False
        self._sending = False
        self._session_callback: Callable[[ssl.SSLSession], None] | None = None

    # Properties a connection reports

    @property
    def negotiated_alpn(self) -> str | None:
        """The application protocol both sides agreed on."""
        return self._ssl.selected_alpn_protocol()

    @property
    def version(self) -> str | None:
        """The negotiated TLS version, e.g. ``"TLSv1.3"``."""
        return self._ssl.version()

    @property
    def cipher(self) -> str | None:
        """The negotiated cipher suite."""
        cipher = self._ssl.cipher()
        return None if cipher is None else cipher[0]

    @property
    def session_reused(self) -> bool:
        """Whether the handshake resumed an earlier session."""
        return self._ssl.session_reused

    @property
    def peer_certificate(self) -> bytes | None:
        """The peer's certificate, DER encoded."""
        return self._ssl.getpeercert(binary_form=True)

    @property
    def buffered_bytes(self) -> tuple[int, int]:
        """Bytes held in this layer: (records not yet sent, received and not read)."""
        return self._outgoing.pending, len(self._plain) + self._incoming.pending

    def on_session(self, callback: Callable[[ssl.SSLSession], None]) -> None:
        """Call ``callback`` with the session once the server has sent its ticket."""
        self._session_callback = callback
        self._offer_session()

    def _offer_session(self) -> None:
        callback = self._session_callback
        if callback is None:
            return  # reading ssl.session costs ~100 us: only when someone wants it
        session = self._ssl.session
        if session is not None:
            if self._ssl.version() == "TLSv1.3" and not session.has_ticket:
                return  # the ticket has not arrived yet
            callback(session)
            self._session_callback = None

    # Handshake

    async def handshake(self) -> None:
        """Run the handshake to its end; raise :class:`TLSError` or :class:`CertificateError`."""
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                await self._pull("during the TLS handshake")
            except ssl.SSLError as exc:
                await self._flush_quietly()
                raise map_ssl_error(exc) from exc
        await self._flush()
        self._check_hook()

    def _check_hook(self) -> None:
        hook = self._options.verify_hook
        if hook is None or self._server_side:
            return
        der = self._ssl.getpeercert(binary_form=True) or b""
        info = PeerCertificate(der, self._server_name, not self._options.insecure_skip_verify)
        try:
            accepted = hook(info)
        except Exception as exc:
            raise CertificateError(f"verify hook raised {exc!r}") from exc
        if not accepted:
            raise CertificateError("rejected by the verify hook")

    async def _pull(self, when: str) -> None:
        data = await self._inner.receive(1, _READ_CHUNK)
        if not data:
            raise ConnectionClosed(f"the peer closed the connection {when}")
        self._incoming.write(data)

    async def _flush(self) -> None:
        # One writer at a time: a receive answering the peer, a send and
        # close() all flush, and the records must leave in the order made.
        turn = self._flush_turn
        if turn.held:
            await turn.wait()
        elif not self._outgoing.pending:
            return  # nothing to send and no flush in flight: most receives
        turn.held = True
        try:
            if self._outgoing.pending:
                await self._inner.send(self._outgoing.read(), False)
        finally:
            turn.release()

    async def _flush_quietly(self) -> None:
        # Send our alert if we can; the handshake failed either way.
        with contextlib.suppress(NetconnError):
            await self._flush()

    # ByteChannel

    @property
    def receive_complete(self) -> bool:
        return self._eof and not self._plain

    async def send(self, data: bytes | bytearray | memoryview, is_complete: bool) -> None:
        if self._sending:
            raise Busy("another task is already sending on this connection")
        if self._write_closed:
            raise InvalidState("sending after is_complete=True")
        self._sending = True
        try:
            if type(data) is bytes and len(data) <= _WRITE_CHUNK:  # no view, no slices
                if self._closing:
                    raise ConnectionClosed("the connection is closed")
                try:
                    self._ssl.write(data)
                except ssl.SSLError as exc:
                    raise self._fatal(exc) from exc
                turn = self._flush_turn
                if turn.held or not self._outgoing.pending:
                    await self._flush()
                else:  # _flush() uncontended, without its coroutine
                    turn.held = True
                    try:
                        await self._inner.send(self._outgoing.read(), False)
                    finally:
                        turn.release()
            else:
                view = memoryview(data).cast("B")
                for offset in range(0, len(view), _WRITE_CHUNK):
                    if self._closing:
                        raise ConnectionClosed("the connection is closed")
                    try:
                        self._ssl.write(view[offset : offset + _WRITE_CHUNK])
                    except ssl.SSLError as exc:
                        raise self._fatal(exc) from exc
                    await self._flush()
            if is_complete:
                await self._send_close_notify()
        finally:
            self._sending = False

    async def _send_close_notify(self) -> None:
        self._write_closed = True
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # the peer's close_notify comes later, if at all
        except ssl.SSLError as exc:
            raise map_ssl_error(exc) from exc
        await self._flush()

    async def receive(self, at_least: int, at_most: int) -> bytes:
        if self._receiving:
            raise Busy("another task is already receiving on this connection")
        self._receiving = True
        try:
            while len(self._plain) < at_least and not self._eof:
                if not self._decrypt(at_most):
                    if self._flush_turn.held or self._outgoing.pending:
                        await self._flush()  # e.g. a KeyUpdate answer
                    # More ciphertext, read here rather than in a coroutine of its own.
                    data = await self._inner.receive(1, _READ_CHUNK)
                    if data:
                        self._incoming.write(data)
                    else:
                        self._end_of_ciphertext()
            if self._flush_turn.held or self._outgoing.pending:
                await self._flush()
        finally:
            self._receiving = False
        plain = self._plain
        if len(plain) <= at_most:
            data = bytes(plain)
            plain.clear()
        else:
            data = bytes(memoryview(plain)[:at_most])
            del plain[:at_most]
        return data

    def _decrypt(self, at_most: int) -> bool:
        """Decrypt what the BIO holds; False when more ciphertext is needed."""
        progressed = False
        plain, incoming, sslobj = self._plain, self._incoming, self._ssl
        while len(plain) < at_most:
            if not incoming.pending and not sslobj.pending():
                # Nothing buffered to decrypt: a read would only raise
                # SSLWantReadError, and raising costs more than asking.
                if self._session_callback is not None:
                    self._offer_session()
                return progressed
            try:
                chunk = sslobj.read(at_most - len(plain))
            except ssl.SSLWantReadError:
                self._offer_session()
                return progressed
            except ssl.SSLZeroReturnError:
                self._eof = True
                return True
            except ssl.SSLError as exc:
                raise self._fatal(exc) from exc
            if not chunk:
                self._eof = True
                return True
            plain += chunk
            progressed = True
        if self._session_callback is not None:
            self._offer_session()  # the ticket may have come with this data
        return True

    def _fatal(self, exc: ssl.SSLError) -> NetconnError:
        # A TLS alert or a bad record ends the connection, not just this call.
        error = map_ssl_error(exc)
        if self._ctx is not None:
            self._ctx.on_lost(error)
        return error

    def _end_of_ciphertext(self) -> None:
        """The inner channel ended before a close_notify."""
        if self._options.allow_truncation:
            self._eof = True
            return
        raise ConnectionClosed(
            "the peer closed the TCP connection without a TLS close_notify "
            "(the data may be truncated)"
        )

    async def close(self) -> None:
        self._closing = True
        try:
            if not self._write_closed:
                await asyncio.wait_for(self._send_close_notify(), 5.0)
        except (NetconnError, TimeoutError):
            pass
        await self._inner.close()

    def abort(self) -> None:
        self._inner.abort()

    def tls_info(self) -> dict[str, Any]:
        """Version, cipher, ALPN and resumption, for reports."""
        return {
            "version": self.version,
            "cipher": self.cipher,
            "alpn": self.negotiated_alpn,
            "session_reused": self.session_reused,
        }
