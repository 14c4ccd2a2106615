"""Typing is a feature: misuse must fail mypy --strict, and only where marked.

Convention (for every stack): ``tests/typing/pass_<name>.py`` uses the API
correctly and must pass; ``tests/typing/fail_<name>.py`` misuses it, and each
line that must fail ends with ``# E: <code>[, <code>...]`` naming mypy's
error codes. The fail files are excluded from the normal mypy run
(pyproject.toml) and checked here, all in one mypy run.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"
PASS_FILES = sorted(TYPING.glob("pass_*.py"))
FAIL_FILES = sorted(TYPING.glob("fail_*.py"))
_MARK = re.compile(r"#\s*E:\s*([\w-]+(?:\s*,\s*[\w-]+)*)\s*$")
_ERROR = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+): error: .*\[(?P<code>[\w-]+)\]$")

Errors = dict[tuple[str, int], set[str]]


def expected_errors(path: Path) -> Errors:
    """``(file, line) -> codes`` from the ``# E:`` marks in ``path``."""
    found: Errors = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if match := _MARK.search(line):
            codes = {code.strip() for code in match.group(1).split(",")}
            found[(path.name, number)] = codes
    return found


@pytest.fixture(scope="module")
def reported() -> Errors:
    """Every error mypy --strict reports for the pass and fail files, by file and line."""
    files = [str(p.relative_to(ROOT)) for p in PASS_FILES + FAIL_FILES]
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", "--no-pretty", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert not result.stderr, result.stderr
    errors: Errors = defaultdict(set)
    for line in result.stdout.splitlines():
        if match := _ERROR.match(line):
            errors[(Path(match["path"]).name, int(match["line"]))].add(match["code"])
        elif ": note: " not in line:
            raise AssertionError(f"unexpected mypy output: {line}")
    return dict(errors)


def test_files_exist() -> None:
    assert any(p.name == "pass_core.py" for p in PASS_FILES)
    assert any(p.name == "fail_core.py" for p in FAIL_FILES)


@pytest.mark.parametrize("path", PASS_FILES, ids=lambda p: p.name)
def test_pass_file_is_clean(path: Path, reported: Errors) -> None:
    errors = {where: codes for where, codes in reported.items() if where[0] == path.name}
    assert not errors, f"correct use fails mypy: {errors}"


@pytest.mark.parametrize("path", FAIL_FILES, ids=lambda p: p.name)
def test_fail_file_fails_exactly_where_marked(path: Path, reported: Errors) -> None:
    expected = expected_errors(path)
    assert expected, f"{path.name} marks no line with '# E: <code>'"
    actual = {where: codes for where, codes in reported.items() if where[0] == path.name}
    missing = {k: v - actual.get(k, set()) for k, v in expected.items() if v - actual.get(k, set())}
    unexpected = {
        k: v - expected.get(k, set()) for k, v in actual.items() if v - expected.get(k, set())
    }
    assert not missing, f"misuse that mypy accepts (line: codes): {missing}"
    assert not unexpected, f"errors on lines not marked for them (line: codes): {unexpected}"
