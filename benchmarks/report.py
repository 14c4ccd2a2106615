"""Reports: JSON (everything), a Markdown table, and PNG plots."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from .runner import ImplResult, Ratio, ScenarioResult
from .scenarios import STACKS
from .workloads import Metric

__all__ = ["from_json", "markdown", "plot", "to_json"]

_NOT_AVAILABLE = "not available in this build"


def to_json(header: dict[str, Any], results: list[ScenarioResult]) -> str:
    """Every round of every measurement, with the header, as JSON."""
    scenarios = []
    for result in results:
        item = dataclasses.asdict(result)
        item["medians"] = {
            name: {m.key: impl.median(m.key) for m in result.metrics}
            for name, impl in result.implementations.items()
        }
        for ratio, source in zip(item["ratios"], result.ratios, strict=True):
            ratio["median"] = source.median
        scenarios.append(item)
    return json.dumps({"header": header, "scenarios": scenarios}, indent=1)


def from_json(text: str) -> tuple[dict[str, Any], list[ScenarioResult]]:
    """The header and results that :func:`to_json` wrote (to render reports again)."""
    data = json.loads(text)
    results = []
    for item in data["scenarios"]:
        results.append(
            ScenarioResult(
                item["stack"],
                item["workload"],
                item["loop"],
                item["title"],
                tuple(Metric(**m) for m in item["metrics"]),
                {name: ImplResult(**impl) for name, impl in item["implementations"].items()},
                [
                    Ratio(r["subject"], r["reference"], r["metric"], r["rounds"])
                    for r in item["ratios"]
                ],
            )
        )
    return data["header"], results


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _cell(impl: ImplResult, key: str, notes: list[str]) -> str:
    if impl.status == "ok":
        value = impl.median(key)
        if value is None and impl.message:
            return _note(f"{impl.name}: {impl.message}", notes, "error")
        return _number(value)
    if impl.status == "unavailable":
        return _note(f"{impl.name}: {impl.message}", notes, "n/a")
    if impl.status == "unsupported":
        return _note(f"{impl.name}: {impl.message}", notes, "no API")
    return _note(f"{impl.name}: {impl.message}", notes, "error")


def _note(text: str, notes: list[str], word: str) -> str:
    if text not in notes:
        notes.append(text)
    return f"{word} [{notes.index(text) + 1}]"


def _header_lines(header: dict[str, Any]) -> list[str]:
    machine = header["machine"]
    libraries = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items() if v is not None)
    cpu = header.get("cpu_during_run", {})
    load = " ".join(str(x) for x in machine["load_average"])
    return [
        f"- Command: `{header['command']}`",
        f"- Date: {header['date']}; mode: {header['mode']}; "
        f"{header['rounds']} alternating rounds per scenario; loops: {', '.join(header['loops'])}",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores "
        f"({machine['cores_usable']} usable), {machine['kernel']}, {machine['python']}, "
        f"{machine['openssl']}",
        f"- Libraries: {libraries}",
        f"- CPU during the run: {cpu.get('steal_percent', '?')}% stolen, "
        f"{cpu.get('busy_percent', '?')}% busy; load average at start {load}",
        "- Figures are medians over the rounds. A ratio `a ÷ b` is the median of the "
        "per-round ratios, oriented so that above 1 means `a` did better (more throughput, "
        "less latency or memory).",
    ]


def markdown(header: dict[str, Any], results: list[ScenarioResult]) -> str:
    """A Markdown report: the header, then one table per stack and loop."""
    lines = ["# netconn benchmarks", "", *_header_lines(header), ""]
    notes: list[str] = []
    groups: dict[tuple[str, str], list[ScenarioResult]] = {}
    for result in results:
        groups.setdefault((result.stack, result.loop), []).append(result)
    for (stack, loop), items in groups.items():
        bench = STACKS[stack]
        names = list(items[0].implementations)
        pairs = [p for p in bench.pairs if p[0] in names and p[1] in names]
        lines += [f"## {bench.title} ({loop} loop)", ""]
        columns = ["workload", "metric", *names, *(f"{a} ÷ {b}" for a, b in pairs)]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "|".join(["---", "---"] + ["---:"] * (len(columns) - 2)) + "|")
        for result in items:
            ratios = {(r.subject, r.reference, r.metric): r for r in result.ratios}
            for metric in result.metrics:
                row = [result.workload, f"{metric.label} ({metric.unit})"]
                row += [_cell(result.implementations[n], metric.key, notes) for n in names]
                for a, b in pairs:
                    ratio = ratios.get((a, b, metric.key))
                    row.append(_ratio(ratio.median if ratio else None))
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    loops = sorted({r.loop for r in results})
    if len(loops) > 1:
        lines += _loops_side_by_side(results, loops)
    if notes:
        lines += ["Notes:", ""]
        lines += [f"{i}. {text}" for i, text in enumerate(notes, 1)]
        lines.append("")
    return "\n".join(lines)


def _loops_side_by_side(results: list[ScenarioResult], loops: list[str]) -> list[str]:
    lines = ["## Event loops side by side (headline metric)", ""]
    columns = ["stack", "workload", "metric", "pair"]
    for loop in loops:
        columns += [f"{loop}: subject", f"{loop}: ratio"]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join(["---"] * 4 + ["---:"] * (2 * len(loops))) + "|")
    index = {(r.stack, r.workload, r.loop): r for r in results}
    seen: set[tuple[str, str]] = set()
    for result in results:
        key = (result.stack, result.workload)
        if key in seen:
            continue
        seen.add(key)
        metric = result.metrics[0]
        for a, b in STACKS[result.stack].pairs:
            row = [result.stack, result.workload, f"{metric.label} ({metric.unit})", f"{a} ÷ {b}"]
            for loop in loops:
                other = index.get((result.stack, result.workload, loop))
                impl = other.implementations.get(a) if other else None
                ratio = next(
                    (
                        r
                        for r in (other.ratios if other else [])
                        if (r.subject, r.reference, r.metric) == (a, b, metric.key)
                    ),
                    None,
                )
                row += [
                    _number(impl.median(metric.key)) if impl else "-",
                    _ratio(ratio.median if ratio else None),
                ]
            lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    return lines


def plot(results: list[ScenarioResult], directory: str) -> list[str]:
    """Write ``ratios.png`` and one ``<stack>.png`` per stack; return the paths."""
    import matplotlib

    matplotlib.use("Agg")
    os.makedirs(directory, exist_ok=True)
    paths = [_plot_ratios(results, directory)]
    for stack in dict.fromkeys(r.stack for r in results):
        paths.append(_plot_stack(stack, [r for r in results if r.stack == stack], directory))
    return paths


_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]


_RATIO_TICKS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1, 1.5, 2, 3, 5, 10, 20, 50, 100]


def _plot_ratios(results: list[ScenarioResult], directory: str) -> str:
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows: list[tuple[str, float, str]] = []
    outside: set[str] = set()
    loops = list(dict.fromkeys(r.loop for r in results))
    for result in results:
        metric = result.metrics[0]
        for ratio in result.ratios:
            if ratio.metric == metric.key and ratio.median is not None:
                label = f"{result.stack} {result.workload}: {ratio.subject} ÷ {ratio.reference}"
                rows.append((label, ratio.median, result.loop))
                if not ratio.subject.startswith("netconn"):
                    outside.add(label)
    labels = list(dict.fromkeys(label for label, _, _ in rows))
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.32 * max(1, len(labels)) * len(loops)))
    height = 0.8 / max(1, len(loops))
    for j, loop in enumerate(loops):
        ys, xs, colours = [], [], []
        for label, value, row_loop in rows:
            if row_loop == loop:
                ys.append(labels.index(label) + j * height)
                xs.append(value)
                single = len(loops) == 1 and label in outside
                colours.append("#b0b0b0" if single else _COLOURS[j % len(_COLOURS)])
        bars = ax.barh(ys, xs, height=height, color=colours, label=loop)
        for bar, value in zip(bars, xs, strict=True):
            ax.text(
                value,
                bar.get_y() + bar.get_height() / 2,
                f" {value:.2f}x",
                va="center",
                fontsize=8,
            )
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    values = [value for _, value, _ in rows] or [1.0]
    ticks = [t for t in _RATIO_TICKS if min(values) / 1.5 <= t <= max(values) * 1.5]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}x" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_yticks([i + height * (len(loops) - 1) / 2 for i in range(len(labels))])
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio, headline metric (> 1: the first does better; log scale)")
    title = "netconn against the raw libraries (median of per-round ratios)"
    if len(loops) == 1 and outside:
        title += "\ngrey: an outside reference against the raw baseline"
    ax.set_title(title)
    if len(loops) > 1:
        ax.legend(title="event loop")
    fig.tight_layout()
    path = os.path.join(directory, "ratios.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_stack(stack: str, results: list[ScenarioResult], directory: str) -> str:
    import matplotlib.pyplot as plt

    workloads = list(dict.fromkeys(r.workload for r in results))
    loops = list(dict.fromkeys(r.loop for r in results))
    columns = min(3, len(workloads))
    rows = (len(workloads) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat[len(workloads) :]:
        ax.set_visible(False)
    for ax, workload in zip(axes.flat, workloads, strict=False):
        items = [r for r in results if r.workload == workload]
        metric = items[0].metrics[0]
        names = list(items[0].implementations)
        width = 0.8 / len(loops)
        for j, loop in enumerate(loops):
            result = next((r for r in items if r.loop == loop), None)
            if result is None:
                continue
            for i, name in enumerate(names):
                impl = result.implementations[name]
                x = i + (j - (len(loops) - 1) / 2) * width
                median = impl.median(metric.key)
                if median is None:
                    ax.text(
                        x,
                        0.03,
                        "n/a",
                        ha="center",
                        va="bottom",
                        fontsize=8,
                        color="grey",
                        transform=ax.get_xaxis_transform(),
                    )
                    continue
                ax.bar(
                    x,
                    median,
                    width=width * 0.9,
                    color=_COLOURS[j % len(_COLOURS)],
                    label=loop if i == 0 else None,
                )
                points = [r[metric.key] for r in impl.rounds if r is not None and metric.key in r]
                ax.scatter([x] * len(points), points, color="black", s=8, zorder=3)
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, fontsize=8, rotation=15)
        better = "higher" if metric.higher_is_better else "lower"
        ax.set_title(f"{workload}: {metric.label}", fontsize=10)
        ax.set_ylabel(f"{metric.unit} ({better} is better)", fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        if len(loops) > 1:
            ax.legend(fontsize=7)
    fig.suptitle(f"{STACKS[stack].title}: medians (bars) and rounds (dots)")
    fig.tight_layout()
    path = os.path.join(directory, f"{stack}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
