"""Wall time of a scenario run, what collecting its metrics costs, and training speed.

Runs the scenario (default: the shipped ``dht_churn_1k``) once as ``hivemind-sim run`` would,
and once more with a recorder that drops everything (same simulation, same trace digest), and
reports both wall times and the overhead. ``--set`` overrides as on the command line.

``--training`` measures what users of training scenarios feel instead: simulated DMoE steps
per wall second (and per CPU second, which a machine shared with other work does not skew) on
the quickstart and on ``swarm_training`` (24 peers that all host experts and train with 2
batches in flight), each run through ``hivemind-sim run`` in a fresh process. ``--baseline
DIR`` runs another checkout of the project the same way, interleaved, for figures side by
side. Final line: JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hivemind_sim.scenario.format.loader import load_scenario
from hivemind_sim.scenario.results.metrics import Recorder
from hivemind_sim.scenario.run import runner

ROOT = Path(__file__).resolve().parent.parent


class DroppingRecorder(Recorder):
    """Takes every sample and keeps none: the simulation without the cost of its metrics."""

    def event(
        self, name: str, t: float, ok: bool = True, latency: float | None = None, **fields: float
    ) -> None:
        pass

    def value(self, name: str, t: float, v: float) -> None:
        pass

    def count(self, name: str, t: float, n: float = 1) -> None:
        pass

    def gauge(self, name: str, t: float, v: float) -> None:
        pass

    def mark_peer(self, name: str) -> None:
        pass


def timed_run(path: Path, overrides: list[str], *, record: bool) -> tuple[float, runner.RunResult]:
    scenario = load_scenario(path, overrides)
    runner.Recorder = Recorder if record else DroppingRecorder  # type: ignore[misc]
    started = time.perf_counter()
    result = runner.run_scenario(scenario)
    return time.perf_counter() - started, result


TRAINING_SCENARIOS = ("quickstart", "swarm_training")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cli_training_run(code: Path, scenario: Path, out: Path) -> dict[str, object]:
    """One ``hivemind-sim run`` of ``scenario`` with the project at ``code``: its steps and speed."""
    command = [sys.executable, "-m", "hivemind_sim.cli", "run", str(scenario), "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(code)}
    cpu, started = _children_cpu(), time.perf_counter()
    done = subprocess.run([*command, "--overwrite"], cwd=code, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - started, _children_cpu() - cpu
    if not (out / "metrics.json").exists():
        raise SystemExit(
            f"{scenario.name} failed under {code} (status {done.returncode}):\n{done.stderr[-2000:]}"
        )
    metrics = json.loads((out / "metrics.json").read_text())
    steps = metrics["summary"]["moe.step.count"]
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "steps": steps,
        "steps_per_wall_s": round(steps / wall, 2),
        "steps_per_cpu_s": round(steps / cpu, 2),
        "digest": metrics["digest"],
    }


def training_speed(baseline: Path | None, repeats: int) -> dict[str, object]:
    """Steps per second on the training scenarios; with a baseline, both and the speed-up."""
    codes = {"now": ROOT} | ({"baseline": baseline.resolve()} if baseline is not None else {})
    figures: dict[str, dict[str, list[dict[str, object]]]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(repeats):
            for name in TRAINING_SCENARIOS:
                for label, code in codes.items():
                    scenario = ROOT / "scenarios" / f"{name}.yaml"
                    run = cli_training_run(code, scenario, Path(scratch) / f"{label}-{name}-{repeat}")
                    print(json.dumps({"scenario": name, "code": label, "repeat": repeat} | run), flush=True)
                    figures.setdefault(name, {}).setdefault(label, []).append(run)
    result: dict[str, object] = {}
    for name, by_code in figures.items():
        best = {
            label: max(runs, key=lambda run: float(run["steps_per_cpu_s"])) for label, runs in by_code.items()
        }
        entry: dict[str, object] = dict(best)
        if "baseline" in best:
            for rate in ("steps_per_wall_s", "steps_per_cpu_s"):
                entry[f"speedup_{rate}"] = round(float(best["now"][rate]) / float(best["baseline"][rate]), 2)
        result[name] = entry
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios" / "dht_churn_1k.yaml"))
    parser.add_argument(
        "--training", action="store_true", help="DMoE steps per second on the training scenarios"
    )
    parser.add_argument(
        "--baseline", type=Path, help="with --training: another checkout to measure alongside"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="with --training: runs of each (the best counts)"
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument(
        "--without-metrics", action="store_true", help="also run without metrics, for the overhead"
    )
    args = parser.parse_args()
    if args.training:
        print(json.dumps({"training": training_speed(args.baseline, args.repeats)}))
        return
    logging.disable(logging.WARNING)  # the peers' own warnings belong in a run's log, not here
    path = Path(args.scenario)
    wall, run = timed_run(path, args.set, record=True)
    statuses = [outcome.status for outcome in run.results]
    result: dict[str, object] = {
        "scenario": path.stem,
        "overrides": args.set,
        "wall_s": round(wall, 1),
        "assertions": {status: statuses.count(status) for status in ("pass", "fail", "unknown")},
        "digest": run.digest,
    }
    if args.without_metrics:
        bare, bare_run = timed_run(path, args.set, record=False)
        assert bare_run.digest == run.digest, "metrics must not change the simulation"
        result |= {"wall_without_metrics_s": round(bare, 1), "metrics_overhead": round(wall / bare - 1, 3)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
