"""Wall time of a scenario run, and what collecting its metrics costs.

Runs the scenario (default: the shipped ``dht_churn_1k``) once as ``hivemind-sim run`` would,
and once more with a recorder that drops everything (same simulation, same trace digest), and
reports both wall times and the overhead. ``--set`` overrides as on the command line. Final
line: JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios" / "dht_churn_1k.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument(
        "--without-metrics", action="store_true", help="also run without metrics, for the overhead"
    )
    args = parser.parse_args()
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
