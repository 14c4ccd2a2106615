"""The results matrix as Markdown, JSON and a static HTML page."""

from __future__ import annotations

import html
import json
from pathlib import Path

from .results import Matrix, Outcome

__all__ = ["to_html", "to_markdown", "write_reports"]

_SYMBOL = {
    Outcome.PASSED: "✓",
    Outcome.FAILED: "✗",
    Outcome.UNSUPPORTED: "○",
    Outcome.NOT_INSTALLED: "?",
}
_LEGEND = "✓ passed · ✗ failed · ○ unsupported by the peer · ? peer not installed"


def _column_title(peer: str, role: str) -> str:
    if peer == "netconn":
        return "netconn (both sides)"
    return f"{peer} ({'netconn client' if role == 'client' else 'netconn server'})"


def to_markdown(matrix: Matrix) -> str:
    """A Markdown table (cases x peer and role) followed by the reasons for failures."""
    columns = matrix.columns()
    lines = ["| case | " + " | ".join(_column_title(p, r) for p, r in columns) + " |"]
    lines.append("| --- |" + " :---: |" * len(columns))
    for case in matrix.cases():
        cells = []
        for peer, role in columns:
            result = matrix.get(peer, role, case)
            cells.append(" " if result is None else _SYMBOL[result.outcome])
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(_LEGEND + ".")
    counts = matrix.counts()
    lines.append(
        f"{counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['unsupported']} unsupported, {counts['not installed']} not installed "
        f"in {matrix.duration:.1f} s."
    )
    failed = [r for r in matrix.results if r.outcome is Outcome.FAILED]
    if failed:
        lines.append("")
        lines.append("Failures:")
        lines.append("")
        for r in failed:
            lines.append(f"- {r.case}, {_column_title(r.peer, r.role)}: {r.reason}")
    return "\n".join(lines) + "\n"


_CSS = """
body { font-family: sans-serif; margin: 2em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #999; padding: 0.3em 0.6em; text-align: center; }
td.case { text-align: left; font-family: monospace; }
td.passed { background: #c8f7c5; } td.failed { background: #f7c5c5; }
td.unsupported { background: #eee; } td.not-installed { background: #f7ecc5; }
details { text-align: left; font-size: 0.8em; max-width: 28em; }
"""


def to_html(matrix: Matrix) -> str:
    """A self-contained HTML page: the matrix, with each cell's evidence or reason folded in."""
    esc = html.escape
    columns = matrix.columns()
    head = "".join(f"<th>{esc(_column_title(p, r))}</th>" for p, r in columns)
    rows = []
    for case in matrix.cases():
        cells = [f'<td class="case">{esc(case)}</td>']
        for peer, role in columns:
            result = matrix.get(peer, role, case)
            if result is None:
                cells.append("<td></td>")
                continue
            css = result.outcome.value.replace(" ", "-")
            notes = ([result.reason] if result.reason else []) + result.evidence
            detail = "".join(f"<li>{esc(n)}</li>" for n in notes)
            cells.append(
                f'<td class="{css}" title="{esc(result.outcome.value)}">'
                f"{_SYMBOL[result.outcome]} <details><summary>{esc(result.outcome.value)}"
                f" ({result.duration:.2f} s)</summary><ul>{detail}</ul></details></td>"
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    versions = "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in matrix.versions.items())
    counts = matrix.counts()
    summary = ", ".join(f"{n} {esc(k)}" for k, n in counts.items())
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>netconn QUIC interop</title><style>{_CSS}</style></head><body>"
        f"<h1>netconn QUIC interop</h1><p>Run at {esc(matrix.started)},"
        f" {matrix.duration:.1f} s: {summary}.</p>"
        f"<table><tr><th>case</th>{head}</tr>{''.join(rows)}</table>"
        f"<p>{esc(_LEGEND)}</p><h2>Versions</h2><ul>{versions}</ul></body></html>\n"
    )


def write_reports(matrix: Matrix, directory: Path) -> dict[str, Path]:
    """Write ``results.md``, ``results.json`` and ``index.html`` into ``directory``.

    Returns the paths by format name (``markdown``, ``json``, ``html``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": directory / "results.md",
        "json": directory / "results.json",
        "html": directory / "index.html",
    }
    paths["markdown"].write_text(to_markdown(matrix))
    paths["json"].write_text(json.dumps(matrix.to_json(), indent=2) + "\n")
    paths["html"].write_text(to_html(matrix))
    return paths
