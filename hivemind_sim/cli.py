"""``hivemind-sim``: run simulated swarms from the command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from hivemind_core import __version__

SIM_EXTRA = {
    "simpy",
    "networkx",
    "rich",
    "matplotlib",
    "pydantic",
    "yaml",
}  # what `pip install 'hivemind-sim[sim]'` adds

try:
    from rich.console import Console
    from rich.table import Table

    from .swarms.demo import SwarmConfig, run_swarm
    from .swarms.moe_swarm import MoESwarmConfig, run_moe_swarm
except ModuleNotFoundError as error:  # a real peer's install: the core without the simulator
    MISSING_EXTRA: str | None = (error.name or "").partition(".")[0]
    if MISSING_EXTRA not in SIM_EXTRA:
        raise
else:
    MISSING_EXTRA = None


def _print_summary(title: str, rows: list[tuple[str, str]], digest: str) -> None:
    table = Table(title=title, show_header=False)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    console = Console()
    console.print(table)
    console.print(f"trace digest: [bold]{digest}[/bold]")


def _demo(args: argparse.Namespace) -> int:
    config = SwarmConfig(
        peers=args.peers, rpcs_per_peer=args.rpcs, seed=args.seed, crash_fraction=args.crash, loss=args.loss
    )
    report = run_swarm(config)
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0
    share = report.succeeded / report.calls if report.calls else 0.0
    _print_summary(
        f"Simulated swarm of {report.peers} peers",
        [
            ("calls", f"{report.calls}"),
            ("succeeded", f"{report.succeeded} ({share:.1%})"),
            *[(f"failed: {reason}", f"{count}") for reason, count in report.failures.items()],
            ("latency p50 / p99", f"{report.latency_p50_ms:.1f} / {report.latency_p99_ms:.1f} ms"),
            ("peers crashed mid-run", f"{report.crashed}"),
            ("messages delivered", f"{report.messages} ({report.megabytes:.1f} MB)"),
            ("simulated time", f"{report.virtual_s:.1f} s"),
            ("wall time", f"{report.wall_s:.2f} s"),
        ],
        report.digest,
    )
    return 0


def _moe(args: argparse.Namespace) -> int:
    config = MoESwarmConfig(
        servers=args.servers,
        trainers=args.trainers,
        steps=args.steps,
        crash_servers=args.crash_servers,
        seed=args.seed,
    )
    report = run_moe_swarm(config)
    if args.json:
        print(json.dumps(report.as_dict()))
        return 0
    _print_summary(
        f"Simulated DMoE training: {args.servers} expert servers, {args.trainers} trainers",
        [
            ("training steps per trainer", str(args.steps)),
            ("servers crashed mid-run", str(args.crash_servers)),
            ("mean loss, first / last step", f"{report.first_loss:.3f} / {report.last_loss:.3f}"),
            ("messages delivered", str(report.messages)),
            ("simulated time", f"{report.virtual_s:.1f} s"),
            ("wall time", f"{report.wall_s:.2f} s"),
        ],
        report.digest,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hivemind-sim", description="Simulate swarms of peers.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run a short simulated swarm on embedded defaults")
    demo.add_argument("--peers", type=int, default=SwarmConfig.peers, help="number of peers")
    demo.add_argument("--rpcs", type=int, default=SwarmConfig.rpcs_per_peer, help="calls per peer")
    demo.add_argument("--seed", type=int, default=SwarmConfig.seed, help="random seed")
    demo.add_argument(
        "--crash", type=float, default=SwarmConfig.crash_fraction, help="fraction of peers that crash mid-run"
    )
    demo.add_argument(
        "--loss", type=float, default=SwarmConfig.loss, help="message loss on the lossy fifth of links"
    )
    demo.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    demo.set_defaults(run=_demo)

    moe = commands.add_parser("moe", help="train a DMoE model with simulated expert servers and trainers")
    moe.add_argument("--servers", type=int, default=MoESwarmConfig.servers, help="expert servers")
    moe.add_argument("--trainers", type=int, default=MoESwarmConfig.trainers, help="trainers")
    moe.add_argument("--steps", type=int, default=MoESwarmConfig.steps, help="training steps per trainer")
    moe.add_argument(
        "--crash-servers", type=int, default=MoESwarmConfig.crash_servers, help="servers that crash mid-run"
    )
    moe.add_argument("--seed", type=int, default=0, help="random seed")
    moe.add_argument("--json", action="store_true", help="print one JSON line instead of a table")
    moe.set_defaults(run=_moe)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if MISSING_EXTRA is not None:
        print(
            f"hivemind-sim: error: the simulator is not installed ({MISSING_EXTRA} is missing): "
            "pip install 'hivemind-sim[sim]'",
            file=sys.stderr,
        )
        return 2
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ValueError as error:
        print(f"hivemind-sim: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
