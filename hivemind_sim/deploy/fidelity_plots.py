"""The fidelity report's plots: each world's runs drawn on shared axes, simulated solid, deployed dashed.

Styled as a run report's plots (``scenario.results.plots``: its figure size, CDF drawing, tick formats
and "not observed" panels), with one colour and one line style per world so the two read apart
in print too. Built on the Agg canvas without pyplot, matplotlib imported only when drawn.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..scenario.results.plots import (
    EVENT_LABELS,
    NOT_OBSERVED,
    _cdf,
    _legend_outside,
    _log_125,
    _no_labels,
    _not_observed,
    _save,
    _spans_decades,
    _time_unit,
    _value_scale,
    duration_ticks,
    new_figure,
)
from .fidelity import WORLDS, FidelityResult, FigureResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ..scenario.run.runner import RunResult

FIDELITY_PLOTS = (
    "fidelity_latency_cdf.png",
    "fidelity_step_time.png",
    "fidelity_loss.png",
    "fidelity_differences.png",
)
LATENCY_EVENTS = ("dht.lookup", "dht.get", "dht.store", "moe.step")
STYLE = {"simulated": {"color": "C0", "linestyle": "-"}, "deployed": {"color": "C1", "linestyle": "--"}}
WHISKERS = (5, 95)  # step-time boxes: whiskers at these percentiles, no outliers drawn
RELATIVE_CLIP = 1.0  # difference dots stop at 100%; the label gives the real figure


def write_fidelity_plots(out: Path, result: FidelityResult) -> list[Path]:
    """The four PNGs into ``out``; returns their paths in FIDELITY_PLOTS order."""
    figures = [latency_cdfs(result), step_times(result), loss_over_time(result), differences(result)]
    title = f"{result.scenario}, seeds " + ", ".join(map(str, result.seeds))
    paths = []
    for fig, name in zip(figures, FIDELITY_PLOTS, strict=True):
        fig.suptitle(title, fontsize="small", color="gray", x=0.99, ha="right")
        paths.append(_save(fig, out / name))
    return paths


def _worlds(result: FidelityResult) -> list[tuple[str, tuple[RunResult, ...]]]:
    return list(zip(WORLDS, (result.simulated, result.deployed), strict=True))


def _latencies(runs: tuple[RunResult, ...], event: str) -> np.ndarray:
    """Every latency of ``event`` in these runs, pooled (failed operations included, as in a run report)."""
    pooled = [cols[2] for run in runs if (cols := run.recorder.event_columns(event)) is not None]
    lat = np.concatenate(pooled) if pooled else np.empty(0)
    return lat[~np.isnan(lat)]


def latency_cdfs(result: FidelityResult) -> Figure:
    """One panel per latency event either world measured: all seeds pooled, one curve per world."""
    from matplotlib.figure import Figure

    events = [e for e in LATENCY_EVENTS if any(_latencies(runs, e).size for _, runs in _worlds(result))]
    if not events:
        fig, ax = new_figure("Latency CDFs, simulated vs deployed")
        return _not_observed(fig, ax)
    cols = min(2, len(events))
    rows = math.ceil(len(events) / cols)
    fig = Figure(figsize=(9 if cols == 1 else 13, 1 + 4.6 * rows), dpi=110, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, event in zip(axes, events, strict=False):
        ax.set_title(f"{EVENT_LABELS[event]}: latency CDF, all seeds pooled")
        ax.grid(True, alpha=0.3)
        pooled = []
        for world, runs in _worlds(result):
            lat = _latencies(runs, event)
            if lat.size:
                _cdf(ax, lat, label=world, **STYLE[world])
                pooled.append(lat)
            else:
                ax.plot([], [], label=f"{world}: not measured", **STYLE[world])
        _latency_axis(ax, np.concatenate(pooled), vertical=False)
        ax.set_ylabel("fraction of operations at or below")
        ax.set_ylim(0, 1.02)
        _legend_outside(ax, below=True)
    for ax in axes[len(events) :]:
        ax.set_axis_off()
    return fig


def _latency_axis(ax: Axes, values: np.ndarray, *, vertical: bool, name: str = "latency") -> None:
    """Durations on the x (or y) axis, logarithmic when they span decades, as a run report's CDF."""
    axis = ax.yaxis if vertical else ax.xaxis
    log = _spans_decades(values)
    if log:
        (ax.set_yscale if vertical else ax.set_xscale)("log")
        axis.set_major_locator(_log_125())
        axis.set_minor_formatter(_no_labels())
    axis.set_major_formatter(duration_ticks())
    label = f"{name} (log scale)" if log else name
    (ax.set_ylabel if vertical else ax.set_xlabel)(label)


def step_times(result: FidelityResult) -> Figure:
    """Training step time, one pair of boxes per seed: median line, quartile box, 5-95% whiskers."""
    from matplotlib.patches import Patch

    fig, ax = new_figure("DMoE training step time per seed, simulated vs deployed")
    per_world = {world: [_latencies((run,), "moe.step") for run in runs] for world, runs in _worlds(result)}
    if not any(lat.size for lats in per_world.values() for lat in lats):
        return _not_observed(fig, ax)
    handles = []
    for offset, world in zip((-0.2, 0.2), WORLDS, strict=True):
        color = STYLE[world]["color"]
        drawn = [(i + offset, lat) for i, lat in enumerate(per_world[world]) if lat.size]
        missing = [i + offset for i, lat in enumerate(per_world[world]) if not lat.size]
        if drawn:
            positions, data = zip(*drawn, strict=True)
            ax.boxplot(
                data,
                positions=positions,
                widths=0.35,
                whis=WHISKERS,
                showfliers=False,
                patch_artist=True,
                boxprops={"facecolor": color, "alpha": 0.35, "edgecolor": color},
                medianprops={"color": color, "linewidth": 2, "linestyle": STYLE[world]["linestyle"]},
                whiskerprops={"color": color},
                capprops={"color": color},
            )
        for x in missing:
            ax.text(
                x,
                0.5,
                "not measured",
                transform=ax.get_xaxis_transform(),
                rotation=90,
                ha="center",
                va="center",
                color=color,
                fontsize="small",
            )
        handles.append(Patch(facecolor=color, alpha=0.35, edgecolor=color, label=world))
    ax.set_xticks(range(len(result.seeds)), [f"seed {s}" for s in result.seeds])
    ax.set_xlim(-0.6, len(result.seeds) - 0.4)
    pooled = np.concatenate([lat for lats in per_world.values() for lat in lats])
    _latency_axis(ax, pooled, vertical=True, name="step time")
    ax.set_xlabel(f"box: quartiles and median; whiskers: {WHISKERS[0]}-{WHISKERS[1]}th percentiles")
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return fig


def loss_over_time(result: FidelityResult) -> Figure:
    """Each world's loss per sample interval, averaged over its seeds; the band is the seeds' min..max."""
    fig, ax = new_figure("Training loss over time: mean over seeds, band from lowest to highest seed")
    runs = [run for _, world_runs in _worlds(result) for run in world_runs]
    end = max(run.recorder.end_time() for run in runs)
    dt = result.simulated[0].recorder.sample_interval
    edges = np.arange(0.0, end + dt, dt)
    if edges.size < 2:
        edges = np.array([0.0, dt])
    scale, unit = _time_unit(end)
    centres = (edges[:-1] + edges[1:]) / 2 / scale
    drawn = []
    for world, world_runs in _worlds(result):
        per_seed = np.array([_binned_loss(run, edges) for run in world_runs])
        counts = np.sum(~np.isnan(per_seed), axis=0)
        if not counts.any():
            ax.plot([], [], label=f"{world}: no loss measured", **STYLE[world])
            continue
        with np.errstate(invalid="ignore"):
            mean = np.nansum(per_seed, axis=0) / counts
        low, high = np.fmin.reduce(per_seed, axis=0), np.fmax.reduce(per_seed, axis=0)
        ax.fill_between(centres, low, high, color=STYLE[world]["color"], alpha=0.15, linewidth=0)
        label = f"{world} (mean of {len(world_runs)} seed(s))"
        ax.plot(centres, mean, linewidth=2, label=label, **STYLE[world])
        drawn.append(per_seed[~np.isnan(per_seed)])
    if not drawn:
        return _not_observed(fig, ax)
    values = np.concatenate(drawn)
    if _value_scale(values) == "log":
        ax.set_yscale("log")
        ax.set_ylabel("loss (log scale)")
    else:
        ax.set_ylabel("loss")
    ax.set_xlim(0, end / scale)
    ax.set_xlabel(f"time since the measured window started ({unit})")
    _legend_outside(ax)
    return fig


def _binned_loss(run: RunResult, edges: np.ndarray) -> np.ndarray:
    """A run's mean finite loss in each interval [edges[i], edges[i+1]); NaN where it has none."""
    out = np.full(edges.size - 1, np.nan)
    cols = run.recorder.value_columns("train.loss")
    if cols is None:
        return out
    t, v = cols
    keep = np.isfinite(v)
    idx = np.clip(np.searchsorted(edges, t[keep], side="right") - 1, 0, out.size - 1)
    counts = np.bincount(idx, minlength=out.size)
    sums = np.bincount(idx, weights=v[keep], minlength=out.size)
    seen = counts > 0
    out[seen] = sums[seen] / counts[seen]
    return out


def differences(result: FidelityResult) -> Figure:
    """Each figure's difference per seed (dots), their mean (diamond) and the tolerance (red bar):
    relative figures on the left, absolute ones (success rates, in percentage points) on the right."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    panels = [
        ("relative", "relative difference |deployed - simulated| / simulated"),
        ("absolute", "absolute difference (percentage points)"),
    ]
    panels = [(kind, label) for kind, label in panels if any(f.check.kind == kind for f in result.figures)]
    if not panels:
        fig, ax = new_figure("Differences, simulated vs deployed")
        ax.text(0.5, 0.5, NOT_OBSERVED, transform=ax.transAxes, ha="center", va="center", color="gray")
        return fig
    rows = max(sum(1 for f in result.figures if f.check.kind == kind) for kind, _ in panels)
    fig = Figure(figsize=(7 * len(panels), 1.6 + 0.45 * rows), dpi=110, layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False).ravel()
    for ax, (kind, label) in zip(axes, panels, strict=True):
        figures = [f for f in result.figures if f.check.kind == kind]
        clip = RELATIVE_CLIP if kind == "relative" else 1.0
        for row, figure in enumerate(figures):
            _difference_row(ax, row, figure, clip)
        ax.set_yticks(range(len(figures)), [f.check.key for f in figures], fontsize="small")
        ax.set_ylim(len(figures) - 0.5, -0.5)
        ax.set_xlim(0, max(_xs(figures, clip), default=clip * 0.05) * 1.15 or 1.0)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0) if kind == "relative" else _pp_ticks())
        ax.set_xlabel(label)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_title("Differences: dots one seed each, diamond their mean, red bar the tolerance")
    return fig


def _xs(figures: list[FigureResult], clip: float) -> list[float]:
    """Every drawn x: differences (clipped) and tolerances, to fit the axis."""
    xs = [min(r.difference, clip) for f in figures for r in f.seeds if r.difference is not None]
    return xs + [f.check.tolerance for f in figures if f.check.tolerance is not None]


def _difference_row(ax: Axes, row: int, figure: FigureResult, clip: float) -> None:
    diffs = np.array([r.difference for r in figure.seeds if r.difference is not None], dtype=float)
    if diffs.size:
        ax.plot(np.minimum(diffs, clip), np.full(diffs.size, row), "o", color="gray", alpha=0.7, markersize=5)
    if figure.mean_difference is not None:
        ax.plot(min(figure.mean_difference, clip), row, "D", color="black", markersize=7)
    tolerance = figure.check.tolerance
    if tolerance is not None:
        ax.plot([tolerance, tolerance], [row - 0.35, row + 0.35], color="C3", linewidth=2.5)
    words = {"pass": "pass", "fail": "FAIL", "unknown": "unknown", "reported": "reported"}[figure.verdict]
    if diffs.size and diffs.max() > clip:
        words += ", beyond the axis"
    ax.text(
        1.0,
        row,
        f" {words}",
        transform=ax.get_yaxis_transform(),
        va="center",
        fontsize="small",
        color="C3" if figure.verdict in ("fail", "unknown") else "black",
    )


def _pp_ticks():  # returns a matplotlib ticker (imported lazily)
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _pos: f"{x * 100:g} pp")
