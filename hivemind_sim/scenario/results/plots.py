"""The report's five PNG plots, drawn from a Recorder.

matplotlib is imported only when a plot is drawn (the `[sim]` extra; a run that writes no report
never pays for it), and figures are built with `matplotlib.figure.Figure` on the Agg canvas, so
no pyplot state or GUI backend is involved. Every plot over time shades the fault windows and
names them; a plot with nothing to show says "not observed in this scenario" instead of an
empty axis.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..format.names import COUNTERS, EVENTS
from .assertions import format_duration
from .metrics import Recorder, Window

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
MAX_CDF_POINTS = 4000  # drawn per CDF curve: evenly spaced quantiles, min and max included
CDF_NAMES = {"dht.get": "gets", "dht.store": "stores", "dht.lookup": "lookups"}
LOG_RATIO = 20  # values whose largest is more than this many times their smallest draw on a log axis
# dash patterns for lines that may coincide, the first solid (see _layers)
DASHES = ("-", "--", ":", "-.", (0, (6, 2, 1, 2, 1, 2)))
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
    """Levels drawn as steps, each held until the next sample: a change sampled when it happens shows then."""
    fig, ax = new_figure("Alive peers over time")
    scale, unit = _time_unit(recorder.end_time())
    names = recorder.names()["gauges"]
    total = "peers.alive"
    groups = [n for n in names if n.startswith(total + ".")]
    if total not in names and not groups:
        return _not_observed(fig, ax)
    series = [total, *groups] if total in names else groups
    colors = ["black"] * (total in names) + [f"C{i}" for i in range(len(groups))]
    labels = ["all peers" if name == total else f"group {name[len(total) + 1 :]}" for name in series]
    columns = [_hold_to_end(recorder.gauge_columns(name), recorder.end_time()) for name in series]
    noted = _noted(labels, labels, _same_as([np.stack(c) for c in columns]))
    for (t, v), color, label, style in zip(columns, colors, noted, _layers(len(series)), strict=True):
        ax.plot(t / scale, v, drawstyle="steps-post", color=color, label=label, **style)
    ax.set_ylim(bottom=0)
    ax.set_xlim(0, recorder.end_time() / scale)
    ax.yaxis.set_major_locator(integer_ticks())
    ax.set_xlabel(f"time since the measured window started ({unit})")
    ax.set_ylabel("alive peers")
    _shade_windows(ax, recorder, scale)
    _legend_outside(ax)
    return fig


def lookup_latency_cdf(recorder: Recorder) -> Figure:
    """Gets, stores and lookups (whole run; gets also per fault window), each with its true count."""
    fig, ax = new_figure("DHT latency, CDF")
    colors = _window_colors(recorder)
    curves: list[tuple[str, np.ndarray, dict[str, str]]] = []  # (label, latencies, line style)
    drawn = []
    for name in LOOKUP_EVENTS:
        cols = recorder.event_columns(name)
        if cols is None:
            continue
        t, _, lat = cols
        keep = ~np.isnan(lat)
        if not keep.any():
            continue
        drawn.append(name)
        linestyle = {"dht.get": "-", "dht.store": "--"}.get(name, ":")
        curves.append(
            (f"{EVENT_LABELS[name]}, whole run", lat[keep], {"color": "black", "linestyle": linestyle})
        )
        if name != "dht.get":
            continue  # one line per fault window for gets only: more lines would be unreadable
        for w in _distinct_windows(recorder):
            inside = keep & recorder.during_mask(t, w.name)
            if inside.any():
                label = f"{EVENT_LABELS[name]}, during {w.name} ({w.action})"
                curves.append((label, lat[inside], {"color": colors[w.name], "linestyle": "-"}))
    if not curves:
        return _not_observed(fig, ax)
    ax.set_title(f"DHT {_words([CDF_NAMES[n] for n in drawn])}: latency CDF (failed ones included)")
    labels = [label for label, _, _ in curves]
    noted = _noted(labels, labels, _same_as([np.sort(lat) for _, lat, _ in curves]))
    for (_, lat, style), label in zip(curves, noted, strict=True):
        _cdf(ax, lat, label=label, **style)
    lat = np.concatenate([lat for _, lat, _ in curves])
    log = _spans_decades(lat)
    if log:
        ax.set_xscale("log")
    label = "latency (log scale)" if log else "latency"
    if log and (lat <= 0).any():
        label += "; operations answered locally (0 s) start each curve above 0"
    ax.set_xlabel(label)
    if log:
        ax.xaxis.set_major_locator(_log_125())
        ax.xaxis.set_minor_formatter(_no_labels())
    ax.xaxis.set_major_formatter(duration_ticks())
    ax.set_ylabel("fraction of operations at or below")
    ax.set_ylim(0, 1.02)
    _legend_outside(ax, below=True)
    return fig


def success_rates(recorder: Recorder, rows: Rows) -> Figure:
    """One line per operation kind; lines at 100% often coincide, so each stays visible (see _layers)."""
    dt = recorder.sample_interval
    fig, ax = new_figure(f"Success rate per {format_duration(dt)} interval")
    scale, unit = _time_unit(recorder.end_time())
    time = np.array([r["time"] for r in rows], dtype=float)
    summary = recorder.summary()
    lines: list[tuple[str, str, str, np.ndarray]] = []  # (name, label, colour, rate in %)
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
        lines.append((EVENT_LABELS[name], label, f"C{i}", rate * 100))
    if not lines:
        return _not_observed(fig, ax)
    same = _same_as([rate for *_, rate in lines])
    noted = _noted([label for _, label, _, _ in lines], [name for name, *_ in lines], same)
    dots = len(rows) <= 120  # dots help only while intervals are wide apart
    for (*_, color, rate), label, style in zip(lines, noted, _layers(len(lines)), strict=True):
        marker = {"marker": "o", "markersize": 1.5 * style["linewidth"]} if dots else {}
        ax.plot((time + dt / 2) / scale, rate, color=color, label=label, **style, **marker)
    ax.set_ylim(-2, 102)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlim(0, recorder.end_time() / scale)
    ax.set_xlabel(f"time since the measured window started ({unit})")
    ax.set_ylabel("operations that succeeded (%)")
    _shade_windows(ax, recorder, scale)
    _legend_outside(ax)
    return fig


def training_loss(recorder: Recorder, rows: Rows) -> Figure:
    """Loss on a log axis when it spans decades (a blow-up would flatten the rest); NaN steps marked."""
    dt = recorder.sample_interval
    fig, ax = new_figure("Training loss over time")
    cols = recorder.value_columns("train.loss")
    if cols is None or not cols[0].size:
        return _not_observed(fig, ax)
    scale, unit = _time_unit(recorder.end_time())
    t, v = cols
    finite = np.isfinite(v)
    stride = max(1, t.size // MAX_SCATTER)
    ax.scatter(t[::stride] / scale, v[::stride], s=6, alpha=0.35, color="C0", label="one training step")
    time = np.array([r["time"] for r in rows], dtype=float)
    mean = np.array([np.nan if r["train.loss.mean"] is None else r["train.loss.mean"] for r in rows])
    ax.plot((time + dt / 2) / scale, mean, color="C3", linewidth=2, label=f"mean per {format_duration(dt)}")
    if not finite.all():  # NaN or infinite losses have no place on the axis: mark when they happened
        bad = np.flatnonzero(~finite)
        bad = bad[:: max(1, bad.size // MAX_SCATTER)]
        ax.plot(
            t[bad] / scale,
            np.zeros(bad.size),
            transform=ax.get_xaxis_transform(),
            linestyle="none",
            marker="x",
            color="black",
            clip_on=False,
            label=f"NaN or infinite loss ({np.count_nonzero(~finite)} steps, on the bottom edge)",
        )
    ylabel = "loss"
    axis_scale = _value_scale(v[finite])
    if axis_scale == "log":
        ax.set_yscale("log")
        if _decades(v[finite]) <= 3:  # 1, 2, 5 in each decade; beyond that only powers of ten fit
            ax.yaxis.set_major_locator(_log_125())
        ylabel = "loss (log scale)"
    elif axis_scale == "symlog":  # zero or negative losses too: linear near 0, logarithmic beyond
        linthresh = _symlog_threshold(v[finite])
        ax.set_yscale("symlog", linthresh=linthresh)
        ylabel = f"loss (log scale beyond ±{_number_text(linthresh)}, linear within)"
    if axis_scale != "linear":
        ax.set_title("Training loss over time (log scale)")
        ax.yaxis.set_major_formatter(_number_ticks())
        ax.yaxis.set_minor_formatter(_no_labels())
    ax.set_xlim(0, recorder.end_time() / scale)
    ax.set_xlabel(f"time since the measured window started ({unit})")
    ax.set_ylabel(ylabel)
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
    counts = [np.array([r[name] for r in rows], dtype=float) for name in counters]
    labels = [f"{FAILURE_COUNTERS[name]} (total {summary[name + '.total']:.0f})" for name in counters]
    # where bans equal failures the ban line runs along the filled area's top edge: the legend says so
    noted = _noted(labels, [FAILURE_COUNTERS[name] for name in counters], _same_as(counts))
    for name, count, label in zip(counters, counts, noted, strict=True):
        if name == "moe.expert_failures":
            ax.stairs(count, edges, fill=True, color="C0", alpha=0.6, label=label)
        else:
            ax.stairs(count, edges, color="black", linewidth=1.8, label=label)
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
    """The empirical CDF, labelled with the true count even when fewer points are drawn.

    Past MAX_CDF_POINTS, evenly spaced quantiles (min and max included) are drawn, each at its exact
    cumulative fraction: the drawn steps stay within 1/MAX_CDF_POINTS of the full curve.
    """
    xs = np.sort(values)
    p50, p99 = np.percentile(xs, [50, 99])
    drawn = xs
    if xs.size > MAX_CDF_POINTS:
        drawn = xs[np.round(np.linspace(0, xs.size - 1, MAX_CDF_POINTS)).astype(np.int64)]
    ys = np.searchsorted(xs, drawn, side="right") / xs.size
    full = f"{label}: n={xs.size:,}, p50 {format_duration(p50)}, p99 {format_duration(p99)}"
    ax.step(drawn, ys, where="post", color=color, linestyle=linestyle, label=full)


def _layers(n: int) -> list[dict[str, Any]]:
    """Line styles for n lines that may lie on each other (alive groups of one size, 100% rates).

    The first is widest and solid, each later one thinner with its own dashes, so wherever lines
    coincide the earlier ones still show around and between the later ones; none is offset from
    its true values.
    """
    widths = np.linspace(3.4, 1.4, n) if n > 1 else [2.0]
    return [{"linewidth": float(w), "linestyle": DASHES[i % len(DASHES)]} for i, w in enumerate(widths)]


def _same_as(series: list[np.ndarray]) -> list[int | None]:
    """For each series, the index of the first earlier one equal to it (NaN equal to NaN), else None."""

    def equal(a: np.ndarray, b: np.ndarray) -> bool:
        return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)

    return [next((j for j in range(i) if equal(a, series[j])), None) for i, a in enumerate(series)]


def _noted(labels: list[str], names: list[str], same: list[int | None]) -> list[str]:
    """Legend labels saying "same as <name>" for a line drawn exactly over an earlier one."""
    out = []
    for label, j in zip(labels, same, strict=True):
        if j is not None:
            note = f"same as {names[j]}"
            label = f"{label[:-1]}; {note})" if label.endswith(")") else f"{label} ({note})"
        out.append(label)
    return out


def _hold_to_end(columns: tuple[np.ndarray, np.ndarray] | None, end: float) -> tuple[np.ndarray, np.ndarray]:
    """A gauge's (time, level), its last level held to the window's end (it lasts until a change)."""
    assert columns is not None
    t, v = columns
    if t.size and t[-1] < end:
        return np.append(t, end), np.append(v, v[-1])
    return t, v


def _spans_decades(values: np.ndarray) -> bool:
    """Whether the positive values span enough decades that a linear axis would flatten the small ones."""
    return _decades(values) > np.log10(LOG_RATIO)


def _decades(values: np.ndarray) -> float:
    """How many decades the positive values span."""
    positive = values[values > 0]
    return float(np.log10(positive.max() / positive.min())) if positive.size else 0.0


def _value_scale(values: np.ndarray) -> str:
    """ "linear", "log", or "symlog" when finite values spanning decades include zero or negatives."""
    magnitudes = np.abs(values[values != 0])
    if not _spans_decades(magnitudes):
        return "linear"
    return "log" if (values > 0).all() else "symlog"


def _symlog_threshold(values: np.ndarray) -> float:
    """The power of ten at or below the smallest non-zero magnitude: the symlog axis is linear inside it."""
    return float(10.0 ** np.floor(np.log10(np.abs(values[values != 0]).min())))


def _words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + f" and {items[-1]}"


def _number_text(x: float) -> str:
    """A tick number, short: 0.3, 20, 5k, 400k, 2M."""
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= size:
            return f"{x / size:g}{suffix}"
    return f"{x:g}"


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


def _number_ticks():  # returns a matplotlib ticker (imported lazily)
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _pos: _number_text(x))


def duration_ticks():  # returns a matplotlib ticker (imported lazily)
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda x, _pos: format_duration(x) if x > 0 else "0")
