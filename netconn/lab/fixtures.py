"""The namespace lab for pytest.

A test module declares its fixture in three lines::

    @pytest.fixture
    def lab() -> Iterator[Lab]:
        yield from lab_fixture()

Without root (or without ``ip``/``nft``/``conntrack``) the test is skipped
with the reason; CI runs as root.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from . import Lab

__all__ = ["lab_fixture"]


def lab_fixture() -> Iterator[Lab]:
    """Skip unless a lab can be built; yield a fresh one and tear it down afterwards."""
    reason = Lab.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with Lab() as built:
        yield built
