"""``hivemind-sim``: run scenarios from YAML files and read their reports.

``run`` simulates one scenario and writes its report; ``validate`` checks a file without
running it; ``sweep`` runs a scenario over parameter values and seeds; ``compare`` puts two
reports side by side. Exit status: 0 when every assertion holds, 1 when one fails or could not
be judged (its metric was never observed), 2 for an invalid file or command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hivemind_core import __version__
from hivemind_core.cli import HelpFormatter

SIM_EXTRA = {"simpy", "networkx", "rich", "matplotlib", "pydantic", "yaml"}  # what [sim] adds

try:
    import rich  # noqa: F401  # the simulator's lightest dependency: is the extra installed?
    import yaml  # noqa: F401
except ModuleNotFoundError as error:  # a real peer's install: the core without the simulator
    MISSING_EXTRA: str | None = (error.name or "").partition(".")[0]
    if MISSING_EXTRA not in SIM_EXTRA:
        raise
else:
    MISSING_EXTRA = None

RUNS = Path("runs")
"""Where runs write their reports unless ``--out`` says otherwise (git-ignored)."""


def _load(args: argparse.Namespace) -> Any:
    from .scenario.loader import load_scenario

    overrides = [*args.set]
    if getattr(args, "seed", None) is not None:
        overrides.append(f"seed={args.seed}")
    return load_scenario(args.file, overrides)


def _validate(args: argparse.Namespace) -> int:
    scenario = _load(args)
    print(
        f"{args.file}: valid: {scenario.total_peers} peers in {len(scenario.peers)} groups, "
        f"{len(scenario.events)} events, {len(scenario.assertions)} assertions"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .scenario.runlog import logs_to
    from .scenario.runner import WarmupTooShort, run_scenario

    scenario = _load(args)
    out = Path(args.out) if args.out else RUNS / scenario.name / str(scenario.seed)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    console.print(
        f"[bold]{scenario.name}[/bold] (seed {scenario.seed}): "
        f"{scenario.total_peers} peers, {scenario.warmup:g} s warmup + "
        f"{scenario.duration:g} s measured"
    )
    try:
        with logs_to(out / "run.log"), _progress(console, args.quiet) as progress:
            result = run_scenario(scenario, out_dir=out, progress=progress)
    except WarmupTooShort as error:
        print(f"hivemind-sim: error: {error}", file=sys.stderr)
        return 2
    _print_results(console, result)
    return 1 if result.failed else 0


def _progress(console: Any, quiet: bool) -> Any:
    """A progress bar in simulated time with the live figures; yields the runner's callback."""
    import contextlib

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    @contextlib.contextmanager
    def bar() -> Any:
        if quiet:
            yield None
            return
        columns = (
            TextColumn("[bold]{task.fields[clock]}"),
            BarColumn(),
            TextColumn("{task.fields[figures]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("run", total=1.0, clock="warmup", figures="peers joining")

            def update(t: float, duration: float, live: dict[str, float]) -> None:
                clock = f"warmup {t:.0f} s" if t < 0 else f"{t:.0f}/{duration:.0f} s"
                progress.update(task, completed=max(0.0, t) / duration, clock=clock, figures=_figures(live))

            yield update

    return bar()


def _figures(live: dict[str, float]) -> str:
    shown = []
    if "peers.alive" in live:
        shown.append(f"alive {live['peers.alive']:.0f}")
    for key, label in (("dht.get.success_rate", "get"), ("moe.step.success_rate", "step")):
        if key in live:
            shown.append(f"{label} {live[key]:.0%}")
    if "train.loss.mean" in live:
        shown.append(f"loss {live['train.loss.mean']:.3f}")
    return "  ".join(shown)


def _print_results(console: Any, result: Any) -> None:
    from rich.table import Table

    table = Table(title="assertions", show_header=True)
    table.add_column("status")
    table.add_column("assertion")
    colours = {"pass": "green", "fail": "red", "unknown": "yellow"}
    for outcome in result.results:
        table.add_row(f"[{colours[outcome.status]}]{outcome.status}[/]", outcome.line)
    if result.results:
        console.print(table)
    console.print(f"trace digest: {result.digest}")
    console.print(f"wall time: {result.wall_s:.1f} s")
    console.print(f"report: [bold]{result.report / 'report.md'}[/bold]")


def _sweep(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .scenario.sweep import plan_sweep, run_sweep

    console = Console(stderr=True)
    name = plan_sweep(args.file, args.set, seeds=1)[0].scenario.name
    out = Path(args.out) if args.out else RUNS / "sweeps" / name

    def progress(done: int, total: int, run: object, status: str) -> None:
        if not args.quiet:
            console.print(f"[{done}/{total}] {status}: {run.slug}, seed {run.seed}")  # type: ignore[attr-defined]

    summary = run_sweep(
        args.file,
        args.set,
        seeds=args.seeds,
        out=out,
        workers=args.workers,
        cluster=args.cluster,
        progress=progress,
    )
    console.print(
        f"{summary.ran} runs done, {summary.skipped} already there, {len(summary.errors)} failed to run "
        f"({summary.wall_s:.1f} s)"
    )
    console.print(f"sweep report: [bold]{summary.out / 'sweep.md'}[/bold]")
    return 1 if summary.failed else 0


def _compare(args: argparse.Namespace) -> int:
    from .scenario.compare import compare_reports, write_comparison

    print(compare_reports(args.a, args.b))
    if args.out:
        for path in write_comparison(args.a, args.b, args.out):
            print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hivemind-sim",
        description="Run swarm scenarios from YAML files in simulated time and read their reports.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def scenario_command(name: str, help: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help, formatter_class=HelpFormatter)
        command.add_argument("file", help="the scenario (YAML)")
        command.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY.PATH=VALUE",
            help="override a value of the file (repeatable), e.g. peers.0.count=8 or duration=2m",
        )
        return command

    run = scenario_command("run", "run a scenario and write its report")
    run.add_argument("--seed", type=int, default=None, help="root seed (default: the file's)")
    run.add_argument("--out", default=None, help="report folder (default: runs/<name>/<seed>/)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(handler=_run)
    validate = scenario_command("validate", "check a scenario without running it")
    validate.set_defaults(handler=_validate)
    sweep = scenario_command(
        "sweep", "run a scenario for every combination of --set values (v1,v2,...) and several seeds"
    )
    sweep.add_argument("--seeds", type=_positive, default=1, help="runs per point, each with its own seed")
    sweep.add_argument("--out", default=None, help="sweep folder (default: runs/sweeps/<name>/)")
    sweep.add_argument(
        "--workers", type=_positive, default=None, help="local worker processes (default: CPUs)"
    )
    sweep.add_argument(
        "--cluster", default=None, metavar="ADDRESS", help="a Dask scheduler to run on instead"
    )
    sweep.add_argument("--quiet", action="store_true", help="no line per finished run")
    sweep.set_defaults(handler=_sweep)
    compare = commands.add_parser("compare", help="two reports side by side", formatter_class=HelpFormatter)
    compare.add_argument("a", help="a report folder (the reference)")
    compare.add_argument("b", help="another report folder")
    compare.add_argument("--out", default=None, help="also write compare.md and plots here")
    compare.set_defaults(handler=_compare)
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    if MISSING_EXTRA is not None:
        print(
            f"hivemind-sim: error: the simulator is not installed ({MISSING_EXTRA} is missing): "
            "pip install 'hivemind-sim[sim]'",
            file=sys.stderr,
        )
        return 2
    args = build_parser().parse_args(argv)
    from .scenario.compare import CompareError
    from .scenario.loader import ScenarioError
    from .scenario.sweep import ClusterError

    try:
        return args.handler(args)
    except ScenarioError as error:
        print(f"hivemind-sim: invalid scenario:\n{error}", file=sys.stderr)
        return 2
    except (ClusterError, CompareError) as error:
        print(f"hivemind-sim: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
