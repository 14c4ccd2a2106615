"""Outcomes of interop cases and the matrix that collects them."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Matrix", "Outcome", "Result"]


class Outcome(enum.Enum):
    """How one case ended for one peer and role."""

    PASSED = "passed"
    """The evidence the case asks for was seen."""
    FAILED = "failed"
    """The case ran and its evidence was missing or wrong; ``reason`` says which."""
    UNSUPPORTED = "unsupported"
    """The peer cannot take part in this case (e.g. caddy has no forced Retry)."""
    NOT_INSTALLED = "not installed"
    """The peer's program is not on this machine."""


@dataclass
class Result:
    """One cell of the matrix."""

    peer: str
    """The other implementation: ``netconn``, ``picoquic``, ``caddy``, or a public server."""
    role: str
    """netconn's role: ``client`` (the peer serves) or ``server`` (the peer fetches)."""
    case: str
    """The case's name, as in :data:`interop.cases.CASES`."""
    outcome: Outcome
    reason: str = ""
    """Why it failed or is unsupported; empty when it passed."""
    evidence: list[str] = field(default_factory=list)
    """What was checked, in words: hashes, qlog events, the peer's own report."""
    duration: float = 0.0
    """Seconds the case took."""

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary."""
        data = asdict(self)
        data["outcome"] = self.outcome.value
        return data


@dataclass
class Matrix:
    """Every result of one run, in the order they ran."""

    results: list[Result] = field(default_factory=list)
    started: str = ""
    """UTC time the run began (ISO 8601)."""
    duration: float = 0.0
    """Seconds the whole run took."""
    versions: dict[str, str] = field(default_factory=dict)
    """Versions of netconn, aioquic and the peers' programs."""

    def add(self, result: Result) -> None:
        """Append ``result``."""
        self.results.append(result)

    def columns(self) -> list[tuple[str, str]]:
        """The (peer, role) pairs in first-seen order."""
        seen: dict[tuple[str, str], None] = {}
        for r in self.results:
            seen.setdefault((r.peer, r.role), None)
        return list(seen)

    def cases(self) -> list[str]:
        """The case names in first-seen order."""
        seen: dict[str, None] = {}
        for r in self.results:
            seen.setdefault(r.case, None)
        return list(seen)

    def get(self, peer: str, role: str, case: str) -> Result | None:
        """The result for one cell, or ``None`` when it did not run."""
        for r in self.results:
            if (r.peer, r.role, r.case) == (peer, role, case):
                return r
        return None

    def counts(self) -> dict[str, int]:
        """How many cells ended in each outcome."""
        counts = {o.value: 0 for o in Outcome}
        for r in self.results:
            counts[r.outcome.value] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dictionary of the whole run."""
        return {
            "started": self.started,
            "duration": round(self.duration, 3),
            "versions": self.versions,
            "counts": self.counts(),
            "results": [r.to_json() for r in self.results],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Matrix:
        """Read back what :meth:`to_json` wrote."""
        matrix = cls(started=data["started"], duration=data["duration"], versions=data["versions"])
        for item in data["results"]:
            matrix.add(
                Result(
                    peer=item["peer"],
                    role=item["role"],
                    case=item["case"],
                    outcome=Outcome(item["outcome"]),
                    reason=item["reason"],
                    evidence=list(item["evidence"]),
                    duration=item["duration"],
                )
            )
        return matrix
