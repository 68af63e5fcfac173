"""`hivemind-sim run` end to end: a YAML file in, a report with plots out, judged by assertions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hivemind_sim.cli import main
from hivemind_sim.scenario.results.report import deterministic_metrics

ROOT = Path(__file__).resolve().parent.parent
REPORT_FILES = {
    "scenario.yaml",
    "metrics.json",
    "timeseries.csv",
    "events.csv",
    "report.md",
    "run.log",
    "alive_peers.png",
    "lookup_latency_cdf.png",
    "success_rates.png",
    "training_loss.png",
    "expert_failures.png",
}

TINY = """\
schema_version: 1
name: tiny
seed: 3
warmup: 10s
duration: 40s
sample_interval: 5s
peers:
  - group: workers
    role: peer
    count: 4
    experts: 2
    link: {uplink: 50Mbit/s, downlink: 100Mbit/s, latency: 10ms}
  - group: dht
    role: dht
    count: 6
    churn:
      session: {distribution: exponential, mean: 20s}
      downtime: {distribution: exponential, mean: 5s}
      graceful: 50%
events:
  - name: wave
    at: 15s
    duration: 10s
    action: crash
    select: {group: workers, count: 1}
workload:
  dht: {stores_per_second: 2, gets_per_second: 4, keys: 50}
  training:
    model: {hidden_dim: 8}
    grid: [4, 2]
    k_best: 2
    batch_size: 8
    forward_timeout: 2s
    backward_timeout: 2s
assertions:
  - dht.get.success_rate >= 0.7
  - moe.step.count >= 1
  - peers.alive.min >= 4
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def run_cli(*args: str) -> int:
    return main(["run", *args, "--quiet"])


def test_a_run_writes_every_report_file_and_passes_its_assertions(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    assert run_cli(str(tiny), "--out", str(out), "--set", "duration=25s") == 0
    assert {path.name for path in out.iterdir()} >= REPORT_FILES
    for plot in out.glob("*.png"):
        assert plot.stat().st_size > 10_000, f"{plot.name} looks empty"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["seed"] == 3 and metrics["assertion_counts"] == {"pass": 3, "fail": 0, "unknown": 0}
    summary = metrics["summary"]
    assert summary["dht.get.count"] > 50 and summary["moe.step.count"] > 10
    assert summary["peers.alive.min"] < 10, "the crash wave and churn took peers down"
    assert [w["name"] for w in metrics["windows"]] == ["wave"]
    report = (out / "report.md").read_text()
    assert metrics["digest"] in report and "dht.get.success_rate" in report


def test_a_failing_assertion_exits_1_and_an_invalid_file_exits_2(tiny: Path, tmp_path: Path, capsys) -> None:
    failing = ["--set", "assertions.2=peers.alive.min >= 11", "--set", "duration=20s"]
    assert run_cli(str(tiny), "--out", str(tmp_path / "failing"), *failing) == 1
    metrics = json.loads((tmp_path / "failing" / "metrics.json").read_text())
    assert metrics["assertion_counts"]["fail"] == 1
    unjudged = ["--set", "assertions.2=dht.lookup.hops.mean <= 5", "--set", "duration=20s"]
    unjudged += ["--set", "workload.dht.lookups_per_second=0.0001"]  # so never observed in this seed's 20 s
    assert run_cli(str(tiny), "--out", str(tmp_path / "unknown"), *unjudged) == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text(TINY.replace("    count: 6", "    cuont: 6"))
    capsys.readouterr()
    assert run_cli(str(broken)) == 2
    assert (
        "broken.yaml:15: peers.1.cuont: unknown key `cuont` (did you mean `count`?)"
        in capsys.readouterr().err
    )


def test_set_overrides_reach_the_run(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "more"
    assert run_cli(str(tiny), "--out", str(out), "--set", "peers.1.count=9", "--set", "duration=20s") == 0
    assert "count: 9" in (out / "scenario.yaml").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["peers_ever_alive"] == 13
    assert metrics["duration_s"] == 20


def test_the_resolved_scenario_reruns_to_the_same_digest(tiny: Path, tmp_path: Path) -> None:
    short = ["--set", "duration=10s", "--set", "events.0.at=5s"]
    assert run_cli(str(tiny), "--out", str(tmp_path / "first"), *short, "--seed", "5") == 0
    resolved = tmp_path / "first" / "scenario.yaml"
    assert run_cli(str(resolved), "--out", str(tmp_path / "again")) == 0
    first = deterministic_metrics(tmp_path / "first" / "metrics.json")
    assert deterministic_metrics(tmp_path / "again" / "metrics.json") == first
    # (tests/test_scenario_every_feature.py runs one seed in other processes and hash seeds)
    assert run_cli(str(tiny), "--out", str(tmp_path / "other"), *short, "--seed", "6") == 0
    assert deterministic_metrics(tmp_path / "other" / "metrics.json")["digest"] != first["digest"]


def test_validate_checks_without_running(tiny: Path, capsys) -> None:
    assert main(["validate", str(tiny)]) == 0
    assert "valid: 10 peers in 2 groups, 1 events, 3 assertions" in capsys.readouterr().out


def test_a_gml_topology_file_and_backbone_bandwidth(tmp_path: Path) -> None:
    (tmp_path / "net.gml").write_text(
        'graph [\n  node [ id 0 label "a" ]\n  node [ id 1 label "b" ]\n'
        "  edge [ source 0 target 1 latency 40 ]\n]\n"
    )
    text = TINY.replace(
        "peers:\n",
        "topology:\n  kind: file\n  path: net.gml\n  params: {latency_unit: 1ms}\n"
        "  backbone_bandwidth: 1Gbit/s\npeers:\n",
        1,
    )
    scenario = tmp_path / "gml.yaml"
    scenario.write_text(text)
    assert run_cli(str(scenario), "--out", str(tmp_path / "gml"), "--set", "duration=20s") == 0


def test_sweep_and_compare_from_the_command_line(tiny: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "sweep"
    sweep = [
        "sweep",
        str(tiny),
        "--set",
        "duration=10s",
        "--set",
        "events.0.at=5s",
        "--seeds",
        "2",
        "--workers",
        "1",
    ]
    assert main([*sweep, "--out", str(out), "--quiet"]) == 0
    assert (out / "sweep.md").is_file() and (out / "sweep.csv").is_file()
    first, second = sorted(path.parent for path in out.glob("*/seed-*/metrics.json"))
    assert main(["compare", str(first), str(second)]) == 0
    assert "# Comparison" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", str(tiny), "--seeds", "0"])
    assert exit_.value.code == 2 and "argument --seeds: must be at least 1, got 0" in capsys.readouterr().err


def test_a_warmup_too_short_for_the_joins_is_an_error(tiny: Path, tmp_path: Path, capsys) -> None:
    assert run_cli(str(tiny), "--out", str(tmp_path / "report"), "--set", "warmup=0s") == 2
    assert "longer than the 0 s warmup: raise `warmup`" in capsys.readouterr().err


LITTLE = """\
schema_version: 1
name: little
seed: 2
warmup: 5s
duration: 10s
sample_interval: 5s
peers:
  - group: dht
    role: dht
    count: 4
    link: {uplink: 20Mbit/s, downlink: 100Mbit/s, latency: 10ms}
workload:
  dht: {stores_per_second: 2, gets_per_second: 5, keys: 20}
assertions:
  - peers.alive.min >= 1
"""


def test_rerun_never_replaces_the_report_of_another_run(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    Path("little.yaml").write_text(LITTLE)
    first, second = Path("runs/little/2"), Path("runs/little/2-2")
    assert run_cli("little.yaml") == 0
    digest = json.loads((first / "metrics.json").read_text())["digest"]
    capsys.readouterr()

    assert run_cli("little.yaml", "--set", "duration=8s", "--seed", "2") == 0
    said = " ".join(capsys.readouterr().err.split())  # rich wraps lines at the console's width
    assert (
        "runs/little/2 holds the report of another run (that run -> this one: duration: 10 s -> 8 s): "
        "this run goes to runs/little/2-2" in said
    )
    assert json.loads((first / "metrics.json").read_text())["digest"] == digest, "the first report stays"
    assert json.loads((second / "metrics.json").read_text())["duration_s"] == 8

    assert run_cli("little.yaml", "--set", "duration=8s") == 0  # the same run: its own folder again
    assert sorted(path.name for path in Path("runs/little").iterdir()) == ["2", "2-2"]

    capsys.readouterr()
    assert run_cli("little.yaml", "--out", str(second)) == 2
    assert (
        "hivemind-sim: error: --out runs/little/2-2 holds the report of another run (that run -> this one: "
        "duration: 8 s -> 10 s); give another --out, or add --overwrite to replace it"
    ) in capsys.readouterr().err
    assert json.loads((second / "metrics.json").read_text())["duration_s"] == 8, "refused: nothing ran"
    assert run_cli("little.yaml", "--out", str(second), "--overwrite") == 0
    assert json.loads((second / "metrics.json").read_text())["digest"] == digest


def test_report_names_the_overrides_and_metrics_json_does_not(tmp_path: Path) -> None:
    scenario = tmp_path / "little.yaml"
    scenario.write_text(LITTLE)
    out = tmp_path / "out"
    assert run_cli(str(scenario), "--out", str(out), "--set", "duration=8s", "--seed", "4") == 0
    report = (out / "report.md").read_text()
    assert (
        "- overrides of the scenario file: `duration=8s`, `seed=4` (`scenario.yaml` has them applied)"
        in report
    )
    metrics = (out / "metrics.json").read_text()
    assert "duration=8s" not in metrics and '"stopped": null' in metrics
    plain = tmp_path / "plain"
    assert run_cli(str(scenario), "--out", str(plain)) == 0
    assert "overrides" not in (plain / "report.md").read_text()


def test_a_partition_before_a_flash_crowd_puts_the_crowd_on_its_side(tmp_path: Path) -> None:
    """The crowd is not on the network when the cut begins; it joins on its side of it."""
    text = TINY.replace(
        "peers:\n",
        "peers:\n  - {group: crowd, role: dht, count: 4, join_at: 8s}\n",
        1,
    ).replace(
        TINY[TINY.index("events:") : TINY.index("workload:")],
        "events:\n  - {name: split, at: 5s, duration: 10s, action: partition, sides: [{group: crowd}]}\n",
    )
    scenario = tmp_path / "crowd.yaml"
    scenario.write_text(text)
    out = tmp_path / "crowd"
    assert run_cli(str(scenario), "--out", str(out), "--set", "duration=20s") in (0, 1)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped"] is None
    assert metrics["summary"]["peers.alive.crowd.final"] == 0, "cut off from everyone it could join"
    assert metrics["summary"]["peers.join_failures.total"] == 4
