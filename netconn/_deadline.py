"""Deadlines that almost never expire, many on one event-loop timer.

Every connection start arms two such deadlines (``wait_ready``'s timeout and
its attempt's) and removes them a millisecond later. A loop timer each costs
a heap push, a cancelled handle left in the heap and its later removal; here
a deadline is a dictionary entry, and the one timer per loop is re-armed only
when a new deadline falls before it, or when it fires.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Callable

__all__ = ["Deadline", "Deadlines"]

# What asyncio allows a timer too: it runs one that is due within the clock's resolution.
_RESOLUTION = time.get_clock_info("monotonic").resolution


class Deadline:
    """One pending deadline; :meth:`Deadlines.remove` drops it."""

    __slots__ = ("callback", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback


class Deadlines:
    """The deadlines of one event loop, on one timer set for the earliest."""

    __slots__ = ("_entries", "_loop_ref", "_timer", "_when")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop_ref = weakref.ref(loop)
        self._entries: dict[Deadline, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._when = 0.0

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> Deadlines:
        """``loop``'s deadlines: those of the last loop that asked in this thread.

        A thread runs one loop at a time; whoever adds a deadline removes it from
        the object it added it to, so a new loop's fresh object loses nothing.
        Only the thread's last loop is referenced (through a pending timer).
        """
        deadlines = _current.deadlines
        if deadlines is None or deadlines._loop_ref() is not loop:
            deadlines = _current.deadlines = cls(loop)
        return deadlines

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop_ref()
        if loop is None:
            raise RuntimeError("the event loop is gone")
        return loop

    def add(self, delay: float, callback: Callable[[], None]) -> Deadline:
        """Call ``callback()`` on the loop ``delay`` seconds from now, unless removed first."""
        loop = self._loop_ref()  # the _loop property, without its call
        if loop is None:
            raise RuntimeError("the event loop is gone")
        when = loop.time() + delay
        entry = Deadline(when, callback)
        self._entries[entry] = None
        if self._timer is None or when < self._when:
            self._arm(when)
        return entry

    def remove(self, entry: Deadline) -> None:
        """Drop ``entry`` (nothing if it ran already). The timer stays: it may serve others."""
        self._entries.pop(entry, None)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._when = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop
        now = loop.time() + _RESOLUTION
        due = [entry for entry in self._entries if entry.when <= now]
        for entry in due:
            del self._entries[entry]
        for entry in due:
            try:
                entry.callback()
            except Exception as exc:  # one broken callback must not stop the others
                loop.call_exception_handler(
                    {"message": "deadline callback raised", "exception": exc}
                )
        if self._entries and not loop.is_closed():
            # A callback may have added a deadline (and armed the timer for it).
            earliest = min(entry.when for entry in self._entries)
            if self._timer is None or earliest < self._when:
                self._arm(earliest)


class _Current(threading.local):
    deadlines: Deadlines | None = None


_current = _Current()
