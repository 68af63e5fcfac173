"""Simulated vs deployed fidelity: differences, verdicts, the report and the seed loop, on hand-filled
Recorders whose percentiles are known."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from hivemind_sim.deploy import fidelity_plots
from hivemind_sim.deploy.fidelity import (
    FIDELITY_CHECKS,
    compare_runs,
    fidelity_failed,
    run_fidelity,
    write_fidelity_report,
)
from hivemind_sim.scenario.format.loader import load_scenario
from hivemind_sim.scenario.format.schema import Scenario
from hivemind_sim.scenario.results.metrics import Recorder
from hivemind_sim.scenario.run.runner import RunResult

SCENARIO = load_scenario(Path(__file__).parent.parent / "scenarios" / "quickstart.yaml")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASE = np.linspace(0.05, 0.15, 101)  # p50 0.1 s exactly


def recorder(
    *,
    lookup: float | None = 1.0,
    step: float | None = 1.0,
    get_ok: int = 199,
    loss: float = 1.0,
) -> Recorder:
    """100 s of lookups (latency BASE x lookup), 200 gets (get_ok of them ok), steps (BASE x 10 x
    step) and a constant loss; None leaves that series out."""
    rec = Recorder(10.0, duration=100.0)
    times = np.linspace(0.0, 99.0, BASE.size)
    if lookup is not None:
        for t, lat in zip(times, BASE * lookup, strict=True):
            rec.event("dht.lookup", float(t), ok=True, latency=float(lat), hops=3)
    for i in range(200):
        rec.event("dht.get", i * 0.5, ok=i < get_ok, latency=0.05)
    if step is not None:
        for t, lat in zip(times, BASE * 10 * step, strict=True):
            rec.event("moe.step", float(t), ok=True, latency=float(lat))
            rec.value("train.loss", float(t), loss)
    return rec


def run(seed: int, rec: Recorder, *, digest: str = "d1g35t", stopped: str | None = None) -> RunResult:
    return RunResult(SCENARIO.model_copy(update={"seed": seed}), rec, [], digest, 1.5, stopped)


def sims(seeds: list[int]) -> list[RunResult]:
    return [run(s, recorder()) for s in seeds]


def test_checks_judge_lookup_and_step_p50_and_every_success_rate() -> None:
    judged = {c.key: c.tolerance for c in FIDELITY_CHECKS if c.judged}
    assert judged == {
        **{f"{e}.p50": 0.15 for e in ("dht.lookup", "moe.step")},
        **{f"{e}.success_rate": 0.01 for e in ("dht.lookup", "dht.get", "dht.store", "moe.step")},
    }
    reported = {c.key for c in FIDELITY_CHECKS if not c.judged}
    assert {"dht.get.p50", "dht.lookup.p90", "dht.lookup.p99", "moe.step.p99", "train.loss.final"} <= reported


def test_a_10_percent_gap_passes_and_a_20_percent_gap_fails() -> None:
    seeds = [0, 1, 2]
    deployed = [run(s, recorder(lookup=1.1, step=1.2), digest="") for s in seeds]
    result = compare_runs(sims(seeds), deployed, seeds)
    lookup = result.figure("dht.lookup.p50")
    assert [r.simulated for r in lookup.seeds] == pytest.approx([0.1] * 3)
    assert [r.deployed for r in lookup.seeds] == pytest.approx([0.11] * 3)
    assert [r.difference for r in lookup.seeds] == pytest.approx([0.1] * 3)
    assert (lookup.verdict, lookup.within_seeds, lookup.known_seeds) == ("pass", 3, 3)
    step = result.figure("moe.step.p50")
    assert step.mean_difference == pytest.approx(0.2)
    assert (step.verdict, step.within_seeds) == ("fail", 0)
    assert result.figure("dht.lookup.p99").verdict == "reported"
    assert result.verdict == "fail" and fidelity_failed(result)


def test_a_faster_deployment_differs_as_much_as_a_slower_one() -> None:
    result = compare_runs(sims([0]), [run(0, recorder(lookup=0.9))], [0])
    (row,) = result.figure("dht.lookup.p50").seeds
    assert row.change == pytest.approx(-0.1)
    assert row.difference == pytest.approx(0.1) and row.within is True


def test_success_rates_compare_in_percentage_points() -> None:
    sim = [run(0, recorder(get_ok=199))]  # 99.5%
    dropped = compare_runs(sim, [run(0, recorder(get_ok=196))], [0])  # 98%
    figure = dropped.figure("dht.get.success_rate")
    assert figure.seeds[0].difference == pytest.approx(0.015)
    assert figure.verdict == "fail"
    at_the_limit = compare_runs(  # 99% vs 98%: one point exactly, despite float rounding
        [run(0, recorder(get_ok=198))], [run(0, recorder(get_ok=196))], [0]
    )
    assert at_the_limit.figure("dht.get.success_rate").verdict == "pass"


def test_the_mean_over_seeds_decides_and_the_spread_is_reported() -> None:
    seeds = [3, 4, 5]
    deployed = [run(s, recorder(lookup=g)) for s, g in zip(seeds, (1.05, 1.10, 1.24), strict=True)]
    figure = compare_runs(sims(seeds), deployed, seeds).figure("dht.lookup.p50")
    assert figure.mean_difference == pytest.approx(0.13)
    assert (figure.min_difference, figure.max_difference) == pytest.approx((0.05, 0.24))
    assert figure.std_difference == pytest.approx(np.std([0.05, 0.10, 0.24], ddof=1))
    assert (figure.verdict, figure.within_seeds) == ("pass", 2)


def test_a_metric_missing_in_a_run_is_unknown_never_a_pass() -> None:
    seeds = [0, 1, 2]
    deployed = [run(0, recorder()), run(1, recorder(lookup=None)), run(2, recorder())]
    result = compare_runs(sims(seeds), deployed, seeds)
    lookup = result.figure("dht.lookup.p50")
    assert lookup.seeds[1].deployed is None and lookup.seeds[1].difference is None
    assert (lookup.verdict, lookup.known_seeds, lookup.within_seeds) == ("unknown", 2, 2)
    assert result.verdict == "unknown" and fidelity_failed(result)
    no_training = compare_runs(sims([0]), [run(0, recorder(step=None))], [0])
    assert no_training.figure("moe.step.p50").verdict == "unknown"
    assert no_training.figure("train.loss.final").verdict == "unknown"  # reported, but not measured
    everything_equal = compare_runs(sims(seeds), sims(seeds), seeds)
    assert everything_equal.verdict == "pass" and not fidelity_failed(everything_equal)


def test_a_series_neither_world_recorded_is_not_compared() -> None:
    result = compare_runs([run(0, recorder(step=None))], [run(0, recorder(step=None))], [0])
    keys = {f.check.key for f in result.figures}
    assert "dht.lookup.p50" in keys and "moe.step.p50" not in keys and "train.loss.final" not in keys
    with pytest.raises(KeyError):
        result.figure("moe.step.p50")


def test_nothing_judged_is_not_a_pass() -> None:
    empty = compare_runs([run(0, Recorder(10.0))], [run(0, Recorder(10.0))], [0])
    assert empty.figures == () and empty.verdict == "unknown" and fidelity_failed(empty)


def test_runs_that_stopped_early_are_stated() -> None:
    deployed = [run(0, recorder()), run(1, recorder(), stopped="peer servers-3 exited at 40 s")]
    result = compare_runs(sims([0, 1]), deployed, [0, 1])
    assert result.stopped == [(1, "deployed", "peer servers-3 exited at 40 s")]


def test_miswired_runs_are_refused() -> None:
    with pytest.raises(ValueError, match="seed 1 ran seed 0"):
        compare_runs(sims([0, 1]), [run(0, recorder()), run(0, recorder())], [0, 1])
    with pytest.raises(ValueError, match="1 deployed runs for 2 seeds"):
        compare_runs(sims([0, 1]), [run(0, recorder())], [0, 1])


def test_the_report_holds_every_figure(tmp_path: Path) -> None:
    seeds = [0, 1, 2]
    deployed = [
        run(0, recorder(lookup=1.1, step=1.2, get_ok=196, loss=2.0), digest=""),
        run(1, recorder(lookup=1.1, step=1.2, loss=2.0), digest=""),
        run(2, recorder(lookup=None, step=1.2, loss=2.0), digest="", stopped="trainer crashed"),
    ]
    result = compare_runs(sims(seeds), deployed, seeds)
    out = tmp_path / "fidelity"
    write_fidelity_report(out, result, command="hivemind-sim fidelity q.yaml", notes=["peers scaled 1:4"])

    data = json.loads((out / "fidelity.json").read_text())
    assert data["seeds"] == seeds and data["verdict"] == "fail"
    assert data["notes"] == ["peers scaled 1:4"] and data["command"] == "hivemind-sim fidelity q.yaml"
    assert data["runs"][2]["deployed"]["stopped"] == "trainer crashed"
    assert data["runs"][0]["simulated"]["digest"] == "d1g35t" and data["runs"][0]["deployed"]["digest"] == ""
    figures = {f["key"]: f for f in data["figures"]}
    lookup = figures["dht.lookup.p50"]
    assert lookup["verdict"] == "unknown" and lookup["tolerance"] == 0.15 and lookup["unit"] == "s"
    assert [r["difference"] for r in lookup["seeds"]] == pytest.approx([0.1, 0.1, None])
    assert figures["moe.step.p50"]["verdict"] == "fail"
    assert figures["dht.get.success_rate"]["seeds"][0]["deployed"] == pytest.approx(0.98)
    assert figures["train.loss.final"]["mean_change"] == pytest.approx(1.0)  # 1.0 -> 2.0: +100%

    md = (out / "fidelity.md").read_text()
    assert "**FAILED**" in md and "`hivemind-sim fidelity q.yaml`" in md and "- peers scaled 1:4" in md
    assert "The deployed run of seed 2 stopped early**: trainer crashed" in md
    summary = next(line for line in md.splitlines() if line.startswith("| `moe.step.p50` |"))
    assert "relative difference <= 15%" in summary and "20%" in summary and "0 of 3" in summary
    assert "**FAIL**" in summary
    success = next(line for line in md.splitlines() if line.startswith("| `dht.get.success_rate` |"))
    assert "<= 1 pp" in success and "0.5 pp" in success  # the mean: 1.5, 0 and 0 points
    lookup_rows = md.split("### `dht.lookup.p50`")[1].split("###")[0]
    assert "| 0 | 100 ms | 110 ms | +10% | 10% | yes |" in lookup_rows
    assert "| 2 | 100 ms | not measured | - | - | **unknown** |" in lookup_rows
    for png in fidelity_plots.FIDELITY_PLOTS:
        assert (out / png).read_bytes().startswith(PNG_MAGIC)
        assert f"![{png}]({png})" in md


def test_latency_cdfs_draw_each_world_pooled_over_seeds() -> None:
    seeds = [0, 1]
    result = compare_runs(sims(seeds), [run(s, recorder(lookup=2.0)) for s in seeds], seeds)
    fig = fidelity_plots.latency_cdfs(result)
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split(":")[0] for t in titles if t] == [
        "DHT lookup (random id, to convergence)",
        "DHT get",
        "training step",
    ]
    lookup_ax = next(ax for ax in fig.axes if ax.get_title().startswith("DHT lookup"))
    lines = {line.get_label().split(":")[0]: line for line in lookup_ax.get_lines()}
    assert "n=202" in lines["simulated"].get_label()  # two seeds of 101 lookups
    assert lines["simulated"].get_linestyle() != lines["deployed"].get_linestyle()
    assert np.max(lines["deployed"].get_xdata()) == pytest.approx(2 * np.max(lines["simulated"].get_xdata()))


def test_loss_plot_averages_each_world_over_its_seeds() -> None:
    seeds = [0, 1]
    simulated = [run(0, recorder(loss=1.0)), run(1, recorder(loss=3.0))]
    deployed = [run(s, recorder(loss=5.0)) for s in seeds]
    fig = fidelity_plots.loss_over_time(compare_runs(simulated, deployed, seeds))
    means = {line.get_label().split(" ")[0]: line.get_ydata() for line in fig.axes[0].get_lines()}
    assert np.allclose(means["simulated"], 2.0) and np.allclose(means["deployed"], 5.0)


def test_step_time_plot_has_a_box_per_seed_and_world() -> None:
    seeds = [0, 1, 2]
    result = compare_runs(sims(seeds), [run(s, recorder(step=1.5)) for s in seeds], seeds)
    ax = fidelity_plots.step_times(result).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["seed 0", "seed 1", "seed 2"]
    medians = sorted(
        float(line.get_ydata()[0]) for line in ax.get_lines() if line.get_linewidth() == 2
    )  # the box plots' median lines: 1.0 s simulated, 1.5 s deployed, in each seed
    assert medians == pytest.approx([1.0] * 3 + [1.5] * 3)


def test_run_fidelity_runs_both_worlds_once_per_seed() -> None:
    calls: list[tuple[str, int]] = []

    def fake(world: str, gap: float) -> Callable[[Scenario], RunResult]:
        def run_world(scenario: Scenario) -> RunResult:
            calls.append((world, scenario.seed))
            return RunResult(scenario, recorder(lookup=gap), [], "", 0.1)

        return run_world

    said: list[str] = []
    result = run_fidelity(
        SCENARIO, [7, 8, 9], simulate=fake("sim", 1.0), deploy=fake("deploy", 1.1), progress=said.append
    )
    assert calls == [("sim", 7), ("deploy", 7), ("sim", 8), ("deploy", 8), ("sim", 9), ("deploy", 9)]
    assert SCENARIO.seed == 0  # the scenario given is left as it was
    assert result.seeds == (7, 8, 9) and [r.scenario.seed for r in result.deployed] == [7, 8, 9]
    assert result.figure("dht.lookup.p50").mean_difference == pytest.approx(0.1)
    assert said[0] == "seed 7 (1/3): simulating" and len(said) == 6
    with pytest.raises(ValueError, match=">= 0"):
        run_fidelity(SCENARIO, [-1], simulate=fake("sim", 1.0), deploy=fake("deploy", 1.0))
