"""A large DHT scenario end to end: wall time, peak memory, and what the swarm did.

Runs a scenario (default: the shipped ``scale_100k``) as ``hivemind-sim run`` would, once,
and reports its wall and CPU time, the process's peak resident memory (``ru_maxrss``, also per peer
above what the process held before the run), messages per peer, store and get success, get
latency, and lookup accuracy against the live-peer oracle (top-1, overlap with the k nearest,
hops). ``--set`` overrides as on the command line (``--set peers.volunteers.count=16000``).
Progress goes to stderr; the final line is JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

from hivemind_sim.scenario.format.loader import load_scenario
from hivemind_sim.scenario.run import runner

ROOT = Path(__file__).resolve().parent.parent
FIGURES = {
    "messages_per_peer": "rpc.messages.per_peer",
    "store_success": "dht.store.success_rate",
    "get_success": "dht.get.success_rate",
    "get_p50_s": "dht.get.p50",
    "get_p99_s": "dht.get.p99",
    "lookup_top1": "dht.lookup.top1.mean",
    "lookup_overlap": "dht.lookup.overlap.mean",
    "lookup_hops": "dht.lookup.hops.mean",
    "lookup_count": "dht.lookup.count",
    "alive_min": "peers.alive.min",
    "alive_final": "peers.alive.final",
}


def peak_rss_mb() -> float:
    """The most memory this process has held so far (Linux reports kilobytes)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def progress(now: float, end: float, live: dict[str, float]) -> None:
    up, cpu = live.get("peers.alive", float("nan")), time.process_time()
    print(
        f"  t={now:7.0f}/{end:.0f} s  up {up:7.0f}  peak {peak_rss_mb():7.0f} MB  cpu {cpu:7.0f} s",
        file=sys.stderr,
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios" / "scale_100k.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the peers' own warnings belong in a run's log, not here
    scenario = load_scenario(Path(args.scenario), args.set)
    peers = scenario.total_peers
    before = peak_rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    run = runner.run_scenario(scenario, progress=progress)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    peak = peak_rss_mb()
    summary = run.recorder.summary()
    statuses = [outcome.status for outcome in run.results]
    result: dict[str, object] = {
        "scenario": Path(args.scenario).stem,
        "overrides": args.set,
        "peers": peers,
        "wall_s": round(wall, 1),
        "cpu_s": round(cpu, 1),  # what a machine shared with other work does not skew
        "peak_rss_mb": round(peak),
        "mb_per_peer": round((peak - before) / peers, 4),
        **{name: round(summary[metric], 4) for name, metric in FIGURES.items() if metric in summary},
        "assertions": {status: statuses.count(status) for status in ("pass", "fail", "unknown")},
        "not_passed": [outcome.line for outcome in run.results if outcome.status != "pass"],
        "stopped": run.stopped,
        "digest": run.digest,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
