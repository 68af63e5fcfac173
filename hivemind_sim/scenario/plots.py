"""The report's five PNG plots, drawn from a Recorder.

matplotlib is imported only when a plot is drawn (the `[sim]` extra; a run that writes no report
never pays for it), and figures are built with `matplotlib.figure.Figure` on the Agg canvas, so
no pyplot state or GUI backend is involved. Every plot over time shades the fault windows and
names them; a plot with nothing to show says "not observed in this scenario" instead of an
empty axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .assertions import format_duration
from .metrics import Recorder, Window
from .names import COUNTERS, EVENTS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOTS = (
    "alive_peers.png",
    "lookup_latency_cdf.png",
    "success_rates.png",
    "training_loss.png",
    "expert_failures.png",
)
LOOKUP_EVENTS = ("dht.get", "dht.store", "dht.lookup")
SUCCESS_EVENTS = ("dht.get", "dht.store", "moe.step", "moe.expert_call")
EVENT_LABELS = {**EVENTS, "dht.lookup": "DHT lookup (random id, to convergence)"}
FAILURE_COUNTERS = {name: COUNTERS[name] for name in ("moe.expert_failures", "moe.bans")}
# fault windows: colours unlike the data lines (tab10's first four and black)
WINDOW_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f")
MAX_SCATTER = 5000  # loss points drawn; more only blur into a band
MAX_CDF_POINTS = 4000
NOT_OBSERVED = "not observed in this scenario"
LABEL_ROW = 0.07  # height of one row of fault-window labels, as a fraction of the axes

Rows = list[dict[str, float | None]]


def write_plots(out_dir: Path, recorder: Recorder, *, rows: Rows | None = None, run: str = "") -> list[Path]:
    """Writes the five PNGs into out_dir; returns their paths in PLOTS order.

    rows: `recorder.timeseries()` if the caller has it already (it is not free on big runs);
    run: what the run was ("quickstart, seed 0"), shown under each title.
    """
    rows = recorder.timeseries() if rows is None else rows
    figures = [
        alive_peers(recorder),
        lookup_latency_cdf(recorder),
        success_rates(recorder, rows),
        training_loss(recorder, rows),
        expert_failures(recorder, rows),
    ]
    paths = []
    for fig, name in zip(figures, PLOTS, strict=True):
        if run:
            fig.suptitle(run, fontsize="small", color="gray", x=0.99, ha="right")
        paths.append(_save(fig, out_dir / name))
    return paths


def alive_peers(recorder: Recorder) -> Figure:
    # sampled: a crash shows at the first sample after it, up to one interval late
    fig, ax = new_figure(f"Alive peers over time (counted every {format_duration(recorder.sample_interval)})")
    scale, unit = _time_unit(recorder.end_time())
    names = recorder.names()["gauges"]
    total = "peers.alive"
    groups = [n for n in names if n.startswith(total + ".")]
    if total not in names and not groups:
        return _not_observed(fig, ax)
    # groups of equal size draw on top of each other: no group line is solid and each is
    # thinner than the one before, so every one shows around and through the later ones
    dashes = ("--", "-.", ":", (0, (6, 2, 1, 2, 1, 2)))
    for index, name in enumerate([total, *groups] if total in names else groups):
        t, v = recorder.gauge_columns(name)  # type: ignore[misc]
        label = "all peers" if name == total else f"group {name[len(total) + 1 :]}"
        width = 1.2 + 2.4 * (len(groups) - index) / len(groups) if groups else 1.6
        style = (
            {"color": "black", "linewidth": 2.2}
            if name == total
            else {"linewidth": width, "linestyle": dashes[index % len(dashes)]}
        )
        ax.step(t / scale, v, where="post", label=label, **style)
    ax.set_ylim(bottom=0)
    ax.set_xlim(0, recorder.end_time() / scale)
    ax.yaxis.set_major_locator(integer_ticks())
    ax.set_xlabel(f"time since the measured window started ({unit})")
    ax.set_ylabel("alive peers")
    _shade_windows(ax, recorder, scale)
    _legend_outside(ax)
    return fig


def lookup_latency_cdf(recorder: Recorder) -> Figure:
    fig, ax = new_figure("DHT lookup latency, CDF (failed lookups included)")
    drawn = False
    all_lat = []
    colors = _window_colors(recorder)
    for name in LOOKUP_EVENTS:
        cols = recorder.event_columns(name)
        if cols is None:
            continue
        t, _, lat = cols
        keep = ~np.isnan(lat)
        if not keep.any():
            continue
        linestyle = {"dht.get": "-", "dht.store": "--"}.get(name, ":")
        _cdf(ax, lat[keep], label=f"{EVENT_LABELS[name]}, whole run", color="black", linestyle=linestyle)
        all_lat.append(lat[keep])
        drawn = True
        if name != "dht.get":
            continue  # one line per fault window for gets only: more lines would be unreadable
        for w in _distinct_windows(recorder):
            inside = keep & recorder.during_mask(t, w.name)
            if inside.any():
                label = f"{EVENT_LABELS[name]}, during {w.name} ({w.action})"
                _cdf(ax, lat[inside], label=label, color=colors[w.name], linestyle="-")
    if not drawn:
        return _not_observed(fig, ax)
    lat = np.concatenate(all_lat)
    positive = lat[lat > 0]
    log = positive.size > 0 and positive.max() / positive.min() > 20
    if log:
        ax.set_xscale("log")
    label = "latency (log scale)" if log else "latency"
    if log and positive.size < lat.size:
        label += "; operations answered locally (0 s) start each curve above 0"
    ax.set_xlabel(label)
    if log:
        ax.xaxis.set_major_locator(_log_125())
        ax.xaxis.set_minor_formatter(_no_labels())
    ax.xaxis.set_major_formatter(duration_ticks())
    ax.set_ylabel("fraction of lookups at or below")
    ax.set_ylim(0, 1.02)
    _legend_outside(ax, below=True)
    return fig


def success_rates(recorder: Recorder, rows: Rows) -> Figure:
    dt = recorder.sample_interval
    fig, ax = new_figure(f"Success rate per {format_duration(dt)} interval")
    scale, unit = _time_unit(recorder.end_time())
    time = np.array([r["time"] for r in rows], dtype=float)
    summary = recorder.summary()
    drawn = False
    for i, name in enumerate(SUCCESS_EVENTS):
        key = f"{name}.success_rate"
        if key not in rows[0]:
            continue
        rate = np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)
        if np.isnan(rate).all():
            continue
        overall = summary.get(key)
        label = (
            f"{EVENT_LABELS[name]} (whole run {overall:.1%})" if overall is not None else EVENT_LABELS[name]
        )
        marker = "." if len(rows) <= 120 else None  # dots help only while intervals are wide apart
        ax.plot((time + dt / 2) / scale, rate * 100, marker=marker, markersize=4, color=f"C{i}", label=label)
        drawn = True
    if not drawn:
        return _not_observed(fig, ax)
    ax.set_ylim(-2, 102)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlim(0, recorder.end_time() / scale)
    ax.set_xlabel(f"time since the measured window started ({unit})")
    ax.set_ylabel("operations that succeeded (%)")
    _shade_windows(ax, recorder, scale)
    _legend_outside(ax)
    return fig


def training_loss(recorder: Recorder, rows: Rows) -> Figure:
    dt = recorder.sample_interval
    fig, ax = new_figure("Training loss over time")
    cols = recorder.value_columns("train.loss")
    if cols is None or not cols[0].size:
        return _not_observed(fig, ax)
    scale, unit = _time_unit(recorder.end_time())
    t, v = cols
    stride = max(1, t.size // MAX_SCATTER)
    ax.scatter(t[::stride] / scale, v[::stride], s=6, alpha=0.35, color="C0", label="one training step")
    time = np.array([r["time"] for r in rows], dtype=float)
    mean = np.array([np.nan if r["train.loss.mean"] is None else r["train.loss.mean"] for r in rows])
    ax.plot((time + dt / 2) / scale, mean, color="C3", linewidth=2, label=f"mean per {format_duration(dt)}")
    ax.set_xlim(0, recorder.end_time() / scale)
    ax.set_xlabel(f"time since the measured window started ({unit})")
    ax.set_ylabel("loss")
    _shade_windows(ax, recorder, scale)
    _legend_outside(ax)
    return fig


def expert_failures(recorder: Recorder, rows: Rows) -> Figure:
    dt = recorder.sample_interval
    fig, ax = new_figure(f"Expert failures and bans per {format_duration(dt)} interval")
    counters = [n for n in FAILURE_COUNTERS if n in recorder.names()["counters"]]
    summary = recorder.summary()
    trained = "moe.step" in recorder.names()["events"]
    if not counters or (not trained and all(summary[n + ".total"] == 0 for n in counters)):
        return _not_observed(fig, ax)  # no DMoE training here: zero failures would say nothing
    scale, unit = _time_unit(recorder.end_time())
    time = np.array([r["time"] for r in rows], dtype=float)
    edges = np.append(time, time[-1] + dt) / scale
    for name in counters:
        counts = np.array([r[name] for r in rows], dtype=float)
        label = f"{FAILURE_COUNTERS[name]} (total {summary[name + '.total']:.0f})"
        if name == "moe.expert_failures":
            ax.stairs(counts, edges, fill=True, color="C0", alpha=0.6, label=label)
        else:
            ax.stairs(counts, edges, color="black", linewidth=1.8, label=label)
    ax.set_xlim(0, recorder.end_time() / scale)
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(integer_ticks())
    if all(summary[n + ".total"] == 0 for n in counters):
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.5, "none in this run", transform=ax.transAxes, ha="center", va="center", color="gray")
    ax.set_xlabel(f"time since the measured window started ({unit})")
    ax.set_ylabel(f"count per {format_duration(dt)} interval")
    _shade_windows(ax, recorder, scale)
    _legend_outside(ax)
    return fig


# -- helpers -----------------------------------------------------------------------------------


def new_figure(title: str) -> tuple[Figure, Axes]:
    """A report-sized figure with one titled, gridded axes (sweep plots use it too)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4.8), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, metadata={"Software": None})
    return path


def _not_observed(fig: Figure, ax: Axes) -> Figure:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.text(
        0.5, 0.5, NOT_OBSERVED, transform=ax.transAxes, ha="center", va="center", fontsize=15, color="gray"
    )
    return fig


def _time_unit(span: float) -> tuple[float, str]:
    """Seconds for short runs, minutes up to 3 hours, hours beyond."""
    if span <= 180:
        return 1.0, "s"
    if span <= 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _distinct_windows(recorder: Recorder) -> list[Window]:
    """The first window of each event name, in order of appearance."""
    seen: dict[str, Window] = {}
    for w in recorder.windows:
        seen.setdefault(w.name, w)
    return list(seen.values())


def _window_colors(recorder: Recorder) -> dict[str, str]:
    return {w.name: WINDOW_COLORS[i % len(WINDOW_COLORS)] for i, w in enumerate(_distinct_windows(recorder))}


def _shade_windows(ax: Axes, recorder: Recorder, scale: float) -> None:
    """Shades each fault window and names it (with its action) in a band added above the data."""
    end = recorder.end_time()
    windows = recorder.windows
    if not windows:
        return
    rows = min(3, len(windows))
    bottom, top = ax.get_ylim()
    ax.set_ylim(bottom, top + (top - bottom) * LABEL_ROW * rows / (1 - LABEL_ROW * rows))
    colors = _window_colors(recorder)
    for i, w in enumerate(windows):
        stop = min(w.stop(), end)
        color = colors[w.name]
        if stop > w.start:
            ax.axvspan(w.start / scale, stop / scale, color=color, alpha=0.12, linewidth=0)
        else:  # instantaneous (e.g. a restart): a line
            ax.axvline(w.start / scale, color=color, linewidth=1.5, alpha=0.6)
        ax.text(
            w.start / scale,
            0.99 - LABEL_ROW * (i % 3),
            f" {w.name} ({w.action})",
            transform=ax.get_xaxis_transform(),
            ha="left",
            va="top",
            fontsize="small",
            color=color,
            fontweight="bold",
        )


def _cdf(ax: Axes, values: np.ndarray, *, label: str, color: str, linestyle: str) -> None:
    xs = np.sort(values)
    ys = np.arange(1, xs.size + 1) / xs.size
    p50, p99 = np.percentile(xs, [50, 99])
    if xs.size > MAX_CDF_POINTS:  # evenly spaced ranks draw the same curve
        ranks = np.linspace(0, xs.size - 1, MAX_CDF_POINTS).astype(np.int64)
        xs, ys = xs[ranks], ys[ranks]
    full = f"{label}: n={xs.size}, p50 {format_duration(p50)}, p99 {format_duration(p99)}"
    ax.step(xs, ys, where="post", color=color, linestyle=linestyle, label=full)


def _legend_outside(ax: Axes, *, below: bool = False) -> None:
    """Legends beside (or below) the axes never hide data; constrained layout makes room."""
    if below:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize="small", ncols=1, frameon=False)
    else:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def _no_labels():  # returns a matplotlib ticker (imported lazily)
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def integer_ticks():  # returns a matplotlib ticker (imported lazily)
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def _log_125():  # returns a matplotlib ticker (imported lazily)
    from matplotlib.ticker import LogLocator

    return LogLocator(base=10, subs=(1.0, 2.0, 5.0))


def duration_ticks():  # returns a matplotlib ticker (imported lazily)
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _pos: format_duration(x) if x > 0 else "0")
