"""Waking a waiting task at once, from a transport's callback, instead of a loop turn later.

A future's ``set_result`` schedules its waiting task with ``call_soon``: the
task runs at the loop's next turn, after a handle is made and queued. A reply
written from a protocol callback leaves sooner. :func:`hand` takes the
future's one callback (the waiting task's wake-up) off it, sets the result and
runs that callback on the spot, in its own context: the task goes on from
inside the callback, as a reply written there would. It falls back to
``set_result`` whenever that is not safe: from inside a running task (only one
task may run at a time), or when anything but one callback waits.

The future stays a plain ``asyncio.Future``, so the task awaits it on the
C fast path; cancellation and a result that arrives after a cancelled wait
behave as with ``set_result``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["hand"]

T = TypeVar("T")

# The task each loop runs at the moment: asyncio's own registry, a dict on
# 3.11-3.13 (``asyncio.current_task`` is Python code on 3.11). Where asyncio
# keeps no such dict, ``current_task`` answers.
_running: dict[asyncio.AbstractEventLoop, asyncio.Task[Any]] | None = getattr(
    asyncio.tasks, "_current_tasks", None
)


def hand(waiter: asyncio.Future[T], result: T, loop: asyncio.AbstractEventLoop) -> None:
    """Resolve ``waiter`` (not done) with ``result`` and resume its waiting task now.

    ``loop`` is the waiter's loop. Outside the loop's callbacks (inside a task),
    or with other than exactly one callback, this is ``set_result``.
    """
    try:
        # A C future gives None, not an empty list, when no callback waits.
        callbacks: Any = waiter._callbacks
    except AttributeError:  # a future that keeps no such list
        callbacks = None
    if not callbacks or len(callbacks) != 1 or _task_running(loop):
        waiter.set_result(result)
        return
    callback, context = callbacks[0]
    waiter.remove_done_callback(callback)
    waiter.set_result(result)
    context.run(callback, waiter)


def _current_task_running(loop: asyncio.AbstractEventLoop) -> bool:
    return asyncio.current_task(loop) is not None


# Whether a task of ``loop`` runs now: a method of asyncio's registry where
# there is one (no Python call per hand-over), else ``current_task``.
_task_running: Callable[[asyncio.AbstractEventLoop], bool] = (
    _running.__contains__ if _running is not None else _current_task_running
)
