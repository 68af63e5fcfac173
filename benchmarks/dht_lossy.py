"""Lookups and gets when a fifth of the peers sit behind slow, lossy links: scenarios/lossy_links.yaml
(250 DHT peers, 50 of them on 1 Mbit/s, 80 ms, 3% loss links), run with churn off and with heavy
churn on both groups (Weibull sessions of median ``--session``, downtimes of median
``--downtime``, shape 0.55, 70% crashes).

Prints per variant the lookup, get and store latency (p50, p99), their success rates, lookup
accuracy against the live-peer oracle, messages per peer and the trace digest, then a final JSON
line. It runs through the command line (``hivemind_sim.cli``), so an older checkout measures the
same file: ``PYTHONPATH=/old python benchmarks/dht_lossy.py --scenario $PWD/scenarios/lossy_links.yaml``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hivemind_sim.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
METRICS = [
    "dht.lookup.p50",
    "dht.lookup.p99",
    "dht.lookup.success_rate",
    "dht.lookup.top1.mean",
    "dht.lookup.overlap.mean",
    "dht.get.p50",
    "dht.get.p99",
    "dht.get.success_rate",
    "dht.store.p50",
    "dht.store.p99",
    "dht.store.success_rate",
    "rpc.messages.per_peer",
]


def churn(session: str, downtime: str) -> str:
    """A group's churn, as a ``--set`` value."""
    return (
        f"{{session: {{distribution: weibull, shape: 0.55, median: {session}}}, "
        f"downtime: {{distribution: weibull, shape: 0.55, median: {downtime}}}, graceful: 30%}}"
    )


def run(scenario: str, overrides: list[str]) -> dict[str, Any]:
    """One run's summary metrics, digest and wall time."""
    with tempfile.TemporaryDirectory() as out:
        args = ["run", scenario, "--quiet", "--overwrite", "--out", out]
        for override in overrides:
            args += ["--set", override]
        started = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            cli(args)  # exit status 1 (an assertion failed) still measured what it measured
        wall = time.perf_counter() - started
        metrics = json.loads((Path(out) / "metrics.json").read_text())
    summary = metrics["summary"]
    result: dict[str, Any] = {name: round(summary[name], 3) for name in METRICS if name in summary}
    result["digest"] = metrics.get("digest")
    result["wall_s"] = round(wall, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default=str(ROOT / "scenarios" / "lossy_links.yaml"))
    parser.add_argument("--duration", default="5m", help="measured window of each run")
    parser.add_argument("--session", default="5m", help="median session under heavy churn")
    parser.add_argument("--downtime", default="2m", help="median downtime under heavy churn")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    common = [f"duration={args.duration}", f"seed={args.seed}"]
    heavy = [f"peers.{group}.churn={churn(args.session, args.downtime)}" for group in ("wired", "lossy")]
    results: dict[str, Any] = {}
    for variant, overrides in (("churn_off", common), ("heavy_churn", common + heavy)):
        results[variant] = run(args.scenario, overrides)
        print(variant, results[variant], file=sys.stderr, flush=True)
    settings = {name: getattr(args, name) for name in ("duration", "session", "downtime", "seed")}
    print(json.dumps({**settings, **results}))


if __name__ == "__main__":
    main()
