"""A sweep's plots: one `sweep_<metric>.png` per plotted metric, the metric against the first
swept axis, with its spread across seeds and the assertions' thresholds."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..format.names import describe_metric, metric_unit
from ..run.sweep_plan import Point, point_label, safe_name
from .assertions import format_value
from .sweep_summary import PointSummary, SweepSummary, all_metrics, run_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HEADLINE_METRICS = (
    "dht.get.success_rate",
    "dht.get.p99",
    "moe.step.success_rate",
    "moe.step.p99",
    "train.loss.final",
    "peers.alive.mean",
)
MAX_PLOTS = 12


def plotted_metrics(summary: SweepSummary) -> list[str]:
    """The metrics assertions name (as written), then the headline ones, when observed."""
    observed = set(all_metrics(summary.points))
    wanted = []
    for record in summary.records:
        for a in (record.metrics or {}).get("assertions", []):
            wanted.append(f"{a['metric']} during {a['during']}" if a.get("during") else a["metric"])
    wanted += HEADLINE_METRICS
    return [m for m in dict.fromkeys(wanted) if m in observed][:MAX_PLOTS]


def write_sweep_plots(summary: SweepSummary) -> list[Path]:
    paths = []
    for metric in plotted_metrics(summary):
        fig = sweep_figure(summary, metric)
        path = summary.out / f"sweep_{safe_name(metric)}.png"
        fig.savefig(path, metadata={"Software": None})
        paths.append(path)
    return paths


def sweep_figure(summary: SweepSummary, metric: str) -> Figure:
    """The metric against the first axis: the mean with min-max bars, each seed a dot beside it,
    one line per combination of the other axes, assertion thresholds dashed."""
    from .plots import new_figure

    x_key, x_values = summary.axes[0] if summary.axes else ("", ["base"])
    title = describe_metric(metric)
    fig, ax = new_figure(f"{title} vs {x_key}" if x_key else title)
    note = f"sweep of {summary.name}, {summary.seeds} seed(s) per point"
    fig.suptitle(note, fontsize="small", color="gray", x=0.99, ha="right")
    series: dict[Point, list[PointSummary]] = {}
    for p in summary.points:
        series.setdefault(p.point[1:], []).append(p)
    width = 0.3 / len(series)
    singles = _seed_values(summary, metric)
    observed = [v for values in singles.values() for v in values if math.isfinite(v)]
    scale, y_unit = _y_scale(metric, observed)
    for index, (rest, group) in enumerate(series.items()):
        color = f"C{index % 10}"
        offset = (index - (len(series) - 1) / 2) * width
        xs, means, lows, highs = [], [], [], []
        for p in group:
            s = p.metrics.get(metric)
            if s is None:
                continue
            x = (x_values.index(p.point[0][1]) if p.point else 0) + offset
            dots = [v / scale for v in singles.get(p.slug, [])]
            ax.scatter([x + width / 4] * len(dots), dots, s=14, color=color, alpha=0.45, linewidths=0)
            xs.append(x)
            means.append(s.mean / scale)
            lows.append((s.mean - s.min) / scale)
            highs.append((s.max - s.mean) / scale)
        if xs:
            label = f"{point_label(rest)}: mean" if rest else "mean over seeds"
            ax.errorbar(xs, means, yerr=[lows, highs], color=color, marker="o", capsize=4, label=label)
    ax.errorbar([], [], yerr=[], color="gray", capsize=4, linestyle="none", label="min to max over seeds")
    ax.scatter([], [], s=14, color="gray", alpha=0.6, linewidths=0, label="one seed")
    low, high = min(observed, default=0.0), max(observed, default=1.0)
    margin = max(high - low, abs(high) * 0.5, 1e-9)
    for threshold, op in _thresholds(summary, metric):
        label = f"assertion: {op} {format_value(threshold, metric_unit(metric))}"
        if low - 2 * margin <= threshold <= high + 2 * margin:
            ax.axhline(threshold / scale, color="red", linestyle="--", linewidth=1, label=label)
        else:  # drawing it would squash the data into a line
            ax.plot([], [], color="red", linestyle="--", linewidth=1, label=f"{label} (off the chart)")
    ax.set_xticks(range(len(x_values)), x_values, rotation=30 if max(map(len, x_values)) > 8 else 0)
    ax.set_xlim(-0.5, len(x_values) - 0.5)
    ax.set_xlabel(f"{x_key} (swept value)" if x_key else "nothing swept")
    name = metric.partition(" during ")[0]
    if metric_unit(metric) == "fraction":
        from matplotlib.ticker import PercentFormatter

        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    elif y_unit and low >= 0:
        ax.set_ylim(bottom=0)  # latencies: from zero, where a reader expects them
    ax.set_ylabel(f"{name} ({y_unit})" if y_unit else name)
    handles, labels = ax.get_legend_handles_labels()
    rank = {"min to max over seeds": 1, "one seed": 2}
    order = sorted(
        range(len(labels)), key=lambda i: rank.get(labels[i], 3 if "assertion" in labels[i] else 0)
    )
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
        frameon=False,
    )
    return fig


def _seed_values(summary: SweepSummary, metric: str) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for record in summary.records:
        if record.metrics is not None:
            value = run_metrics(record.metrics).get(metric)
            if value is not None:
                values.setdefault(record.run.slug, []).append(value)
    return values


def _thresholds(summary: SweepSummary, metric: str) -> list[tuple[float, str]]:
    found: dict[tuple[float, str], None] = {}
    for record in summary.records:
        for a in (record.metrics or {}).get("assertions", []):
            name = f"{a['metric']} during {a['during']}" if a.get("during") else a["metric"]
            if name == metric:
                found[(float(a["threshold"]), a["op"])] = None
    return list(found)


def _y_scale(metric: str, values: Sequence[float]) -> tuple[float, str]:
    """(divisor, unit) for the y axis: latencies in ms, s or min by their size, others as they are."""
    if metric_unit(metric) != "s":
        return 1.0, ""
    top = max((abs(v) for v in values), default=0.0)
    if top < 1.0:
        return 1e-3, "ms"
    return (1.0, "s") if top < 180.0 else (60.0, "min")
