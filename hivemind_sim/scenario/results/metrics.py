"""What a scenario run observed: compact per-sample storage, summaries and time series.

The runner feeds a `Recorder` from the core's own counters and events; nothing here reads private
state. Times are simulated seconds from the start of the measured window: samples at negative
times (the warmup) are not measured and are dropped on arrival, although the metric's name is
still registered.

Recording must stay cheap (a 10,000-peer run may record a million samples), so each series is a
pair of `array` columns (8 bytes per number, no object per sample); every statistic, including
the per-interval time series, is computed from those columns only when asked for.

Metric kinds (the names are the spec's, see docs/scenarios.md):
- events, one sample per operation (`dht.get`, `dht.store`, `moe.step`, `moe.expert_call`): ok,
  latency in seconds, and numeric fields such as `hops`;
- values, one number per step (`train.loss`);
- counters, amounts added over time (`rpc.messages`, `moe.bans`, ...);
- gauges, levels sampled at each change and every `sample_interval` (`peers.alive`,
  `peers.alive.<group>`); each holds until the next sample, and summaries weight them by that;
- windows: when each scenario event (a fault) was active, for `... during <event>`.

Record each sample at the time it is known (an operation's end, with its latency): that keeps
every series in time order, and `... during <event>` then means "finished during the event".
"""

from __future__ import annotations

import bisect
import math
from array import array
from dataclasses import dataclass

import numpy as np

FINAL_FRACTION = 0.1  # `.final` is the mean of the last 10% of samples; `.fell` compares the first 10%

_NAN = math.nan


@dataclass(frozen=True)
class Window:
    """When a scenario event was active: [start, end) in measured-window seconds; end None = to the end."""

    name: str
    action: str
    start: float
    end: float | None

    def stop(self) -> float:
        return math.inf if self.end is None else self.end


class _Series:
    """Times and numbers, appended in time order."""

    __slots__ = ("t", "v")

    def __init__(self) -> None:
        self.t = array("d")
        self.v = array("d")

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        return np.frombuffer(self.t, dtype=np.float64), np.frombuffer(self.v, dtype=np.float64)


class _Events:
    """One operation per sample: time, ok, latency (NaN when not given) and numeric fields."""

    __slots__ = ("fields", "lat", "ok", "t")

    def __init__(self) -> None:
        self.t = array("d")
        self.ok = array("b")
        self.lat = array("d")
        self.fields: dict[str, _Series] = {}

    def columns(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        t = np.frombuffer(self.t, dtype=np.float64)
        ok = np.frombuffer(self.ok, dtype=np.int8).astype(bool)
        return t, ok, np.frombuffer(self.lat, dtype=np.float64)


class Recorder:
    """Collects one run's metrics; `summary()` and `timeseries()` read them back.

    `duration` (the measured window's length, if known) makes the time series cover the whole
    window even when nothing was recorded near its end.
    """

    def __init__(self, sample_interval: float, *, duration: float | None = None) -> None:
        if not sample_interval > 0:
            raise ValueError(f"sample_interval must be > 0 seconds, got {sample_interval}")
        if duration is not None and not duration >= 0:
            raise ValueError(f"duration must be >= 0 seconds, got {duration}")
        self.sample_interval = float(sample_interval)
        self.duration = duration
        self._events: dict[str, _Events] = {}
        self._values: dict[str, _Series] = {}
        self._counters: dict[str, _Series] = {}
        self._gauges: dict[str, _Series] = {}
        self._windows: list[Window] = []
        self._peers: set[str] = set()

    # -- recording (hot paths: keep them short) ------------------------------------------------

    def event(
        self, name: str, t: float, ok: bool = True, latency: float | None = None, **fields: float
    ) -> None:
        """One operation, e.g. `event("dht.get", t, ok=True, latency=0.12, hops=3)`."""
        series = self._events.get(name)
        if series is None:
            series = self._events[name] = _Events()
        if t < 0:
            return
        series.t.append(t)
        series.ok.append(1 if ok else 0)
        series.lat.append(_NAN if latency is None else latency)
        for key, v in fields.items():
            field = series.fields.get(key)
            if field is None:
                field = series.fields[key] = _Series()
            try:
                field.v.append(v)
            except TypeError:
                raise TypeError(f"field {key!r} of event {name!r} must be a number, got {v!r}") from None
            field.t.append(t)

    def value(self, name: str, t: float, v: float) -> None:
        """One number per step, e.g. `value("train.loss", t, 0.71)`."""
        series = self._values.get(name)
        if series is None:
            series = self._values[name] = _Series()
        if t < 0:
            return
        series.t.append(t)
        series.v.append(v)

    def count(self, name: str, t: float, n: float = 1) -> None:
        """Adds n to a counter. `count(name, 0.0, 0)` declares one, so its total reads 0, not unknown."""
        series = self._counters.get(name)
        if series is None:
            series = self._counters[name] = _Series()
        if t < 0:
            return
        if series.t and series.t[-1] == t:  # many increments at one instant cost one sample
            series.v[-1] += n
        else:
            series.t.append(t)
            series.v.append(n)

    def gauge(self, name: str, t: float, v: float) -> None:
        """A level from time t on, e.g. `gauge("peers.alive", t, 37)`; the runner samples at each change
        and every sample_interval."""
        series = self._gauges.get(name)
        if series is None:
            series = self._gauges[name] = _Series()
        if t < 0:
            return
        series.t.append(t)
        series.v.append(v)

    def window(self, name: str, action: str, start: float, end: float | None) -> None:
        """A scenario event was active over [start, end); end None = until the end of the run."""
        if end is not None and end < start:
            raise ValueError(f"window {name!r} ends ({end}) before it starts ({start})")
        self._windows.append(Window(name, action, float(start), None if end is None else float(end)))

    def mark_peer(self, name: str) -> None:
        """A peer was alive at some point: counters' `.per_peer` divide by how many were."""
        self._peers.add(name)

    # -- reading back ---------------------------------------------------------------------------

    @property
    def windows(self) -> list[Window]:
        return list(self._windows)

    @property
    def peers_ever_alive(self) -> int:
        return len(self._peers)

    def names(self) -> dict[str, list[str]]:
        """Metric names recorded so far, by kind (events, values, counters, gauges), sorted."""
        return {
            "events": sorted(self._events),
            "values": sorted(self._values),
            "counters": sorted(self._counters),
            "gauges": sorted(self._gauges),
        }

    def end_time(self) -> float:
        """The measured window's end: `duration` if given, else the last recorded time (0 if none)."""
        if self.duration is not None:
            return float(self.duration)
        last = 0.0
        for group in (self._events, self._values, self._counters, self._gauges):
            for series in group.values():
                if series.t:
                    last = max(last, series.t[-1])
        return last

    def _mask(self, t: np.ndarray, windows: list[Window] | None) -> np.ndarray | None:
        if windows is None:
            return None
        mask = np.zeros(t.shape, dtype=bool)
        for w in windows:
            mask |= (t >= w.start) & (t < w.stop())
        return mask

    def summary(self, during: str | None = None) -> dict[str, float]:
        """Every summary statistic observed, keyed by metric name (sorted).

        With `during`, only samples whose time lies in one of that event's windows count; an
        event that never happened gives {}. A statistic without samples is absent (unknown).
        Latency statistics cover every operation that reported a latency, failed ones too: a
        percentile over successes alone would hide the timeouts.
        """
        windows: list[Window] | None = None
        if during is not None:
            windows = [w for w in self._windows if w.name == during]
            if not windows:
                return {}
        out: dict[str, float] = {}
        for name, events in self._events.items():
            t, ok, lat = events.columns()
            mask = self._mask(t, windows)
            if mask is not None:
                ok, lat = ok[mask], lat[mask]
            out[f"{name}.count"] = float(ok.size)
            if ok.size:
                out[f"{name}.success_rate"] = float(np.count_nonzero(ok)) / ok.size
            lat = lat[~np.isnan(lat)]
            if lat.size:
                p50, p90, p99 = np.percentile(lat, [50, 90, 99])
                out.update({f"{name}.p50": float(p50), f"{name}.p90": float(p90), f"{name}.p99": float(p99)})
                out[f"{name}.mean"] = float(lat.mean())
                out[f"{name}.max"] = float(lat.max())
            for key, field in events.fields.items():
                ft, fv = field.columns()
                fmask = self._mask(ft, windows)
                if fmask is not None:
                    fv = fv[fmask]
                if fv.size:
                    out[f"{name}.{key}.mean"] = float(fv.mean())
        for name, series in self._values.items():
            t, v = series.columns()
            if t.size > 1 and not (t[1:] >= t[:-1]).all():  # recorded out of order: first/final follow time
                order = np.argsort(t, kind="stable")
                t, v = t[order], v[order]
            mask = self._mask(t, windows)
            if mask is not None:
                v = v[mask]
            if v.size:
                tail = max(1, math.ceil(v.size * FINAL_FRACTION))
                out[f"{name}.first"] = float(v[0])
                out[f"{name}.final"] = float(v[-tail:].mean())
                start = v[:tail].mean()
                if start > 0:  # the share it lost, first 10% of samples to last: 0.6 from 2.0 to 0.8
                    out[f"{name}.fell"] = float((start - v[-tail:].mean()) / start)
                # the best loss reached: NaN steps (a broken expert) show in first/final, not here
                out[f"{name}.min"] = _NAN if np.isnan(v).all() else float(np.nanmin(v))
        for name, series in self._counters.items():
            t, v = series.columns()
            mask = self._mask(t, windows)
            total = float(v[mask].sum() if mask is not None else v.sum())
            out[f"{name}.total"] = total
            if self._peers:
                out[f"{name}.per_peer"] = total / len(self._peers)
        for name, series in self._gauges.items():
            t, v = series.columns()
            levels = _levels(t, v, self.end_time(), windows, self._mask(t, windows))
            if levels is not None:
                out[f"{name}.min"], out[f"{name}.mean"], out[f"{name}.final"] = levels
        return dict(sorted(out.items()))

    def timeseries(self) -> list[dict[str, float | None]]:
        """One row per sample_interval over [0, end_time()): see `timeseries_columns` for the columns.

        None marks an interval without samples for that column.
        """
        dt = self.sample_interval
        n = max(1, math.ceil(self.end_time() / dt - 1e-9))
        columns: dict[str, np.ndarray] = {"time": np.arange(n) * dt}

        def slot(t: np.ndarray) -> np.ndarray:
            return np.minimum((t / dt).astype(np.int64), n - 1)

        for name in sorted(self._gauges):
            t, v = self._gauges[name].columns()
            col = np.full(n, _NAN)
            col[slot(t)] = v  # the last sample in each interval wins
            columns[name] = col
        for name in sorted(self._events):
            t, ok, lat = self._events[name].columns()
            idx = slot(t)
            counts = np.bincount(idx, minlength=n).astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore"):
                rate = np.bincount(idx, weights=ok, minlength=n) / counts
            columns[f"{name}.count"] = counts
            columns[f"{name}.success_rate"] = rate
            columns[f"{name}.p50"] = _per_slot_median(idx, lat, n)
        for name in sorted(self._values):
            t, v = self._values[name].columns()
            idx = slot(t)
            with np.errstate(invalid="ignore", divide="ignore"):
                columns[f"{name}.mean"] = np.bincount(idx, weights=v, minlength=n) / np.bincount(
                    idx, minlength=n
                )
        for name in sorted(self._counters):
            t, v = self._counters[name].columns()
            columns[name] = np.bincount(slot(t), weights=v, minlength=n).astype(np.float64)
        keys = list(columns)
        lists = [columns[k].tolist() for k in keys]
        return [
            {
                k: (None if isinstance(x, float) and math.isnan(x) else x)
                for k, x in zip(keys, row, strict=True)
            }
            for row in zip(*lists, strict=True)
        ]

    def timeseries_columns(self) -> list[str]:
        """Column names of `timeseries()`, in order.

        time (interval start, s); each gauge (its last sample in the interval); per event
        `<event>.count`, `<event>.success_rate`, `<event>.p50` (latency, s); per value
        `<value>.mean`; each counter (the amount added during the interval).
        """
        cols = ["time", *sorted(self._gauges)]
        for name in sorted(self._events):
            cols += [f"{name}.count", f"{name}.success_rate", f"{name}.p50"]
        cols += [f"{name}.mean" for name in sorted(self._values)]
        return cols + sorted(self._counters)

    def live(self, span: float) -> dict[str, float]:
        """Cheap figures for a progress display: each gauge's last level, and over the last `span`
        seconds before the latest sample, each event's `.success_rate` and each value's `.mean`."""
        out: dict[str, float] = {name: series.v[-1] for name, series in self._gauges.items() if series.v}
        for name, events in self._events.items():
            if events.t:
                first = bisect.bisect_left(events.t, events.t[-1] - span)
                recent = events.ok[first:]
                out[f"{name}.success_rate"] = sum(recent) / len(recent)
        for name, series in self._values.items():
            if series.t:
                first = bisect.bisect_left(series.t, series.t[-1] - span)
                recent = series.v[first:]
                out[f"{name}.mean"] = sum(recent) / len(recent)
        return out

    # -- raw columns for plots (read-only views) --------------------------------------------------

    def event_columns(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(time, ok, latency) of an event, or None if never recorded."""
        events = self._events.get(name)
        return None if events is None else events.columns()

    def value_columns(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(time, value) of a value series, or None if never recorded."""
        series = self._values.get(name)
        return None if series is None else series.columns()

    def gauge_columns(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        """(time, level) of a gauge, or None if never recorded."""
        series = self._gauges.get(name)
        return None if series is None else series.columns()

    def during_mask(self, t: np.ndarray, during: str) -> np.ndarray:
        """Which of the times t lie in one of the windows of the event named `during`."""
        mask = self._mask(t, [w for w in self._windows if w.name == during])
        assert mask is not None
        return mask


def _levels(
    t: np.ndarray, v: np.ndarray, end: float, windows: list[Window] | None, inside: np.ndarray | None
) -> tuple[float, float, float] | None:
    """A gauge's min, time-weighted mean and final level over ``windows`` (None: the whole run),
    whose samples ``inside`` marks (None: all).

    Each sample holds until the next one (the last until ``end``): the runner samples at every
    change as well as every interval, so a plain mean over samples would count busy moments
    more. Levels that held for no time (several changes at one instant) do not count; if only
    such instants fall in the windows, the samples taken in them are used as they are.
    """
    if not t.size:
        return None
    spans = [(-math.inf, math.inf)] if windows is None else [(w.start, w.stop()) for w in windows]
    stops = np.append(t[1:], max(end, t[-1]))
    held = sum(np.clip(np.minimum(stops, b) - np.maximum(t, a), 0.0, None) for a, b in spans)
    if held.sum() > 0:
        counted = held > 0
        final = v[t < max(b for _, b in spans)][-1]  # the level when the last window ends
        return float(v[counted].min()), float((v * held).sum() / held.sum()), float(final)
    if inside is not None:
        v = v[inside]
    if not v.size:
        return None
    return float(v.min()), float(v.mean()), float(v[-1])


def _per_slot_median(idx: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Median of values (NaN ignored) in each of n slots; NaN where a slot has none."""
    out = np.full(n, _NAN)
    keep = ~np.isnan(values)
    idx, values = idx[keep], values[keep]
    if not values.size:
        return out
    order = np.lexsort((values, idx))
    idx, values = idx[order], values[order]
    slots, starts, sizes = np.unique(idx, return_index=True, return_counts=True)
    lo = starts + (sizes - 1) // 2
    hi = starts + sizes // 2
    out[slots] = (values[lo] + values[hi]) / 2
    return out
