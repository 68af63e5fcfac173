"""One peer's failure is that peer's failure; the runner's own failure stops the run with a report.

Also: what a run measures about peers coming and going (alive levels at each change, messages
per interval) and what its run.log says.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hivemind_core.dht import DHTNode
from hivemind_core.moe.server import ExpertServer
from hivemind_sim.cli import main
from hivemind_sim.scenario.format.loader import parse_scenario
from hivemind_sim.scenario.results import report
from hivemind_sim.scenario.run import runner
from hivemind_sim.scenario.run.runner import run_scenario
from hivemind_sim.scenario.run.training import Trainer

DHT_ONLY = """\
schema_version: 1
name: failing
seed: 2
warmup: 10s
duration: 20s
sample_interval: 5s
peers:
  - group: dht
    role: dht
    count: 8
  - group: far
    role: dht
    count: 3
    link: {latency: 10ms}
events:
  - {name: crash, at: 7.3s, duration: 5s, action: crash, select: {group: dht, count: 3}}
workload:
  dht: {stores_per_second: 5, gets_per_second: 5, lookups_per_second: 0}
assertions:
  - dht.store.success_rate >= 0.9
"""

TRAINING = """\
schema_version: 1
name: training
seed: 1
warmup: 5s
duration: 8s
sample_interval: 2s
peers:
  - {group: servers, role: server, count: 3, experts: 2}
  - {group: trainers, role: trainer, count: 2}
workload:
  training: {model: {hidden_dim: 8}, grid: [3, 2], k_best: 2, batch_size: 8}
"""


@pytest.fixture(autouse=True)
def no_plots(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reports here are read for their metrics and logs; drawing their plots is most of their cost."""
    monkeypatch.setattr(report, "write_plots", lambda *args, **kwargs: None)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def run_cli(scenario: Path, out: Path, *overrides: str) -> int:
    sets = [part for override in overrides for part in ("--set", override)]
    return main(["run", str(scenario), "--quiet", "--out", str(out), *sets])


def test_a_peer_whose_requests_raise_is_counted_and_the_run_goes_on(tmp_path: Path, monkeypatch) -> None:
    real_get = DHTNode.get

    async def get(self: DHTNode, key, *args, **kwargs):
        if self.rpc.transport.endpoint == "dht-3":
            raise RuntimeError("a bug in this peer's get")
        return await real_get(self, key, *args, **kwargs)

    monkeypatch.setattr(DHTNode, "get", get)
    out = tmp_path / "report"
    assert run_cli(write(tmp_path, DHT_ONLY), out) == 0
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["peers.errors.total"] >= 1
    assert summary["dht.get.count"] > summary["peers.errors.total"], "the other peers' gets went on"
    assert summary["dht.get.success_rate"] < 1
    log = (out / "run.log").read_text()
    assert "dht-3: a DHT get failed: RuntimeError: a bug in this peer's get" in log
    assert "Traceback" in log


def test_a_failing_training_step_stops_that_trainer_only(monkeypatch) -> None:
    real_step = Trainer._step

    def step(self: Trainer, batch) -> None:
        if self.name == "trainers-0":
            raise ValueError("a bug in trainers-0's step")
        real_step(self, batch)

    monkeypatch.setattr(Trainer, "_step", step)
    result = run_scenario(parse_scenario(TRAINING, filename="training.yaml"))
    summary = result.recorder.summary()
    assert result.stopped is None
    assert summary["peers.errors.total"] == 1, "trainers-0's loop stopped at its first failure"
    assert summary["moe.step.count"] > 10 and summary["moe.step.success_rate"] < 1


def test_a_server_failing_to_stop_still_goes_down(tmp_path: Path, monkeypatch) -> None:
    async def shutdown(self: ExpertServer) -> None:
        raise RuntimeError("shutdown failed")

    monkeypatch.setattr(ExpertServer, "shutdown", shutdown)
    text = TRAINING + "events:\n  - {at: 2s, action: crash, select: {group: servers, count: 1}}\n"
    result = run_scenario(parse_scenario(text, filename="training.yaml"))
    summary = result.recorder.summary()
    assert result.stopped is None
    assert summary["peers.errors.total"] == 3, "its crash, and the others' stops when the run ends"
    assert summary["peers.alive.servers.final"] == 2, "the crashed server is down though its shutdown raised"


def test_peers_that_cannot_join_are_counted_and_the_others_run(tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert run_cli(write(tmp_path, DHT_ONLY), out, "peers.far.link.latency=10s") == 0
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert summary["peers.join_failures.total"] == 3
    assert summary["peers.alive.far.final"] == 0
    assert "far-0 could not join: cannot join the DHT" in (out / "run.log").read_text()


def test_a_run_in_which_nobody_can_join_stops_and_says_so_in_one_line(tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    slow = ["peers.dht.link.latency=10s", "peers.far.link.latency=10s"]
    assert run_cli(write(tmp_path, DHT_ONLY), out, *slow) == 3
    err = capsys.readouterr().err
    assert "none of the 10 peers that joined after dht-0 could join during the warmup" in err
    assert "Traceback" not in err
    metrics = json.loads((out / "metrics.json").read_text())
    assert "could join during the warmup" in metrics["stopped"]
    assert "stopped early" in (out / "report.md").read_text()


def test_a_failure_of_the_runner_itself_stops_the_run_with_a_report(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    real_sample = runner._Run._sample_at

    def sample_at(self, t: float) -> None:
        if t >= 10:
            raise KeyError("a bug in the runner")
        real_sample(self, t)

    monkeypatch.setattr(runner._Run, "_sample_at", sample_at)
    out = tmp_path / "report"
    assert run_cli(write(tmp_path, DHT_ONLY), out) == 3
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped"].startswith("the runner failed at 10.0 s: KeyError: 'a bug in the runner'")
    assert metrics["summary"]["dht.store.count"] > 0, "what was measured until then is reported"
    assert "KeyError: 'a bug in the runner'" in (out / "run.log").read_text()
    assert "the runner failed at 10.0 s" in capsys.readouterr().err


def test_alive_peers_are_counted_when_they_change() -> None:
    result = run_scenario(parse_scenario(DHT_ONLY, filename="failing.yaml"))
    t, alive = result.recorder.gauge_columns("peers.alive")  # type: ignore[misc]
    assert alive[np.isclose(t, 7.3)].min() < 11, "the crash shows at 7.3 s, not at the next 5 s sample"
    during = result.recorder.summary(during="crash")
    assert during["peers.alive.dht.min"] == 5 and during["peers.alive.dht.mean"] == pytest.approx(5)
    assert result.recorder.summary()["peers.alive.dht.final"] == 8


def test_messages_are_counted_in_the_interval_they_were_delivered_in() -> None:
    result = run_scenario(parse_scenario(DHT_ONLY, filename="failing.yaml"))
    rows = result.recorder.timeseries()
    per_interval = [row["rpc.messages"] for row in rows]
    assert len(per_interval) == 4 and min(per_interval) > 0, per_interval
    assert max(per_interval) < 2 * min(per_interval), "no interval holds two intervals' messages"
    assert sum(per_interval) == result.recorder.summary()["rpc.messages.total"]


def test_run_log_lines_carry_simulated_time_and_repeats_are_counted(tmp_path: Path, monkeypatch) -> None:
    async def get(self: DHTNode, key, *args, **kwargs):
        raise RuntimeError("always")

    monkeypatch.setattr(DHTNode, "get", get)
    out = tmp_path / "report"
    run_cli(write(tmp_path, DHT_ONLY), out)
    lines = [line for line in (out / "run.log").read_text().splitlines() if "a DHT get failed" in line]
    assert len(lines) == 3, "three of a kind are shown"
    first = lines[0].split()
    assert float(first[0]) > 0 and first[1] == "s"
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    more = int(summary["peers.errors.total"]) - 3
    assert f"{more} more like this from hivemind_sim.scenario.run.failures" in (out / "run.log").read_text()
