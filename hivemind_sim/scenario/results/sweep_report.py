"""A sweep's own report: `sweep.csv` (every metric's mean, spread and range per point),
`sweep.md` (the assertions, the metrics, the plots and every run with its report) and the plots."""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..format.names import metric_unit
from ..run.sweep_plan import point_label
from .assertions import format_duration, format_value
from .report import counts_text
from .sweep_plots import write_sweep_plots
from .sweep_summary import Stats, SweepSummary, all_metrics


def write_sweep_report(summary: SweepSummary) -> list[Path]:
    """sweep.csv, the plots and sweep.md (which links them); returns their paths."""
    csv_path = _write_csv(summary)
    plots = write_sweep_plots(summary)
    md_path = summary.out / "sweep.md"
    md_path.write_text(_markdown(summary, plots))
    return [md_path, csv_path, *plots]


def _write_csv(summary: SweepSummary) -> Path:
    """One row per point: the axis values, run and assertion counts, then mean/std/min/max of
    every metric across seeds (empty where no seed observed it)."""
    keys = [key for key, _ in summary.axes]
    metrics = all_metrics(summary.points)
    header = ["point", *keys, "runs", "errors", "pass", "fail", "unknown"]
    header += [f"{m}.{stat}" for m in metrics for stat in ("mean", "std", "min", "max")]
    path = summary.out / "sweep.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for p in summary.points:
            counts = p.assertion_counts
            row: list[Any] = [p.slug, *(value for _, value in p.point), p.runs, p.errors]
            row += [counts["pass"], counts["fail"], counts["unknown"]]
            for m in metrics:
                s = p.metrics.get(m)
                row += ["", "", "", ""] if s is None else [s.mean, s.std, s.min, s.max]
            writer.writerow(row)
    return path


def _cell(stats: Stats | None, unit: str) -> str:
    if stats is None:
        return "-"
    if stats.n == 1:
        return show(stats.mean, unit)
    return f"{show(stats.mean, unit)} ({show(stats.min, unit)} to {show(stats.max, unit)})"


def show(value: float, unit: str) -> str:
    """``format_value``, with big counts written whole (`46,913`, not `4.691e+04`)."""
    if not unit and math.isfinite(value) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return format_value(value, unit)


def _markdown(summary: SweepSummary, plots: Sequence[Path]) -> str:
    points = summary.points
    runs, errors = len(summary.records), summary.errors
    lines = [f"# Sweep of `{summary.name}`: {len(points)} point(s) x {summary.seeds} seed(s)", ""]
    lines += [f"- scenario: `{summary.scenario}`"]
    for key, values in summary.axes:
        lines.append(f"- swept: `{key}` = " + ", ".join(f"`{v}`" for v in values))
    if summary.fixed:
        lines.append("- fixed: " + ", ".join(f"`{o}`" for o in summary.fixed))
    stopped = summary.stopped
    lines += [
        f"- root seed: `{summary.root_seed}`; each run's seed derives from it, the point and the replicate",
        f"- runs: {runs} ({summary.ran} run now, {summary.skipped} read back from an earlier sweep, "
        f"{len(errors)} error(s), {len(stopped)} stopped early)",
    ]
    if summary.interrupted:
        missing = summary.planned - runs
        lines.append(
            f"- **interrupted** (Ctrl-C): {missing} of {summary.planned} runs did not finish and are not "
            "below; the same command again runs only them"
        )
    lines += [f"- wall time: {format_duration(summary.wall_s)}", "", "## Assertions", ""]
    texts = list(dict.fromkeys(text for p in points for text in p.assertions))
    if texts:
        lines += ["Seeds passing each assertion, per point.", ""]
        lines += ["| point | " + " | ".join(f"`{t}`" for t in texts) + " |", "|---|" + "---|" * len(texts)]
        for p in points:
            cells = [_status_cell(p.assertions.get(t, Counter())) for t in texts]
            lines.append(f"| `{point_label(p.point)}` | " + " | ".join(cells) + " |")
    else:
        lines.append("No assertions in this scenario.")
    lines += ["", "## Metrics", "", "Mean over seeds, with (min to max) when there are several.", ""]
    lines += ["| metric | " + " | ".join(f"`{point_label(p.point)}`" for p in points) + " |"]
    lines += ["|---|" + "---|" * len(points)]
    for metric in all_metrics(points):
        unit = metric_unit(metric)
        cells = [_cell(p.metrics.get(metric), unit) for p in points]
        lines.append(f"| `{metric}` | " + " | ".join(cells) + " |")
    lines += ["", "`sweep.csv` has every metric's mean, standard deviation, min and max per point.", ""]
    lines += ["## Plots", ""]
    for plot in plots:
        lines += [f"### [{plot.name}]({plot.name})", "", f"![{plot.name}]({plot.name})", ""]
    if not plots:
        lines += ["No metric to plot.", ""]
    lines += ["## Runs", "", "| point | seed | assertions | digest | report |", "|---|---|---|---|---|"]
    for record in summary.records:
        run = record.run
        link = f"[report]({run.rel_dir.as_posix()}/report.md)"
        if record.metrics is None:
            lines.append(f"| `{run.label}` | {run.seed} | **error** | - | - |")
            continue
        counts = counts_text(record.metrics.get("assertion_counts", {}))
        if record.metrics.get("stopped"):
            counts = f"**stopped early**: {counts}"
        lines.append(
            f"| `{run.label}` | {run.seed} | {counts} | `{record.metrics['digest'][:12]}` | {link} |"
        )
    for record in stopped:
        assert record.metrics is not None
        lines += [
            "",
            f"### Stopped early: `{record.run.label}`, seed {record.run.seed}",
            "",
            f"{record.metrics['stopped']} (the run's report has what was measured until then; its "
            "`run.log` has the details)",
        ]
    for record in errors:
        lines += [
            "",
            f"### Error: `{record.run.label}`, seed {record.run.seed}",
            "",
            "```",
            record.error or "",
            "```",
        ]
    return "\n".join(lines) + "\n"


def _status_cell(counts: Counter[str]) -> str:
    total = sum(counts.values())
    if not total:
        return "-"
    cell = f"{counts['pass']}/{total} pass"
    if counts["fail"]:
        cell = f"**{cell}, {counts['fail']} fail**"
    if counts["unknown"]:
        cell += f", {counts['unknown']} unknown"
    return cell
