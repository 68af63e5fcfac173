"""Every scenario in `scenarios/` runs reduced to a few seconds of wall time, passes all its
assertions and writes its whole report (the full runs are measured in benchmarks/scenarios.py);
for the scenarios that exercise a feature of the format, the reduced run's metrics show that
feature's effect, not only that it ran."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from hivemind_sim.cli import main
from hivemind_sim.scenario.format.units import parse_duration

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
PLOTS = ("alive_peers", "lookup_latency_cdf", "success_rates", "training_loss", "expert_failures")

REDUCED = {
    "quickstart": [
        "warmup=10s",
        "duration=20s",
        "events.0.at=5s",
        "events.0.duration=10s",
        "assertions.2=train.loss.final <= 1.5",  # 20 s of training: from 2.3 at the start
    ],
    "dht_churn_1k": [
        "peers.home.count=60",
        "peers.campus.count=20",
        "warmup=20s",
        "duration=2m",
        "assertions.4=peers.alive.home.min >= 30",
    ],
    "dmoe_training_failures": [
        "peers.servers.count=5",
        "peers.trainers.count=2",
        "duration=20s",
        "events.0.select.fraction=20%",
    ],
    "partition_heal": [
        "peers.americas.count=2",
        "peers.eurasia.count=2",
        "peers.dht.count=8",
        "duration=20s",
        "events.0.at=5s",
        "events.0.duration=10s",
    ],
    "flash_crowd": [
        "peers.crowd.count=40",
        "peers.crowd.join_at=10s",
        "duration=1m",
        "assertions.2=peers.alive.final >= 41",
    ],
    "heterogeneous_hardware": [
        "warmup=10s",
        "duration=10s",
        "peers.gaming.count=2",
        "assertions.4=train.loss.final <= 1.2",  # 10 s of training: from 2.6 at the start
    ],
    "scale_10k": [
        "peers.volunteers.count=160",
        "peers.datacenters.count=40",
        "warmup=30s",
        "duration=1m",
    ],
    "scale_100k": [  # the full run is benchmarks/scale.py's
        "peers.volunteers.count=160",
        "peers.datacenters.count=40",
        "warmup=30s",
        "duration=1m",
    ],
    # 6 peers instead of 24 (2 of them in Europe), the outage from 5 s to 10 s of 15
    "swarm_training": [
        "peers.wired.count=4",
        "peers.wireless.count=2",
        "peers.wireless.churn.min_alive=1",
        "duration=15s",
        "events.europe-outage.at=5s",
        "events.europe-outage.duration=5s",
        "assertions.1=moe.step.success_rate >= 0.9",  # 6 peers: a lossy DHT search fails more often
        "assertions.3=peers.alive.min <= 4 during europe-outage",
        "assertions.4=peers.alive.wired.final == 4",
    ],
    # one trainer instead of three, each fault 4-5 s instead of 10-15 s
    "expert_faults": [
        "peers.trainers.count=1",
        "duration=40s",
        *(
            f"events.{name}.{key}={value}"
            for name, at, duration in [
                ("slow", "3s", "5s"),
                ("bad-links", "9s", "5s"),
                ("frozen", "15s", "5s"),
                ("nan-answers", "21s", "5s"),
                ("servers-leave", "27s", "5s"),
                ("servers-restart", "33s", None),
                ("garbage-answers", "35s", "4s"),
            ]
            for key, value in (("at", at), ("duration", duration))
            if value is not None
        ),
        # one trainer: less queueing on the slowed devices, fewer bans and failures, fewer steps
        "assertions.2=moe.step.p50 >= 300ms during slow",
        "assertions.3=moe.expert_call.p50 >= 75ms during slow",
        "assertions.6=moe.bans.total >= 2 during frozen",
        "assertions.8=moe.bans.total >= 2 during nan-answers",
        "assertions.13=train.loss.final <= 1.0 during servers-leave",
        # 30 s bans outlast these short windows: the servers that leave are the NaN ones, already
        # banned, and one answers garbage, so that honest experts outnumber it after the restart
        "events.servers-leave.select={peers: [servers-4, servers-5]}",
        "events.garbage-answers.select={peers: [servers-7]}",
        "assertions.15=moe.rejected.total >= 1 during garbage-answers",
        "assertions.16=train.loss.final <= 1.0 during garbage-answers",
    ],
    # one trainer, 12 s of attack and 8 s of phantom values instead of 40 s and 20 s
    "hostile_peers": [
        "peers.trainers.count=1",
        "warmup=20s",
        "duration=30s",
        *(f"events.{index}.{key}" for index in range(5) for key in ("at=3s", "duration=12s")),
        "events.phantoms.at=18s",
        "events.phantoms.duration=8s",
        "events.6.at=18s",  # phantom contacts, alongside the phantom values
        "events.6.duration=8s",
    ],
    # small already (they are deployed as real processes too): a shorter window
    "fidelity_dht": ["duration=30s"],
    "fidelity_dmoe": ["duration=30s"],
    "lossy_links": [
        "peers.wired.count=40",
        "peers.lossy.count=10",
        "warmup=20s",
        "duration=1m",
        "assertions.2=dht.lookup.top1.mean >= 0.9",  # 50 peers, 20 s after joining
    ],
    "churn_models": [
        "duration=90s",
        "workload.dht.gets_per_second=5",
        "workload.dht.lookups_per_second=1",
    ],
}


class Report:
    """A finished run's folder: its metrics, time series and resolved scenario."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.metrics: dict[str, Any] = json.loads((folder / "metrics.json").read_text())
        self.summary: dict[str, float] = self.metrics["summary"]
        self.scenario: dict[str, Any] = yaml.safe_load((folder / "scenario.yaml").read_text())
        with (folder / "timeseries.csv").open() as file:
            self.rows = list(csv.DictReader(file))

    def during(self, event: str) -> dict[str, float]:
        return self.metrics["during"][event]

    def count(self, group: str) -> int:
        return next(g["count"] for g in self.scenario["peers"] if g["group"] == group)

    def column(self, name: str) -> list[float]:
        return [float(row[name]) for row in self.rows if row[name] != ""]

    @property
    def duration(self) -> float:
        return self.metrics["duration_s"]


def swarm_training_effects(run: Report) -> None:
    peers = sum(group["count"] for group in run.scenario["peers"])
    outage = run.during("europe-outage")
    # the regional crash: the European peers (2 of the reduced 6) are down together, and come back
    assert outage["peers.alive.min"] <= peers - 2, outage
    assert outage["moe.expert_failures.total"] > 0, outage
    assert run.summary["peers.alive.wired.final"] == run.count("wired")
    # trains with 2 batches in flight: the loss falls, and by Little's law (steps per second
    # times a step's mean latency) each live peer has about 2 steps in flight; 1 at one batch
    in_flight = run.summary["moe.step.count"] * run.summary["moe.step.mean"]
    in_flight /= run.duration * run.summary["peers.alive.mean"]
    assert in_flight >= 1.5, in_flight
    assert run.summary["train.loss.fell"] >= 0.4
    # link loss: the wireless peers' calls lose 1% of their messages, yet their steps succeed:
    # a lost message costs one expert's answer, and k_min = 1 lets the step go on with the
    # others (in the full run wireless peers lose no step at all, 317 of 317, while wired
    # ones lose a few to the outage). Step times do not separate the two either: a slow but
    # alive server is not banned, so wired peers keep choosing wireless experts too.
    assert run.summary["moe.step.wireless.success_rate"] >= 0.95


def expert_faults_effects(run: Report) -> None:
    whole = run.summary
    servers = run.count("servers")
    slow = run.during("slow")  # slow_compute: every expert takes 10x as long
    assert slow["moe.expert_call.p50"] >= 1.3 * whole["moe.expert_call.p50"], slow
    assert slow["moe.step.p50"] >= 1.2 * whole["moe.step.p50"], slow
    bad = run.during("bad-links")  # degrade: +300 ms each way, 2% loss, 5 Mbit/s
    assert bad["moe.expert_call.max"] >= 0.6, bad
    assert bad["moe.bans.total"] > 0, bad
    frozen = run.during("frozen")  # freeze: calls time out, the frozen servers get banned
    assert frozen["moe.expert_failures.total"] > 0 and frozen["moe.bans.total"] > 0, frozen
    nan = run.during("nan-answers")  # misbehave nan: the client rejects the answers, bans the servers
    assert nan["moe.expert_failures.total"] > 0 and nan["moe.bans.total"] > 0, nan
    assert nan["moe.step.success_rate"] >= 0.95, nan
    left = run.during("servers-leave")  # leave: two servers gone for the window, then back
    assert left["peers.alive.servers.min"] == servers - 2, left
    # restart: three servers down at once (only the restart takes more than two), then back
    assert whole["peers.alive.servers.min"] == servers - 3
    assert whole["peers.alive.servers.final"] == servers
    garbage = run.during("garbage-answers")  # misbehave garbage: rejected, the loss stays put
    assert garbage["moe.rejected.total"] > 0 and garbage["moe.bans.total"] > 0, garbage
    assert garbage["train.loss.final"] <= 2 * left["train.loss.final"], (garbage, left)


def churn_models_effects(run: Report) -> None:
    groups = {group["group"]: group for group in run.scenario["peers"]}
    for name in ("exponential", "weibull", "lognormal", "pareto", "nat"):  # each drawn model churned
        assert run.summary[f"peers.alive.{name}.min"] < groups[name]["count"], name
    floor = groups["weibull"]["churn"]["min_alive"]  # min_alive: reached, never crossed
    assert run.summary["peers.alive.weibull.min"] == floor
    ceiling = groups["lognormal"]["churn"]["max_alive"]  # max_alive: once at or below, never above
    alive = run.column("peers.alive.lognormal")
    assert min(alive) <= ceiling and run.summary["peers.alive.lognormal.final"] <= ceiling
    assert all(level <= ceiling for level in alive[next(i for i, v in enumerate(alive) if v <= ceiling) :])
    # the trace: the group is up exactly as the CSV says (rejoins take well under a second)
    expected_mean, expected_min = trace_levels(
        ROOT / "scenarios" / groups["traced"]["churn"]["trace"], groups["traced"]["count"], run.duration
    )
    assert run.summary["peers.alive.traced.min"] == expected_min
    assert abs(run.summary["peers.alive.traced.mean"] - expected_mean) < 0.1, expected_mean
    # the DHT kept working through it all
    assert run.summary["dht.get.success_rate"] >= 0.98
    assert run.summary["dht.lookup.top1.mean"] >= 0.75


def trace_levels(path: Path, count: int, duration: float) -> tuple[float, int]:
    """The time-weighted mean and the minimum of the live peers a churn trace makes over
    [0, duration) (peers in no row are down)."""
    changes: list[tuple[float, int]] = []
    up = 0
    with path.open() as file:
        for row in csv.DictReader(file):
            join = parse_duration(row["join"])
            leave = parse_duration(row["leave"]) if row["leave"] else duration
            join, leave = max(0.0, join), min(leave, duration)
            if join >= leave:
                continue
            if join == 0:
                up += 1
            else:
                changes.append((join, 1))
            changes.append((leave, -1))
    assert up <= count
    area, lowest, last = 0.0, up, 0.0
    for at, change in sorted(changes):
        area += up * (at - last)
        up, last = up + change, at
        if at < duration:
            lowest = min(lowest, up)
    return area / duration, lowest


def hostile_peers_effects(run: Report) -> None:
    attack, phantoms = run.during("attack"), run.during("phantoms")
    window = {event["name"]: event for event in run.scenario["events"] if "name" in event}
    # the floods happened: 400 requests a second on top of the workload, answered or not
    attacked, phantom = (parse_duration(window[name]["duration"]) for name in ("attack", "phantoms"))
    per_second = attack["rpc.messages.total"] / attacked
    quiet = run.summary["rpc.messages.total"] - attack["rpc.messages.total"] - phantoms["rpc.messages.total"]
    quiet_per_second = quiet / (run.duration - attacked - phantom)
    assert per_second >= quiet_per_second + 300, (per_second, quiet_per_second)
    # and the well-behaved peers kept working through every attack
    for metric in ("dht.store", "dht.get", "dht.lookup"):
        assert attack[f"{metric}.count"] >= 10 and attack[f"{metric}.success_rate"] >= 0.95, metric
    assert attack["moe.step.count"] >= 5 and attack["moe.expert_failures.total"] == 0, attack
    assert attack["dht.lookup.overlap.mean"] >= 0.9, attack
    # made-up values and contacts neither hide the experts nor stall stores and lookups
    assert phantoms["moe.step.count"] >= 3 and phantoms["moe.step.success_rate"] >= 0.9, phantoms
    for metric in ("dht.store", "dht.lookup"):
        assert phantoms[f"{metric}.success_rate"] >= 0.9, (metric, phantoms)


EFFECTS: dict[str, Callable[[Report], None]] = {
    "hostile_peers": hostile_peers_effects,
    "swarm_training": swarm_training_effects,
    "expert_faults": expert_faults_effects,
    "churn_models": churn_models_effects,
}


def test_every_shipped_scenario_has_a_reduced_version_here() -> None:
    assert {path.stem for path in SCENARIOS} == set(REDUCED)


def test_the_trace_levels_are_what_the_trace_says(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("peer,join,leave\na,0,\nb,0,10\nb,20s,30\nc,5,\n")
    # 0-5: a b; 5-10: a b c; 10-20: a c; 20-30: a b c; 30-40: a c
    assert trace_levels(trace, 3, 40) == ((2 * 5 + 3 * 5 + 2 * 10 + 3 * 10 + 2 * 10) / 40, 2)


@pytest.mark.parametrize("path", SCENARIOS, ids=[path.stem for path in SCENARIOS])
def test_a_shipped_scenario_runs_and_writes_its_report(path: Path, tmp_path: Path) -> None:
    text = path.read_text()
    assert text.startswith("#"), "each shipped scenario opens with a comment saying what it shows"
    status = main(
        [
            "run",
            str(path),
            "--quiet",
            "--out",
            str(tmp_path),
            *[part for override in REDUCED[path.stem] for part in ("--set", override)],
        ]
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    failed = [a["line"] for a in metrics["assertions"] if a["status"] != "pass"]
    assert status == 0 and not failed, failed
    for plot in PLOTS:
        assert (tmp_path / f"{plot}.png").stat().st_size > 10_000
    assert (tmp_path / "report.md").read_text().count("|") > 20
    assert metrics["summary"].get("peers.errors.total", 0) == 0
    if path.stem in EFFECTS:
        EFFECTS[path.stem](Report(tmp_path))
