"""Turn: one writer at a time, in arrival order, with cancellation at any point."""

from __future__ import annotations

import asyncio
import contextlib

from netconn._turn import Turn


async def _write(turn: Turn, name: str, log: list[str], gate: asyncio.Event) -> None:
    if turn.held:
        await turn.wait()
    turn.held = True
    try:
        log.append(f"{name} in")
        await gate.wait()
        log.append(f"{name} out")
    finally:
        turn.release()


async def test_writers_take_turns_in_the_order_they_came() -> None:
    turn, gate = Turn(), asyncio.Event()
    log: list[str] = []
    tasks = [asyncio.create_task(_write(turn, name, log, gate)) for name in "abc"]
    await asyncio.sleep(0)
    assert log == ["a in"] and turn.held
    gate.set()
    await asyncio.gather(*tasks)
    assert log == ["a in", "a out", "b in", "b out", "c in", "c out"]
    assert not turn.held


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    turn, gate = Turn(), asyncio.Event()
    log: list[str] = []
    a, b, c = (asyncio.create_task(_write(turn, name, log, gate)) for name in "abc")
    await asyncio.sleep(0)
    b.cancel()
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(a, c)
    with contextlib.suppress(asyncio.CancelledError):
        await b
    assert log == ["a in", "a out", "c in", "c out"] and not turn.held


async def test_a_waiter_cancelled_after_its_turn_came_passes_it_on() -> None:
    turn, gate = Turn(), asyncio.Event()
    log: list[str] = []
    gate.set()
    turn.held = True  # someone writes
    b, c = (asyncio.create_task(_write(turn, name, log, gate)) for name in "bc")
    await asyncio.sleep(0)
    turn.release()  # b's turn: its waiter is resolved, b has not run yet
    b.cancel()
    await asyncio.gather(b, c, return_exceptions=True)
    assert b.cancelled() and log == ["c in", "c out"] and not turn.held
