"""The report plots show what happened: read off matplotlib figures built from hand-filled Recorders."""

from __future__ import annotations

import math
import random

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from hivemind_sim.scenario.results import plots
from hivemind_sim.scenario.results.metrics import Recorder
from hivemind_sim.scenario.results.plots import MAX_CDF_POINTS


def _axes(fig: Figure) -> Axes:
    return fig.axes[0]


def _legend(fig: Figure) -> list[str]:
    legend = _axes(fig).get_legend()
    return [] if legend is None else [text.get_text() for text in legend.get_texts()]


def _line(fig: Figure, label_start: str):  # type: ignore[no-untyped-def]
    """The line whose legend label starts with label_start."""
    (line,) = [line for line in _axes(fig).get_lines() if line.get_label().startswith(label_start)]
    return line


def _converging_loss(rec: Recorder, *, spike: tuple[float, float] | None = None, zeros: bool = False) -> None:
    """2.3 falling to 0.3 over 120 s; inside `spike` (start, end) some steps blow up to 415,000."""
    rng = random.Random(0)
    t = 0.0
    while t < 120.0:
        t += 0.5
        loss = 0.3 + 2.0 * math.exp(-t / 30) + rng.gauss(0, 0.02)
        if spike and spike[0] <= t < spike[1] and rng.random() < 0.3:
            loss = 415_000.0 * rng.random()
        if zeros and rng.random() < 0.05:
            loss = 0.0
        rec.value("train.loss", t, loss)


def test_a_loss_that_blows_up_draws_on_a_log_axis_that_says_so() -> None:
    calm = Recorder(5.0, duration=120.0)
    _converging_loss(calm)
    assert _axes(plots.training_loss(calm, calm.timeseries())).get_yscale() == "linear"

    faulty = Recorder(5.0, duration=120.0)
    faulty.window("crash-wave", "crash", 40.0, 60.0)
    _converging_loss(faulty, spike=(40.0, 60.0))
    ax = _axes(plots.training_loss(faulty, faulty.timeseries()))
    assert ax.get_yscale() == "log"
    assert "log scale" in ax.get_ylabel() and "log scale" in ax.get_title()
    low, high = ax.get_ylim()
    assert low < 0.3 and high >= 400_000, "the converged loss and the blow-up both on the axis"


def test_zero_losses_use_a_symmetric_log_axis_and_nan_steps_are_marked() -> None:
    rec = Recorder(5.0, duration=120.0)
    _converging_loss(rec, spike=(40.0, 60.0), zeros=True)
    for t in (80.25, 81.25, 90.75):  # a misbehaving expert: NaN losses cannot sit on any axis
        rec.value("train.loss", t, math.nan)
    fig = plots.training_loss(rec, rec.timeseries())
    ax = _axes(fig)
    assert ax.get_yscale() == "symlog", "log cannot show the zero losses"
    assert ax.get_ylim()[0] <= 0 and "log scale" in ax.get_ylabel()
    nan_line = _line(fig, "NaN or infinite loss (3 steps")
    assert list(nan_line.get_xdata()) == [80.25, 81.25, 90.75]
    assert any(text.startswith("NaN or infinite loss (3 steps") for text in _legend(fig))


def test_latency_cdf_gives_the_true_count_and_draws_the_exact_curve() -> None:
    rng = random.Random(0)
    rec = Recorder(5.0, duration=120.0)
    n = 11_917
    for i in range(n):
        latency = 0.0 if i % 10 == 0 else rng.lognormvariate(math.log(0.08), 0.6)
        rec.event("dht.get", 120.0 * i / n, ok=True, latency=latency)
        if i % 5 == 0:
            rec.event("dht.store", 120.0 * i / n, ok=True, latency=rng.lognormvariate(math.log(0.4), 0.5))
    fig = plots.lookup_latency_cdf(rec)
    ax = _axes(fig)
    assert any(text.startswith("DHT get, whole run: n=11,917,") for text in _legend(fig))
    assert any(text.startswith("DHT store, whole run: n=2,384,") for text in _legend(fig))
    title = ax.get_title()
    assert "gets" in title and "stores" in title and "lookup" not in title, title
    assert "operations" in ax.get_ylabel()
    gets = np.sort(rec.event_columns("dht.get")[2])  # type: ignore[index]
    line = _line(fig, "DHT get, whole run")
    xs, ys = np.asarray(line.get_xdata()), np.asarray(line.get_ydata())
    assert line.get_drawstyle() == "steps-post" and xs.size <= MAX_CDF_POINTS
    assert xs[0] == gets[0] and xs[-1] == gets[-1] and ys[-1] == 1.0
    np.testing.assert_array_equal(ys, np.searchsorted(gets, xs, side="right") / n)  # every point exact
    hidden = np.searchsorted(gets, xs[1:], side="left") - np.searchsorted(gets, xs[:-1], side="right")
    assert hidden.max() <= math.ceil(n / (MAX_CDF_POINTS - 1)), "between drawn points the curve rises little"


def test_identical_success_lines_both_show_and_the_legend_says_they_coincide() -> None:
    rec = Recorder(5.0, duration=60.0)
    for i in range(120):
        t = i / 2
        rec.event("dht.get", t, ok=True, latency=0.1)
        rec.event("moe.step", t, ok=True, latency=0.4)
        rec.event("moe.expert_call", t, ok=not 20 <= t < 30, latency=0.1)
    fig = plots.success_rates(rec, rec.timeseries())
    get, step, call = (_line(fig, name) for name in ("DHT get", "training step", "expert call"))
    np.testing.assert_array_equal(get.get_ydata(), step.get_ydata())  # drawn at their true values
    assert step.get_label() == "training step (whole run 100.0%; same as DHT get)"
    assert get.get_label() == "DHT get (whole run 100.0%)" and "same as" not in call.get_label()
    assert get.get_linewidth() > step.get_linewidth() > call.get_linewidth(), "later lines thinner"
    assert len({line.get_linestyle() for line in (get, step, call)}) == 3


def test_bans_equal_to_failures_are_named_as_such() -> None:
    rec = Recorder(5.0, duration=60.0)
    for name in ("moe.expert_failures", "moe.bans"):
        rec.count(name, 0.0, 0)
    rec.event("moe.step", 1.0, ok=True, latency=0.4)
    for t in (12.0, 13.0, 31.0):  # every failure bans its expert
        rec.count("moe.expert_failures", t)
        rec.count("moe.bans", t)
    fig = plots.expert_failures(rec, rec.timeseries())
    assert _legend(fig) == ["expert failures (total 3)", "bans (total 3; same as expert failures)"]
    rec.count("moe.expert_failures", 50.0)
    fig = plots.expert_failures(rec, rec.timeseries())
    assert _legend(fig) == ["expert failures (total 4)", "bans (total 3)"]


def _alive(rec: Recorder, samples: list[tuple[float, int, int]]) -> None:
    for t, servers, peers in samples:
        rec.gauge("peers.alive", t, servers + peers)
        rec.gauge("peers.alive.peers", t, peers)
        rec.gauge("peers.alive.servers", t, servers)


def test_alive_peers_step_at_the_moment_of_each_change() -> None:
    rec = Recorder(5.0, duration=60.0)
    rec.window("crash-wave", "crash", 12.3, 42.7)
    regular = [(t, 6, 6 if not 12.3 <= t < 42.7 else 3) for t in np.arange(0.0, 60.0, 5.0)]
    changes = [(12.3, 6, 3), (42.7, 6, 6)]  # the runner samples at each change too
    _alive(rec, sorted([*regular, *changes]))
    fig = plots.alive_peers(rec)
    title = _axes(fig).get_title()
    assert "every" not in title and title.startswith("Alive peers"), title
    total = _line(fig, "all peers")
    xs, ys = list(total.get_xdata()), list(total.get_ydata())
    assert total.get_drawstyle() == "steps-post"
    assert ys[xs.index(12.3)] == 9 and ys[xs.index(42.7)] == 12, "the level changes at the change"
    assert xs[-1] == 60.0 and ys[-1] == 12, "the last level holds to the end of the window"
    assert ys[xs.index(10.0)] == 12, "not before"
    servers = _line(fig, "group servers")
    assert servers.get_label() == "group servers", "equal to group peers only part of the time"
    assert _line(fig, "group peers").get_linewidth() > servers.get_linewidth()


def test_alive_group_equal_to_all_peers_is_named_as_such() -> None:
    rec = Recorder(5.0, duration=20.0)
    for t, n in [(0.0, 8), (5.0, 8), (7.5, 4), (10.0, 4), (15.0, 8)]:
        rec.gauge("peers.alive", t, n)
        rec.gauge("peers.alive.only", t, n)
    fig = plots.alive_peers(rec)
    assert _legend(fig) == ["all peers", "group only (same as all peers)"]
    total, group = _line(fig, "all peers"), _line(fig, "group only")
    assert total.get_linewidth() > group.get_linewidth() and group.get_linestyle() != "-"
