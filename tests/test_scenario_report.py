"""Metrics recording, assertion evaluation and the report folder, on synthetic seeded data."""

from __future__ import annotations

import json
import math
import random

import pytest
from matplotlib import pyplot as plt

from hivemind_sim.scenario.results import plots
from hivemind_sim.scenario.results.assertions import Assertion, evaluate, format_duration
from hivemind_sim.scenario.results.metrics import Recorder
from hivemind_sim.scenario.results.plots import NOT_OBSERVED, PLOTS
from hivemind_sim.scenario.results.report import deterministic_metrics, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def synthetic_recorder(seed: int = 0, *, duration: float = 300.0, dt: float = 5.0) -> Recorder:
    """A 5-minute run: 3 groups, a crash wave at 120-150 s that slows and fails lookups, training."""
    rng = random.Random(seed)
    rec = Recorder(dt, duration=duration)
    rec.window("crash-wave", "crash", 120.0, 150.0)
    rec.window("slow-eu", "degrade", 200.0, None)
    groups = {"servers": 16, "trainers": 8, "dht": 24}
    for group, n in groups.items():
        for i in range(n):
            rec.mark_peer(f"{group}-{i}")
    rec.count("moe.bans", 0.0, 0)
    rec.count("moe.expert_failures", 0.0, 0)
    t = 0.0
    while t <= duration:
        crashed = 120 <= t < 150
        alive = {g: n - (n // 4 if crashed and g == "servers" else 0) for g, n in groups.items()}
        rec.gauge("peers.alive", t, sum(alive.values()))
        for g, n in alive.items():
            rec.gauge(f"peers.alive.{g}", t, n)
        t += dt
    t = rng.expovariate(10)
    while t < duration:
        crashed = 120 <= t < 150
        ok = rng.random() > (0.15 if crashed else 0.005)
        lat = rng.lognormvariate(math.log(0.08), 0.5) * (3 if crashed else 1)
        rec.event("dht.get", t, ok=ok, latency=lat if ok else 2.0, hops=rng.randint(1, 5))
        if rng.random() < 0.2:
            rec.event("dht.store", t, ok=rng.random() > 0.01, latency=rng.lognormvariate(math.log(0.15), 0.4))
        rec.count("rpc.messages", t, rng.randint(3, 12))
        t += rng.expovariate(10)
    t = 0.0
    while t < duration:
        crashed = 120 <= t < 150
        step = rng.lognormvariate(math.log(0.4), 0.3) * (4 if crashed else 1)
        t += step
        loss = 0.3 + 2.0 * math.exp(-t / 60) + rng.gauss(0, 0.05) + (0.2 if crashed else 0.0)
        rec.value("train.loss", t, loss)
        rec.event("moe.step", t, ok=rng.random() > (0.2 if crashed else 0.01), latency=step)
        for _ in range(4):
            failed = rng.random() < (0.25 if crashed else 0.01)
            rec.event("moe.expert_call", t, ok=not failed)
            if failed:
                rec.count("moe.expert_failures", t)
                if rng.random() < 0.3:
                    rec.count("moe.bans", t)
    rec.value("train.loss", -5.0, 99.0)  # warmup: not measured
    return rec


def test_summary_keys_and_values() -> None:
    rec = synthetic_recorder()
    s = rec.summary()
    for key in [
        "dht.get.success_rate",
        "dht.get.count",
        "dht.get.p50",
        "dht.get.p90",
        "dht.get.p99",
        "dht.get.mean",
        "dht.get.max",
        "dht.get.hops.mean",
        "moe.step.p99",
        "train.loss.first",
        "train.loss.final",
        "train.loss.min",
        "rpc.messages.total",
        "rpc.messages.per_peer",
        "peers.alive.min",
        "peers.alive.mean",
        "peers.alive.final",
        "peers.alive.servers.min",
    ]:
        assert key in s, key
    assert s["peers.alive.min"] == 44 and s["peers.alive.final"] == 48
    assert s["rpc.messages.per_peer"] == s["rpc.messages.total"] / 48
    assert s["train.loss.first"] != 99.0  # the warmup sample was dropped
    assert s["dht.get.p50"] <= s["dht.get.p90"] <= s["dht.get.p99"] <= s["dht.get.max"]
    during = rec.summary(during="crash-wave")
    assert during["peers.alive.min"] == during["peers.alive.mean"] == 44
    assert during["dht.get.success_rate"] < s["dht.get.success_rate"]
    assert during["dht.get.count"] < s["dht.get.count"]
    assert rec.summary(during="no-such-event") == {}


def test_final_is_mean_of_last_tenth_and_counters_can_be_declared() -> None:
    rec = Recorder(1.0)
    for i in range(20):
        rec.value("train.loss", float(i), float(i))
    rec.count("moe.bans", 0.0, 0)
    s = rec.summary()
    assert s["train.loss.final"] == 18.5  # mean of the last 2 of 20
    assert s["train.loss.first"] == 0 and s["train.loss.min"] == 0
    assert s["moe.bans.total"] == 0  # declared: zero, not unknown
    assert "moe.bans.per_peer" not in s  # no peer was ever marked alive


def test_event_field_must_be_a_number() -> None:
    rec = Recorder(1.0)
    with pytest.raises(TypeError, match=r"field 'hops' of event 'dht\.get' must be a number"):
        rec.event("dht.get", 1.0, hops="three")  # type: ignore[arg-type]


def test_timeseries_rows() -> None:
    rec = synthetic_recorder()
    rows = rec.timeseries()
    assert len(rows) == 60  # 300 s every 5 s
    assert list(rows[0]) == rec.timeseries_columns()
    assert [r["time"] for r in rows[:3]] == [0.0, 5.0, 10.0]
    crash = rows[25]  # 125-130 s
    assert crash["peers.alive.servers"] == 12 and rows[0]["peers.alive.servers"] == 16
    assert sum(r["dht.get.count"] for r in rows) == rec.summary()["dht.get.count"]
    assert sum(r["rpc.messages"] for r in rows) == rec.summary()["rpc.messages.total"]
    assert crash["dht.get.p50"] > rows[0]["dht.get.p50"]
    assert all(r["train.loss.mean"] is None or r["train.loss.mean"] > 0 for r in rows)


def test_assertions_pass_fail_unknown_and_during() -> None:
    rec = synthetic_recorder()
    results = evaluate(
        [
            Assertion("dht.get.success_rate", ">=", 0.9),
            Assertion("dht.get.success_rate", ">=", 0.95, during="crash-wave"),
            Assertion("moe.step.p99", "<=", 3.0, during="crash-wave"),
            Assertion("peers.alive.final", "==", 48),
            Assertion("moe.bans.total", "!=", 0),
            Assertion("dht.get.hops.mean", "<", 1.0),
            Assertion("dht.store.p50", ">", 10.0),
            Assertion("nothing.here.total", "<=", 1),
            Assertion("dht.get.success_rate", ">=", 0.9, during="never-scheduled"),
        ],
        rec,
    )
    assert [r.status for r in results] == [
        "pass",
        "fail",
        "pass",
        "pass",
        "pass",
        "fail",
        "fail",
        "unknown",
        "unknown",
    ]
    assert results[0].observed == rec.summary()["dht.get.success_rate"]
    step = results[2]
    assert step.line == (
        f"moe.step.p99 during crash-wave = {format_duration(step.observed)} <= 3 s: pass"  # type: ignore[arg-type]
    )
    assert results[6].line.endswith("> 10 s: fail")  # latencies read as durations
    assert results[7].observed is None and "never observed" in results[7].line
    assert "never happened" in results[8].line


def test_unknown_when_the_window_saw_no_samples() -> None:
    rec = Recorder(1.0, duration=10.0)
    rec.window("late", "crash", 8.0, 9.0)
    rec.event("dht.get", 1.0, ok=True, latency=0.1)
    (r,) = evaluate([Assertion("dht.get.p99", "<=", 1.0, during="late")], rec)
    assert r.status == "unknown" and "not observed during late" in r.line


def test_unknown_op_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown comparison '=>'"):
        evaluate([Assertion("peers.alive.min", "=>", 1)], Recorder(1.0))


def test_format_duration() -> None:
    assert format_duration(0.00012) == "120 us"
    assert format_duration(0.0349) == "34.9 ms"
    assert format_duration(0.9999) == "1 s"
    assert format_duration(2.4) == "2.4 s"
    assert format_duration(150) == "2.5 min"
    assert format_duration(7200) == "2 h"


def _report(tmp_path, rec: Recorder, name: str = "synthetic", **extra):
    """A report of ``rec`` with two assertions; ``extra``: more of write_report's keywords."""
    results = evaluate(
        [Assertion("dht.get.success_rate", ">=", 0.9), Assertion("nothing.total", "<", 1)], rec
    )
    out = write_report(
        tmp_path / name,
        name=name,
        seed=7,
        scenario_yaml="name: synthetic\nseed: 7",
        recorder=rec,
        results=results,
        digest="abc123",
        wall_s=1.25,
        description="a synthetic run",
        **extra,
    )
    return out, results


def test_report_folder(tmp_path) -> None:
    out, results = _report(tmp_path, synthetic_recorder())
    expected = {"scenario.yaml", "metrics.json", "timeseries.csv", "events.csv", "report.md", *PLOTS}
    assert {p.name for p in out.iterdir()} == expected
    for png in PLOTS:
        data = (out / png).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, png
    assert (out / "scenario.yaml").read_text() == "name: synthetic\nseed: 7\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["wall_s"] == 1.25 and metrics["seed"] == 7 and metrics["digest"] == "abc123"
    assert metrics["summary"]["peers.alive.min"] == 44
    assert metrics["during"]["crash-wave"]["peers.alive.mean"] == 44
    assert [a["status"] for a in metrics["assertions"]] == ["pass", "unknown"]
    assert metrics["assertion_counts"] == {"pass": 1, "fail": 0, "unknown": 1}
    assert (out / "events.csv").read_text().splitlines() == [
        "name,action,start_s,end_s,duration_s",
        "crash-wave,crash,120.0,150.0,30.0",
        "slow-eu,degrade,200.0,300.0,100.0",
    ]
    ts = (out / "timeseries.csv").read_text().splitlines()
    assert ts[0].startswith("time,peers.alive,") and len(ts) == 61
    md = (out / "report.md").read_text()
    for r in results:
        assert r.subject in md
    for needle in (
        "PASS",
        "UNKNOWN",
        "abc123",
        "seed 7",
        "a synthetic run",
        "(alive_peers.png)",
        "crash-wave",
    ):
        assert needle in md


def test_metrics_json_is_deterministic(tmp_path) -> None:
    a, _ = _report(tmp_path, synthetic_recorder(3), "a")
    b, _ = _report(tmp_path, synthetic_recorder(3), "b")
    c, _ = _report(tmp_path, synthetic_recorder(4), "c")
    ma, mb = deterministic_metrics(a / "metrics.json"), deterministic_metrics(b / "metrics.json")
    assert ma["name"] == "a" and mb["name"] == "b"
    ma.pop("name"), mb.pop("name")
    assert ma == mb
    assert deterministic_metrics(c / "metrics.json")["summary"] != ma["summary"]
    assert (a / "timeseries.csv").read_bytes() == (b / "timeseries.csv").read_bytes()


def test_empty_recorder_reports_not_observed(tmp_path) -> None:
    rec = Recorder(10.0, duration=60.0)
    rec.value("train.loss", 1.0, math.nan)  # a broken expert: NaN is written as "nan", not null
    out, results = _report(tmp_path, rec)
    assert [r.status for r in results] == ["unknown", "unknown"]
    for png in PLOTS:
        assert (out / png).read_bytes().startswith(PNG_MAGIC)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["summary"]["train.loss.final"] == "nan"


def _placeholders(fig) -> list[str]:  # type: ignore[no-untyped-def]
    texts = [text.get_text() for ax in fig.axes for text in ax.texts]
    plt.close(fig)
    return [text for text in texts if text in (NOT_OBSERVED, "none in this run")]


def test_plots_say_what_a_run_did_not_observe() -> None:
    dht_only = Recorder(10.0, duration=60.0)
    for name in ("moe.expert_failures", "moe.bans"):
        dht_only.count(name, 0.0, 0)  # the runner zeroes every counter
    dht_only.event("dht.get", 5.0, ok=True, latency=0.1)
    dht_only.gauge("peers.alive", 0.0, 3)
    rows = dht_only.timeseries()
    assert _placeholders(plots.training_loss(dht_only, rows)) == [NOT_OBSERVED]
    assert _placeholders(plots.expert_failures(dht_only, rows)) == [NOT_OBSERVED], "no training here"
    assert _placeholders(plots.lookup_latency_cdf(dht_only)) == []
    assert _placeholders(plots.alive_peers(dht_only)) == []
    trained = Recorder(10.0, duration=60.0)
    for name in ("moe.expert_failures", "moe.bans"):
        trained.count(name, 0.0, 0)
    trained.event("moe.step", 5.0, ok=True, latency=0.3)
    rows = trained.timeseries()
    assert _placeholders(plots.expert_failures(trained, rows)) == ["none in this run"]
    assert _placeholders(plots.lookup_latency_cdf(trained)) == [NOT_OBSERVED]


def test_live_figures_cover_the_recent_span() -> None:
    rec = Recorder(1.0)
    for i in range(100):
        rec.event("dht.get", float(i), ok=i < 90, latency=0.1)
        rec.value("train.loss", float(i), 1.0 if i < 90 else 3.0)
    rec.gauge("peers.alive", 99.0, 12)
    live = rec.live(span=19.0)  # samples at 80..99: half of them failed
    assert live == {"peers.alive": 12, "dht.get.success_rate": 0.5, "train.loss.mean": 2.0}


def test_first_and_final_follow_time_order() -> None:
    rec = Recorder(1.0)
    for t, v in [(2.0, 5.0), (1.0, 9.0), (3.0, 1.0)]:  # concurrent batches finish out of order
        rec.value("train.loss", t, v)
    s = rec.summary()
    assert s["train.loss.first"] == 9.0 and s["train.loss.final"] == 1.0


def test_report_of_a_run_that_stopped_early_says_so_first(tmp_path) -> None:
    rec = synthetic_recorder()
    why = "the runner failed at 57.3 s: RuntimeError: boom"
    out, _ = _report(tmp_path, rec, "stopped", stopped=why, overrides=["duration=1m", "seed=7"])
    assert json.loads((out / "metrics.json").read_text())["stopped"] == why
    lines = (out / "report.md").read_text().splitlines()
    assert lines[2:4] == [
        f"> **This run stopped early**: {why}. The assertions judged only what was measured",
        "> until then; `run.log` has the details.",
    ], "right under the title, before any figure"
    assert (
        "- overrides of the scenario file: `duration=1m`, `seed=7` (`scenario.yaml` has them applied)"
        in lines
    )
    whole, _ = _report(tmp_path, rec)
    assert json.loads((whole / "metrics.json").read_text())["stopped"] is None
    assert "stopped early" not in (whole / "report.md").read_text()
    assert "overrides" not in (whole / "report.md").read_text()
