"""Happy Eyeballs version 2 (RFC 8305): race a name's addresses, keep the first that works.

How this works: :func:`race` asks for the IPv6 (AAAA) and IPv4 (A) addresses
at once (section 3). Attempts start as soon as IPv6 answers, or
``resolution_delay`` after IPv4 answered first. Addresses are taken
alternately by family, IPv6 first (section 4), and a new attempt starts every
``connection_attempt_delay`` seconds, or at once when the last one failed
(section 5). Late answers join the queue. The first attempt whose channel is
ready wins; the others are cancelled and their channels aborted (section 6).

The race only calls ``stack.open_channel(ctx, address)``, so every stack
races the same way: TCP, TLS over TCP, WebSocket, and UDP-based stacks such
as QUIC, whose attempt counts as ready once its handshake completed.

Every attempt, the losers too, is recorded in the connection's
:class:`~netconn.EstablishmentReport`.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from ._deadline import Deadlines
from .endpoint import Address, Endpoint
from .errors import ConnectError, ConnectionTimeout, NetconnError, map_os_error
from .parameters import Parameters
from .stacks.base import AttemptContext, Channel, Stack

__all__ = ["Attempt", "EstablishmentReport", "Race", "interleave", "pick_error"]


Outcome: TypeAlias = Literal["ready", "failed", "cancelled", "running"]


@dataclass(slots=True)
class Attempt:
    """One establishment attempt to one address."""

    address: Address
    """Where the attempt went."""
    started_after: float
    """Seconds after the connection started."""
    duration: float = 0.0
    """Seconds the attempt took."""
    outcome: Outcome = "running"
    """How it ended; ``cancelled`` for an attempt that lost the race or was skipped."""
    error: NetconnError | None = None
    """Why it failed."""


@dataclass(slots=True)
class EstablishmentReport:
    """What establishing the connection took: resolution and every attempt."""

    resolution_duration: float = 0.0
    """Seconds spent resolving the endpoint (in the last round)."""
    resolved: list[Address] = field(default_factory=list)
    """The addresses the endpoint resolved to (in the last round), in answer order."""
    attempts: list[Attempt] = field(default_factory=list)
    """Every attempt in every round, the losers too, in start order."""
    duration: float = 0.0
    """Seconds from start to ready."""

    def describe(self) -> str:
        """Several lines for people: one per attempt, with offsets in milliseconds."""
        lines = [f"resolved {len(self.resolved)} in {self.resolution_duration * 1000:.1f} ms"]
        for a in self.attempts:
            error = f" ({a.error})" if a.error is not None else ""
            lines.append(
                f"  +{a.started_after * 1000:7.1f} ms {a.address!s:<45} {a.outcome:<9}"
                f" {a.duration * 1000:7.1f} ms{error}"
            )
        lines.append(f"ready after {self.duration * 1000:.1f} ms")
        return "\n".join(lines)


def interleave(addresses: list[Address]) -> list[Address]:
    """``addresses`` alternately by family, starting with the family of the first (RFC 8305 §4).

    Keeps the order within each family.
    """
    if not addresses:
        return []
    first = addresses[0].family
    same = deque(a for a in addresses if a.family == first)
    other = deque(a for a in addresses if a.family != first)
    out: list[Address] = []
    while same or other:
        if same:
            out.append(same.popleft())
        if other:
            out.append(other.popleft())
    return out


def pick_error(errors: list[NetconnError]) -> NetconnError:
    """The error that best explains why every attempt failed (a final one first)."""
    for error in errors:
        if not error.retryable:
            return error
    return errors[-1] if errors else ConnectError("no address to try")


class _Queue:
    """Addresses not yet tried, taken alternately by family, IPv6 first."""

    def __init__(self) -> None:
        self._by_family: dict[int, deque[Address]] = {
            socket.AF_INET6: deque(),
            socket.AF_INET: deque(),
        }
        self._last: int | None = None
        self.seen: list[Address] = []

    def add(self, addresses: list[Address]) -> None:
        for address in addresses:
            if address not in self.seen:
                self.seen.append(address)
                self._by_family[address.family].append(address)

    def __bool__(self) -> bool:
        return any(self._by_family.values())

    def pop(self) -> Address:
        order = (socket.AF_INET, socket.AF_INET6)
        if self._last != socket.AF_INET6:
            order = (socket.AF_INET6, socket.AF_INET)
        for family in order:
            if self._by_family[family]:
                self._last = family
                return self._by_family[family].popleft()
        raise IndexError("no address left")

    def rotate(self, count: int) -> None:
        """Move the next ``count`` addresses to the back (to start further down the list)."""
        for _ in range(count % max(1, len(self.seen))):
            if not self:
                return
            address = self.pop()
            self._by_family[address.family].append(address)


class Race:
    """One round of Happy Eyeballs for one connection.

    ``make_context()`` builds the :class:`AttemptContext` of each attempt (the
    connection hooks its loss and viability callbacks there). Each attempt
    is appended to ``report.attempts`` when it starts and completed when it
    ends. :meth:`run` returns the winner; :meth:`skip` abandons the attempts
    in flight and starts the next address at once.
    """

    def __init__(
        self,
        stack: Stack,
        endpoint: Endpoint,
        parameters: Parameters,
        report: EstablishmentReport,
        make_context: Callable[[], AttemptContext],
        *,
        started: float,
        skip_first: int = 0,
        loop: asyncio.AbstractEventLoop | None = None,
        task: asyncio.Task[Any] | None = None,
    ) -> None:
        # Kept: asking asyncio for the loop costs a getpid() on Python 3.11.
        self._loop = loop if loop is not None else asyncio.get_running_loop()
        # The task that runs the race, when the caller knows it (no current_task() call).
        self._caller = task
        self._stack = stack
        self._endpoint = endpoint
        self._parameters = parameters
        self._report = report
        self._make_context = make_context
        self._started = started
        self._skip_first = skip_first
        self._skipped = False
        # Woken by skip(): a plain future, made only while the race sleeps.
        self._skip_waiter: asyncio.Future[None] | None = None
        # The task running the only attempt in place (see _only), while it does.
        self._inline: asyncio.Task[Any] | None = None
        self._inline_skipped = False

    def skip(self) -> None:
        """Give up on the attempts in flight and try the next address now."""
        self._skipped = True
        waiter = self._skip_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._inline is not None and not self._inline_skipped:
            self._inline_skipped = True
            self._inline.cancel()

    def _now(self) -> float:
        return self._loop.time() - self._started

    def run(self) -> Coroutine[Any, Any, tuple[Channel, AttemptContext, Attempt]]:
        """Resolve, race, and return the winning channel, its context and its attempt.

        Raises the most telling error when every address failed
        (:func:`pick_error`), or the first non-retryable one at once (a
        certificate rejected by one address will be by the others). If
        cancelled, every attempt is cancelled and its channel aborted first.
        """
        endpoint = self._endpoint
        if (
            not self._skip_first
            and endpoint.is_literal
            and type(endpoint).resolve is Endpoint.resolve
        ):
            # The coroutine of the one attempt itself: no coroutine of the race around it.
            return self._only(Address(endpoint.host, endpoint.port))
        return self._race()

    async def _race(self) -> tuple[Channel, AttemptContext, Attempt]:
        queue = _Queue()
        resolution_started = self._now()
        resolvers = self._start_resolution()
        if not resolvers and not self._skip_first:
            return await self._only(Address(self._endpoint.host, self._endpoint.port))
        if not resolvers:
            # An IP literal needs no query: its one address is known now.
            queue.add([Address(self._endpoint.host, self._endpoint.port)])
            self._report.resolved = list(queue.seen)
            self._report.resolution_duration = 0.0
        resolve_errors: list[NetconnError] = []
        running: dict[asyncio.Task[Channel], tuple[Attempt, AttemptContext]] = {}
        errors: list[NetconnError] = []
        next_start = 0.0
        aaaa_waiting_since: float | None = None
        rotated = False
        try:
            while True:
                now = self._now()
                # Answers that arrived join the queue (RFC 8305 §3).
                for resolver in [t for t in resolvers if t.done()]:
                    family = resolvers.pop(resolver)
                    try:
                        addresses = resolver.result()
                    except NetconnError as exc:
                        resolve_errors.append(exc)
                        addresses = []
                    if family == socket.AF_INET and socket.AF_INET6 in resolvers.values():
                        aaaa_waiting_since = now
                    queue.add([a for a in addresses if family == 0 or a.family == family])
                    self._report.resolved = list(queue.seen)
                    self._report.resolution_duration = now - resolution_started
                ipv6_pending = socket.AF_INET6 in resolvers.values()
                held_for_aaaa = (
                    ipv6_pending
                    and aaaa_waiting_since is not None
                    and now < aaaa_waiting_since + self._parameters.resolution_delay
                )
                if self._skip_first and not rotated:
                    # Starting further down the list needs the whole list.
                    held_for_aaaa = held_for_aaaa or bool(resolvers)
                    if not resolvers:
                        queue.rotate(self._skip_first)
                        rotated = True
                if self._skipped:
                    self._skipped = False
                    await self._abandon(running, "skipped by try_next_endpoint()")
                    next_start = now
                # Start the next attempt when its turn came, or at once if none is running.
                if queue and not held_for_aaaa and (not running or now >= next_start):
                    address = queue.pop()
                    ctx = self._make_context()
                    attempt = Attempt(address, now)
                    self._report.attempts.append(attempt)
                    started = self._loop.create_task(self._attempt(ctx, address))
                    running[started] = (attempt, ctx)
                    next_start = now + self._parameters.connection_attempt_delay
                    continue
                if not running and not queue and not resolvers:
                    if errors:
                        raise pick_error(errors)
                    if resolve_errors:
                        # A temporary failure of either query may clear: prefer it (Waiting).
                        retryable = [e for e in resolve_errors if e.retryable]
                        raise (retryable or resolve_errors)[-1]
                    raise ConnectError("no more addresses to try")
                # Sleep until something finishes, the next turn, the AAAA deadline or a skip.
                deadlines = []
                if queue and running:
                    deadlines.append(next_start)
                if held_for_aaaa and aaaa_waiting_since is not None:
                    deadlines.append(aaaa_waiting_since + self._parameters.resolution_delay)
                timeout = max(0.0, min(deadlines) - now) if deadlines else None
                await self._sleep([*running, *resolvers], timeout)
                for task in [t for t in running if t.done()]:
                    attempt, ctx = running.pop(task)
                    attempt.duration = self._now() - attempt.started_after
                    error = _error_of(task, attempt.address)
                    if error is None:
                        attempt.outcome = "ready"
                        await self._abandon(running, None)
                        return task.result(), ctx, attempt
                    attempt.outcome = "failed"
                    attempt.error = error
                    errors.append(error)
                    if not error.retryable:
                        await self._abandon(running, None)
                        raise error
                    next_start = self._now()  # a failure starts the next address at once
        except BaseException:
            await self._abandon(running, None)
            raise
        finally:
            # Also after a win: a query still in flight (or one that failed
            # unseen, e.g. no AAAA record) must not outlive the race.
            for pending in resolvers:
                pending.cancel()
            await asyncio.gather(*resolvers, return_exceptions=True)

    async def _only(self, address: Address) -> tuple[Channel, AttemptContext, Attempt]:
        """An IP literal: its one attempt runs in the calling task, without a race.

        Same report, errors, deadline and :meth:`skip` as a race of one
        address; it only spares a task and the event-loop turns that waking
        the race costs.
        """
        loop = self._loop
        self._report.resolved = [address]
        self._report.resolution_duration = 0.0
        ctx = self._make_context()
        attempt = Attempt(address, loop.time() - self._started)
        self._report.attempts.append(attempt)
        task = self._caller
        if task is None:
            task = asyncio.current_task(loop)
            assert task is not None
        self._inline = task
        # The attempt's deadline, as in _attempt, without its coroutine around the stack's.
        expiry = _Expiry(task)
        deadlines = Deadlines.of(loop)
        deadline = deadlines.add(self._parameters.attempt_timeout, expiry.fire)
        try:
            channel = await self._stack.open_channel(ctx, address)
        except asyncio.CancelledError as exc:
            attempt.duration = loop.time() - self._started - attempt.started_after
            if expiry.fired and task.uncancel() <= expiry.cancelling:
                attempt.outcome = "failed"
                timed_out = TimeoutError()
                timed_out.__cause__ = exc
                attempt.error = error = _as_error(timed_out, address)
                raise error from timed_out
            attempt.outcome = "cancelled"
            if not self._inline_skipped or task.uncancel() > 0:
                raise  # cancelled from outside (too)
            attempt.error = ConnectError("skipped by try_next_endpoint()")
            raise ConnectError("no more addresses to try") from exc
        except Exception as exc:
            attempt.duration = loop.time() - self._started - attempt.started_after
            attempt.outcome = "failed"
            if isinstance(exc, OSError) and not isinstance(exc, NetconnError):
                mapped = map_os_error(exc, f"connect to {address}")
                mapped.__cause__ = exc
                exc = mapped
            attempt.error = error = _as_error(exc, address)
            if error is exc:
                raise exc
            raise error from exc
        finally:
            deadlines.remove(deadline)
            self._inline = None
        attempt.duration = loop.time() - self._started - attempt.started_after
        attempt.outcome = "ready"
        return channel, ctx, attempt

    async def _sleep(self, tasks: list[asyncio.Task[Any]], timeout: float | None) -> None:
        """Until one of ``tasks`` finishes, ``timeout`` seconds pass or :meth:`skip` is called."""
        if self._skipped:
            return
        loop = self._loop
        waiter = self._skip_waiter = loop.create_future()
        wake = functools.partial(_wake, waiter)
        timer = None if timeout is None else loop.call_later(timeout, wake)
        for task in tasks:
            task.add_done_callback(wake)
        try:
            await waiter
        finally:
            self._skip_waiter = None
            if timer is not None:
                timer.cancel()
            for task in tasks:
                task.remove_done_callback(wake)

    def _start_resolution(self) -> dict[asyncio.Task[list[Address]], int]:
        """AAAA and A queries in parallel (none for an IP literal)."""
        loop = self._loop
        kind = self._stack.bottom.resolve_kind
        if self._endpoint.is_literal:
            if type(self._endpoint).resolve is Endpoint.resolve:
                return {}
            return {loop.create_task(self._endpoint.resolve(kind=kind)): 0}
        return {
            loop.create_task(self._endpoint.resolve(kind=kind, family=family)): family
            for family in (socket.AF_INET6, socket.AF_INET)
        }

    async def _attempt(self, ctx: AttemptContext, address: Address) -> Channel:
        # What asyncio.timeout() does, on the loop's shared deadline timer: that
        # context looks the loop and the task up again and arms a timer of its own.
        loop = self._loop
        task = asyncio.current_task(loop)
        assert task is not None
        expiry = _Expiry(task)
        deadlines = Deadlines.of(loop)
        deadline = deadlines.add(self._parameters.attempt_timeout, expiry.fire)
        try:
            return await self._stack.open_channel(ctx, address)
        except OSError as exc:
            if isinstance(exc, NetconnError):
                raise
            raise map_os_error(exc, f"connect to {address}") from exc
        except asyncio.CancelledError as exc:
            if expiry.fired and task.uncancel() <= expiry.cancelling:
                raise TimeoutError from exc
            raise
        finally:
            deadlines.remove(deadline)

    async def _abandon(
        self,
        running: dict[asyncio.Task[Channel], tuple[Attempt, AttemptContext]],
        reason: str | None,
    ) -> None:
        """Cancel every running attempt, wait for it, abort a channel that got through."""
        if not running:
            return
        for task in running:
            task.cancel()
        await asyncio.wait(list(running))
        for task, (attempt, _ctx) in running.items():
            attempt.duration = self._now() - attempt.started_after
            attempt.outcome = "cancelled"
            if reason is not None:
                attempt.error = ConnectError(reason)
            if not task.cancelled() and task.exception() is None:
                task.result().abort()  # it finished just as it was cancelled
        running.clear()


class _Expiry:
    """An attempt's deadline: cancels its task once, and remembers having done so."""

    __slots__ = ("cancelling", "fired", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.cancelling = task.cancelling()
        self.fired = False

    def fire(self) -> None:
        if not self.task.done():
            self.fired = True
            self.task.cancel()


def _wake(waiter: asyncio.Future[None], *_: object) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _error_of(task: asyncio.Task[Channel], address: Address) -> NetconnError | None:
    if task.cancelled():
        return ConnectError(f"the attempt to {address} was cancelled")
    exc = task.exception()
    if exc is None:
        return None
    return _as_error(exc, address)


def _as_error(exc: BaseException, address: Address) -> NetconnError:
    if isinstance(exc, NetconnError):
        return exc
    if isinstance(exc, TimeoutError):
        timeout = ConnectionTimeout(f"connect to {address} timed out")
        timeout.__cause__ = exc
        return timeout
    error = ConnectError(f"connect to {address} failed: {exc!r}")
    error.__cause__ = exc
    return error
