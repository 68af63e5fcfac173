"""Two run reports side by side: a reference (A) and a new run (B).

Everything comes from the report folders' files (scenario.yaml, metrics.json, timeseries.csv,
events.csv), so any two reports compare, whatever wrote them and whenever. The markdown names
what changed: every key of the resolved scenarios whose value differs (what the runs were told to
do differently: a `--set`, a seed, an edited file), whether the trace digests are equal (the same
simulation, event for event), each assertion whose status moved, and every summary metric with
its difference; the plots show the runs' time series on shared axes and each metric's relative
change.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ..format.names import describe_metric, metric_unit
from .assertions import format_duration
from .plots import duration_ticks, integer_ticks
from .report import counts_text
from .sweep_report import show
from .sweep_summary import assertion_text, run_metrics

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SERIES = (  # timeseries.csv column, panel title
    ("peers.alive", "alive peers"),
    ("dht.get.success_rate", "DHT get success rate"),
    ("moe.step.success_rate", "training step success rate"),
    ("train.loss.mean", "training loss (mean per interval)"),
    ("dht.get.p50", "DHT get latency p50"),
    ("moe.step.p50", "training step latency p50"),
)
MAX_PANELS = 4
RELATIVE_CLIP = 1.0  # bars stop at +-100%; the label gives the real figure
ABSENT = "(absent)"
_MISSING = object()


class CompareError(ValueError):
    """A folder that is not a report (no readable metrics.json)."""


@dataclass
class Report:
    """A report folder's files, as read back."""

    path: Path
    metrics: dict[str, Any]
    series: dict[str, list[float | None]]
    windows: list[tuple[str, float, float]]
    scenario: str | None
    """The resolved scenario.yaml's text; None when the folder has none."""

    @property
    def title(self) -> str:
        return f"{self.metrics.get('name', '?')}, seed {self.metrics.get('seed', '?')}"


def read_report(folder: str | Path) -> Report:
    """A report folder (or its metrics.json); raises ``CompareError`` naming the path."""
    path = Path(folder)
    if path.is_file():
        path = path.parent
    metrics_path = path / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_text())
    except FileNotFoundError:
        raise CompareError(
            f"{path}: no metrics.json here; give a report folder (`hivemind-sim run`)"
        ) from None
    except (OSError, ValueError) as error:
        raise CompareError(f"{metrics_path}: cannot read it: {error}") from None
    if not isinstance(metrics, dict) or not isinstance(metrics.get("summary"), dict):
        raise CompareError(f"{metrics_path}: not a run's metrics (no `summary`)")
    series, windows = _read_series(path / "timeseries.csv"), _read_windows(path / "events.csv")
    return Report(path, metrics, series, windows, _read_text(path / "scenario.yaml"))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _read_series(path: Path) -> dict[str, list[float | None]]:
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = rows[0].keys() if rows else []
    return {c: [float(r[c]) if r[c] not in ("", None) else None for r in rows] for c in columns}


def _read_windows(path: Path) -> list[tuple[str, float, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [(r["name"], float(r["start_s"]), float(r["end_s"])) for r in csv.DictReader(f)]


# ---- what the scenarios asked for -----------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """A key of the resolved scenarios, as `--set` names it (`peers.dht.count`), with each side's
    value as YAML text (``ABSENT`` where that side has no such key)."""

    key: str
    a: str
    b: str


def scenario_differences(text_a: str, text_b: str) -> list[Difference]:
    """Every key whose value differs between two resolved scenario.yaml texts, in file order.

    Items of a list are named as `--set` names them: by their `group` or `name` when every item
    has a distinct one (so inserting a peer group does not shift the others), else by index; a
    list of numbers (`grid: [8, 8]`) is one value. Raises ``ValueError`` for text that is not a
    YAML mapping."""
    flat_a, flat_b = _flatten(_mapping(text_a)), _flatten(_mapping(text_b))
    keys = dict.fromkeys([*flat_a, *flat_b])
    return [
        Difference(key, _yaml_text(flat_a.get(key, _MISSING)), _yaml_text(flat_b.get(key, _MISSING)))
        for key in keys
        if flat_a.get(key, _MISSING) != flat_b.get(key, _MISSING)
    ]


def _mapping(text: str) -> Mapping[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"not valid YAML: {error}") from None
    if not isinstance(data, Mapping):
        raise ValueError("not a scenario (a YAML mapping)")
    return data


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        items = [(str(key), item) for key, item in value.items()]
    elif isinstance(value, list) and value and not all(_is_number(item) for item in value):
        items = list(zip(_item_names(value), value, strict=True))
    else:
        return {prefix: value}
    flat: dict[str, Any] = {}
    for name, item in items:
        flat.update(_flatten(item, f"{prefix}.{name}" if prefix else name))
    return flat


def _item_names(items: list[Any]) -> list[str]:
    names = [item.get("group", item.get("name")) if isinstance(item, Mapping) else None for item in items]
    if all(isinstance(name, str) for name in names) and len(set(names)) == len(names):
        return names
    return [str(index) for index in range(len(items))]


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _yaml_text(value: Any) -> str:
    if value is _MISSING:
        return ABSENT
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=1_000_000).removesuffix("\n...\n").strip()


def differences_line(differences: list[Difference], most: int = 3) -> str:
    """`duration: 2 min -> 1 min, seed: 0 -> 1 and 2 more`, for a one-line message."""
    shown = ", ".join(f"{d.key}: {d.a} -> {d.b}" for d in differences[:most])
    return shown + (f" and {len(differences) - most} more" if len(differences) > most else "")


# ---- markdown ---------------------------------------------------------------------------------------------


def compare_reports(dir_a: str | Path, dir_b: str | Path) -> str:
    """Markdown: both runs' identity and digest, assertion status changes, every summary metric
    with B - A; raises ``CompareError`` when a folder is not a report."""
    return _markdown(read_report(dir_a), read_report(dir_b))


def _markdown(a: Report, b: Report) -> str:
    ma, mb = a.metrics, b.metrics
    same = ma.get("digest") == mb.get("digest")
    lines = [f"# Comparison: A = {a.title}, B = {b.title}", ""]
    lines += ["| | A | B |", "|---|---|---|"]
    lines += [f"| folder | `{a.path}` | `{b.path}` |"]
    for key in ("name", "seed", "digest"):
        lines.append(f"| {key} | `{ma.get(key, '-')}` | `{mb.get(key, '-')}` |")
    counts = [counts_text(m.get("assertion_counts", {})) for m in (ma, mb)]
    lines.append(f"| assertions | {counts[0]} | {counts[1]} |")
    if "wall_s" in ma or "wall_s" in mb:
        lines.append(f"| wall time | {_wall(ma)} | {_wall(mb)} |")
    lines += [""]
    if same:
        lines.append("Trace digests are **equal**: the two runs are the same simulation, event for event.")
    else:
        lines.append("Trace digests **differ**: the runs took different courses.")
    lines += ["", "## Scenario", ""]
    lines += _scenario_lines(a, b, same)
    lines += ["", "## Assertions", ""]
    lines += _assertion_lines(ma.get("assertions", []), mb.get("assertions", []))
    va, vb = run_metrics(ma), run_metrics(mb)
    keys = sorted(set(va) | set(vb))
    changed = sum(1 for k in keys if not _equal(va.get(k), vb.get(k)))
    lines += ["", "## Metrics", "", f"{changed} of {len(keys)} summary metrics differ.", ""]
    lines += ["| metric | A | B | B - A | change |", "|---|---|---|---|---|"]
    for key in keys:
        x, y, unit = va.get(key), vb.get(key), metric_unit(key)
        cells = [_value(x, unit), _value(y, unit), _difference(x, y, unit), _relative(x, y)]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _scenario_lines(a: Report, b: Report, same_digest: bool) -> list[str]:
    """What the runs were asked to do differently: the resolved scenarios' differing keys."""
    missing = [f"{run} ({report.path})" for run, report in (("A", a), ("B", b)) if report.scenario is None]
    if missing:
        return [f"No `scenario.yaml` in {' and '.join(missing)}: what the runs were asked to do is unknown."]
    assert a.scenario is not None and b.scenario is not None
    try:
        differences = scenario_differences(a.scenario, b.scenario)
    except ValueError as error:
        return [f"The `scenario.yaml` files cannot be compared: {error}."]
    if not differences:
        why = "" if same_digest else " (the difference comes from the simulator: another version, or a bug)"
        return [f"The resolved scenarios are **identical**{why}."]
    lines = [f"{len(differences)} key(s) of the resolved scenarios differ (`--set` paths):", ""]
    lines += ["| key | A | B |", "|---|---|---|"]
    lines += [f"| `{d.key}` | `{_cell(d.a)}` | `{_cell(d.b)}` |" for d in differences]
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")


def _wall(metrics: dict[str, Any]) -> str:
    return format_duration(float(metrics["wall_s"])) if "wall_s" in metrics else "-"


def _assertion_lines(in_a: list[dict[str, Any]], in_b: list[dict[str, Any]]) -> list[str]:
    by_a = {assertion_text(x): x for x in in_a}
    by_b = {assertion_text(x): x for x in in_b}
    texts = list(dict.fromkeys([*by_a, *by_b]))
    if not texts:
        return ["Neither run has assertions."]
    lines = ["| assertion | A | B | change |", "|---|---|---|---|"]
    for text in texts:
        x, y = by_a.get(text), by_b.get(text)
        if x is None or y is None:
            change = "only in A" if y is None else "only in B"
        elif x["status"] == y["status"]:
            change = "same"
        else:
            change = f"**{x['status']} -> {y['status']}**"
        lines.append(f"| `{text}` | {_status(x)} | {_status(y)} | {change} |")
    return lines


def _status(assertion: dict[str, Any] | None) -> str:
    if assertion is None:
        return "-"
    observed = assertion.get("observed")
    if observed is None:
        return assertion["status"]
    return f"{assertion['status']} ({show(float(observed), metric_unit(assertion['metric']))})"


def _equal(x: float | None, y: float | None) -> bool:
    if x is None or y is None:
        return x is y
    return x == y or (math.isnan(x) and math.isnan(y))


def _value(x: float | None, unit: str) -> str:
    return "-" if x is None else show(x, unit)


def _difference(x: float | None, y: float | None, unit: str) -> str:
    if x is None or y is None or not (math.isfinite(x) and math.isfinite(y)):
        return "-"
    d = y - x
    if d == 0:
        return "="
    sign = "+" if d > 0 else "-"
    if unit == "fraction":
        return f"{sign}{abs(d) * 100:.3g} pp"
    return f"{sign}{show(abs(d), unit)}"


def _relative(x: float | None, y: float | None) -> str:
    if x is not None and _equal(x, y):
        return "="
    r = _ratio(x, y)
    if r is None:
        return "from 0" if x == 0 else "-"
    return _percent(r)


def _percent(r: float) -> str:
    return f"{r * 100:+,.0f}%" if abs(r) >= 10 else f"{r * 100:+.3g}%"


def _ratio(x: float | None, y: float | None) -> float | None:
    if x is None or y is None or x == 0 or not (math.isfinite(x) and math.isfinite(y)):
        return None
    return (y - x) / abs(x)


# ---- plots --------------------------------------------------------------------------------------------


def write_comparison(dir_a: str | Path, dir_b: str | Path, out: str | Path) -> list[Path]:
    """compare.md, compare.png (time series of both runs) and compare_metrics.png (relative
    change of each summary metric) into ``out``; returns their paths."""
    a, b = read_report(dir_a), read_report(dir_b)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / "compare.md", folder / "compare.png", folder / "compare_metrics.png"]
    paths[0].write_text(_markdown(a, b))
    timeseries_figure(a, b).savefig(paths[1], metadata={"Software": None})
    metrics_figure(a, b).savefig(paths[2], metadata={"Software": None})
    return paths


def timeseries_figure(a: Report, b: Report) -> Figure:
    """Up to four panels (alive peers, success rates, loss, latency): A solid, B dashed; fault
    windows shaded, grey when both runs had the same ones, else in each run's colour."""
    from matplotlib.figure import Figure

    panels = [s for s in SERIES if _has(a, s[0]) or _has(b, s[0])][:MAX_PANELS]
    fig = Figure(figsize=(12, 1 + 3.2 * max(1, math.ceil(len(panels) / 2))), dpi=100, layout="constrained")
    fig.suptitle(f"A = {a.title} (solid)   vs   B = {b.title} (dashed)")
    if not panels:
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no time series in either report", ha="center", va="center", color="gray")
        return fig
    axes = fig.subplots(math.ceil(len(panels) / 2), min(2, len(panels)), squeeze=False).ravel()
    end = max(t or 0.0 for t in [0.0, *a.series.get("time", []), *b.series.get("time", [])])
    scale, unit_name = (60.0, "min") if end > 180 else (1.0, "s")
    shared = a.windows == b.windows
    for ax, (column, title) in zip(axes, panels, strict=False):
        if shared:
            _shade(ax, a.windows, scale, color="gray", run="A and B")
        else:
            _shade(ax, a.windows, scale, color="C0", run="A")
            _shade(ax, b.windows, scale, color="C1", run="B")
        values = []
        for report, style, color, run in ((a, "-", "C0", "A"), (b, "--", "C1", "B")):
            times, column_values = report.series.get("time"), report.series.get(column)
            if times is None or column_values is None:
                continue
            points = [(t / scale, v) for t, v in zip(times, column_values, strict=True) if v is not None]
            if points:
                ax.plot(
                    *zip(*points, strict=True), linestyle=style, color=color, label=f"{run}: {report.title}"
                )
                values += [v for _, v in points]
        ax.set_title(title)
        ax.set_xlabel(f"time in the measured window ({unit_name})")
        _format_axis(ax, metric_unit(column), column, values)
        ax.grid(True, alpha=0.3)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    legend: dict[str, Any] = {}
    for ax in axes[: len(panels)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=min(4, len(legend)))
    return fig


def _has(report: Report, column: str) -> bool:
    return any(v is not None for v in report.series.get(column, []))


def _shade(ax: Axes, windows: list[tuple[str, float, float]], scale: float, *, color: str, run: str) -> None:
    for name, start, end in windows:
        label = f"fault window in {run}: {name}"
        ax.axvspan(start / scale, end / scale, color=color, alpha=0.15, linewidth=0, label=label)


def _format_axis(ax: Axes, unit: str, column: str, values: list[float]) -> None:
    from matplotlib.ticker import PercentFormatter

    if unit == "fraction":
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        low = min(values, default=0.0)
        ax.set_ylim(max(0.0, low - 0.05), 1.02)
    elif unit == "s":
        ax.yaxis.set_major_formatter(duration_ticks())
        ax.set_ylim(bottom=0)
    elif column.startswith("peers.alive"):
        ax.yaxis.set_major_locator(integer_ticks())
        ax.set_ylabel("peers")


def metrics_figure(a: Report, b: Report) -> Figure:
    """One bar per whole-run summary metric: (B - A) / |A|, clipped at +-100% (the label says
    the values); metrics unchanged are grey, A = 0 or missing ones are named without a bar."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    va, vb = a.metrics["summary"], b.metrics["summary"]
    keys = sorted(set(va) | set(vb))
    fig = Figure(figsize=(11, 1.2 + 0.28 * max(1, len(keys))), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(f"Change of each summary metric from A ({a.title}) to B ({b.title})", fontsize="medium")
    for row, key in enumerate(keys):
        x, y = _number(va.get(key)), _number(vb.get(key))
        ratio = _ratio(x, y)
        unit = metric_unit(key)
        text = f"{_value(x, unit)} -> {_value(y, unit)}"
        if ratio is None or _equal(x, y):
            why = "unchanged" if _equal(x, y) else ("from 0" if x == 0 else "no ratio")
            ax.text(0.02, row, f"{text} ({why})", va="center", fontsize="x-small", color="gray")
            continue
        clipped = max(-RELATIVE_CLIP, min(RELATIVE_CLIP, ratio))
        ax.barh(row, clipped, color="C0" if ratio else "lightgray", height=0.6)
        beyond = " (beyond the axis)" if clipped != ratio else ""
        side = -1 if clipped > 0 else 1  # the label sits on the side of zero away from the bar
        ax.text(
            0.02 * side,
            row,
            f"{_percent(ratio)}: {text}{beyond}",
            va="center",
            ha="right" if side < 0 else "left",
            fontsize="x-small",
        )
    ax.set_yticks(range(len(keys)), [describe_metric(k) for k in keys], fontsize="small")
    ax.invert_yaxis()
    ax.set_xlim(-RELATIVE_CLIP * 1.05, RELATIVE_CLIP * 1.05)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("(B - A) / |A|")
    ax.grid(True, axis="x", alpha=0.3)
    return fig


def _number(value: Any) -> float | None:
    return None if value is None else float(value)
