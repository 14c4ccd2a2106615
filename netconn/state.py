"""Connection states and the one table of moves between them.

A connection goes ``Setup -> Preparing -> Ready -> Cancelled``. When an attempt
fails in a way that may recover (a refused port, no route) it sits in
``Waiting(error)`` and tries again by itself; when it cannot recover it ends in
``Failed(error)``. ``Failed`` and ``Cancelled`` are final.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

from .errors import InvalidState, NetconnError

__all__ = [
    "TERMINAL_STATES",
    "Cancelled",
    "Failed",
    "Preparing",
    "Ready",
    "Setup",
    "State",
    "Waiting",
]


@dataclass(frozen=True, slots=True)
class Setup:
    """Created and not yet started."""

    def __str__(self) -> str:
        return "setup"


@dataclass(frozen=True, slots=True)
class Preparing:
    """Resolving, connecting and handshaking."""

    def __str__(self) -> str:
        return "preparing"


@dataclass(frozen=True, slots=True)
class Waiting:
    """The last attempt failed with a retryable ``error``; another will follow."""

    error: NetconnError

    def __str__(self) -> str:
        return f"waiting({self.error})"


@dataclass(frozen=True, slots=True)
class Ready:
    """Established: data can move."""

    def __str__(self) -> str:
        return "ready"


@dataclass(frozen=True, slots=True)
class Failed:
    """Ended by ``error``; final."""

    error: NetconnError

    def __str__(self) -> str:
        return f"failed({self.error})"


@dataclass(frozen=True, slots=True)
class Cancelled:
    """Ended by the local application; final."""

    def __str__(self) -> str:
        return "cancelled"


State: TypeAlias = Setup | Preparing | Waiting | Ready | Failed | Cancelled

TERMINAL_STATES: Final = frozenset({Failed, Cancelled})

# The allowed moves, as data: from a state's type to the types it may become.
_TRANSITIONS: Final[dict[type[State], frozenset[type[State]]]] = {
    Setup: frozenset({Preparing, Ready, Cancelled, Failed}),
    Preparing: frozenset({Ready, Waiting, Failed, Cancelled}),
    Waiting: frozenset({Preparing, Waiting, Failed, Cancelled}),
    Ready: frozenset({Failed, Cancelled}),
    Failed: frozenset(),
    Cancelled: frozenset(),
}


def check_transition(old: State, new: State) -> None:
    """Raise :class:`InvalidState` unless ``old -> new`` is in the table."""
    if type(new) not in _TRANSITIONS[type(old)]:
        raise InvalidState(f"illegal state change {old} -> {new}", old)


def is_terminal(state: State) -> bool:
    """Whether ``state`` is final."""
    return type(state) in TERMINAL_STATES
