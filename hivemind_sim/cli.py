"""``hivemind-sim``: run scenarios from YAML files and read their reports.

``run`` simulates one scenario and writes its report; ``validate`` checks a file without
running it; ``sweep`` runs a scenario over parameter values and seeds; ``compare`` puts two
reports side by side. A run never replaces another run's report: by default it goes to
``runs/<name>/<seed>/``, or to a fresh ``runs/<name>/<seed>-N/`` when that holds a report of a
different scenario; an ``--out`` holding one is refused unless ``--overwrite`` is given.

Exit status (a sweep exits with the worst of its runs'):

- 0: every assertion holds
- 1: an assertion failed or could not be judged (its metric was never observed)
- 2: an invalid file or command line
- 3: a run stopped early on an internal error (its report says why, with what was measured)
- 130: interrupted (Ctrl-C); a sweep keeps its finished runs and resumes where it stopped
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
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

FAILED, INVALID, STOPPED, INTERRUPTED = 1, 2, 3, 130
EXIT_STATUSES = (
    "Exit status: 0 every assertion holds; 1 an assertion failed or could not be judged; 2 an invalid "
    "file or command line; 3 a run stopped early on an internal error (its report says why); "
    "130 interrupted (Ctrl-C). A sweep exits with the worst of its runs' statuses."
)


class UsageError(Exception):
    """A command line that cannot be carried out as given; the message names the flag."""


def _overrides(args: argparse.Namespace) -> list[str]:
    """`key.path=value` for every `--set`, and `seed=N` for `--seed N`."""
    overrides = [*args.set]
    if getattr(args, "seed", None) is not None:
        overrides.append(f"seed={args.seed}")
    return overrides


def _load(args: argparse.Namespace) -> Any:
    from .scenario.format.loader import load_scenario

    return load_scenario(args.file, _overrides(args))


def _peer(args: argparse.Namespace) -> int:
    from .deploy import core_command, load_peer_file
    from .scenario.format.loader import ScenarioError

    try:
        peer = load_peer_file(args.file)
    except ScenarioError as error:
        print(f"hivemind-sim: invalid peer file:\n{error}", file=sys.stderr)
        return INVALID
    argv = [*core_command(peer), *args.core_args]
    if args.print:
        print(shlex.join(["hivemind-core", *argv]))
        return 0
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", "hivemind_core.cli", *argv])
    return 0  # not reached: the peer has taken this process over


def _validate(args: argparse.Namespace) -> int:
    scenario = _load(args)
    print(
        f"{args.file}: valid: {scenario.total_peers} peers in {len(scenario.peers)} groups, "
        f"{len(scenario.events)} events, {len(scenario.assertions)} assertions"
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .scenario.results.report import write_run_report
    from .scenario.run.runlog import logs_to
    from .scenario.run.runner import WarmupTooShort, run_scenario

    scenario = _load(args)
    console = Console(stderr=True)
    out = _report_folder(args, scenario, console)
    out.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]{scenario.name}[/bold] (seed {scenario.seed}): "
        f"{scenario.total_peers} peers, {scenario.warmup:g} s warmup + "
        f"{scenario.duration:g} s measured"
    )
    try:
        with logs_to(out / "run.log"):
            with _progress(console, args.quiet) as progress:
                result = run_scenario(scenario, progress=progress)
            write_run_report(out, result, overrides=_overrides(args))
    except WarmupTooShort as error:
        print(f"hivemind-sim: error: {error}", file=sys.stderr)
        return INVALID
    return _finished(console, result, out, "run")


def _finished(console: Any, result: Any, out: Path, what: str) -> int:
    """Print a run's (or a deployment's) results and return its exit status."""
    _print_results(console, result, out)
    if result.stopped:
        print(f"hivemind-sim: the {what} stopped early: {result.stopped}", file=sys.stderr)
        return STOPPED
    return FAILED if result.failed else 0


def _deploy(args: argparse.Namespace) -> int:
    scenario = _load(args)
    if args.netns:
        from .deploy.netns import NamespaceNetwork, inside_namespace, netns_unavailable, reexec_in_namespace

        reason = netns_unavailable()
        if reason is not None:
            print(f"hivemind-sim: --netns: {reason}", file=sys.stderr)
            return INVALID
        if not inside_namespace():  # the same command, as root of namespaces made for it
            return reexec_in_namespace([sys.executable, "-m", "hivemind_sim.cli", *args.argv])
        with NamespaceNetwork() as network:
            return _deploy_on(args, scenario, network)
    from .deploy.local import Loopback

    return _deploy_on(args, scenario, Loopback())


def _deploy_on(args: argparse.Namespace, scenario: Any, network: Any) -> int:
    from rich.console import Console

    from .deploy.local import DeployOptions, deploy_scenario
    from .scenario.results.report import write_run_report
    from .scenario.run.runlog import logs_to

    scenario, notes = _scaled(args, scenario)
    console = Console(stderr=True)
    out = _report_folder(args, scenario, console)
    out.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]{scenario.name}[/bold] (seed {scenario.seed}) deployed as {scenario.total_peers} real "
        f"processes on {'loopback' if args.local else 'network namespaces'}: {scenario.warmup:g} s warmup "
        f"+ {scenario.duration:g} s measured, wall-clock"
    )
    for note in notes:
        console.print(f"  scaled: {note}", markup=False)
    options = DeployOptions(emulate_delays=not args.no_delays)
    with logs_to(out / "run.log"):
        with _progress(console, args.quiet) as progress:
            deployed = deploy_scenario(
                scenario, out, network=network, options=options, notes=notes, progress=progress
            )
        write_run_report(out, deployed.result, overrides=_overrides(args), deployment=deployed.notes)
    return _finished(console, deployed.result, out, "deployment")


def _scaled(args: argparse.Namespace, scenario: Any) -> tuple[Any, list[str]]:
    """The scenario cut to ``--max-peers`` processes, and what was scaled."""
    from .deploy.scale import default_max_peers, scale_scenario

    try:
        return scale_scenario(scenario, args.max_peers or default_max_peers())
    except ValueError as error:
        raise UsageError(str(error)) from None


def _fidelity(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .deploy.fidelity import fidelity_failed, run_fidelity, write_fidelity_report
    from .deploy.local import DeployOptions, Loopback, deploy_scenario
    from .scenario.results.report import write_run_report
    from .scenario.run.runlog import logs_to
    from .scenario.run.runner import run_scenario

    scenario = _load(args)
    scenario, scaled = _scaled(args, scenario)
    console = Console(stderr=True)
    out = Path(args.out) if args.out else RUNS / scenario.name / "fidelity"
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = list(scaled)
    options = DeployOptions(emulate_delays=not args.no_delays)

    def simulate(seeded: Any) -> Any:
        folder = out / "simulated" / str(seeded.seed)
        folder.mkdir(parents=True, exist_ok=True)
        with logs_to(folder / "run.log"):
            result = run_scenario(seeded)
            write_run_report(folder, result)
        return result

    def deploy(seeded: Any) -> Any:
        folder = out / "deployed" / str(seeded.seed)
        folder.mkdir(parents=True, exist_ok=True)
        with logs_to(folder / "run.log"):
            deployed = deploy_scenario(seeded, folder, network=Loopback(), options=options)
            write_run_report(folder, deployed.result, deployment=deployed.notes)
        notes.extend(note for note in deployed.notes if note not in notes)
        return deployed.result

    def say(text: str) -> None:
        if not args.quiet:
            console.print(text, markup=False, highlight=False)

    seeds = [scenario.seed + i for i in range(args.seeds)]
    console.print(
        f"[bold]{scenario.name}[/bold]: simulated and deployed ({scenario.total_peers} real processes on "
        f"loopback) for seeds {', '.join(map(str, seeds))}, {scenario.warmup + scenario.duration:g} s of "
        "wall time per deployment"
    )
    result = run_fidelity(scenario, seeds, simulate=simulate, deploy=deploy, progress=say)
    write_fidelity_report(out, result, command=args.command_line, notes=notes)
    console.print(f"fidelity: [bold]{result.verdict}[/bold]; report: [bold]{out / 'fidelity.md'}[/bold]")
    return FAILED if fidelity_failed(result) else 0


def _report_folder(args: argparse.Namespace, scenario: Any, console: Any) -> Path:
    """Where the report goes: never over the report of another run unless `--overwrite` says so.

    `--out DIR` is refused when DIR holds another run's report; the default `runs/<name>/<seed>/`
    gives way to the first of `<seed>-2/`, `<seed>-3/`, ... that is free or holds this same run."""
    from .scenario.format.loader import dump_resolved

    resolved = dump_resolved(scenario)
    wanted = Path(args.out) if args.out else RUNS / scenario.name / str(scenario.seed)
    other = _other_run(wanted, resolved)
    if other is None:
        return wanted
    if args.overwrite:
        console.print(f"--overwrite: replacing the report of another run in {wanted} ({other})", markup=False)
        return wanted
    if args.out:
        raise UsageError(
            f"--out {args.out} holds the report of another run ({other}); "
            "give another --out, or add --overwrite to replace it"
        )
    for number in itertools.count(2):
        sibling = wanted.with_name(f"{wanted.name}-{number}")
        if _other_run(sibling, resolved) is None:
            console.print(
                f"{wanted} holds the report of another run ({other}): this run goes to {sibling}",
                markup=False,
            )
            return sibling
    raise AssertionError("unreachable")


def _other_run(folder: Path, resolved: str) -> str | None:
    """None when a run of the scenario ``resolved`` may write its report into ``folder`` (absent,
    holding no report, or a report of the same scenario); else how the report there differs."""
    from .scenario.results.compare import differences_line, scenario_differences
    from .scenario.run.sweep_execution import REQUIRED_FILES

    if folder.exists() and not folder.is_dir():
        return "it is a file, not a folder"
    if not any((folder / name).exists() for name in REQUIRED_FILES):
        return None
    try:
        differences = scenario_differences((folder / "scenario.yaml").read_text(encoding="utf-8"), resolved)
    except (OSError, UnicodeDecodeError, ValueError):
        return "its scenario.yaml is missing or unreadable"
    return f"that run -> this one: {differences_line(differences)}" if differences else None


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


def _print_results(console: Any, result: Any, out: Path) -> None:
    from rich.table import Table

    table = Table(title="assertions", show_header=True)
    table.add_column("status")
    table.add_column("assertion")
    colours = {"pass": "green", "fail": "red", "unknown": "yellow"}
    for outcome in result.results:
        table.add_row(f"[{colours[outcome.status]}]{outcome.status}[/]", outcome.line)
    if result.results:
        console.print(table)
    if result.digest:
        console.print(f"trace digest: {result.digest}")
    console.print(f"wall time: {result.wall_s:.1f} s")
    console.print(f"report: [bold]{out / 'report.md'}[/bold]")


def _sweep(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .scenario.run.sweep_execution import run_sweep
    from .scenario.run.sweep_plan import plan_sweep

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
        notify=lambda text: console.print(text, markup=False, highlight=False),
    )
    console.print(
        f"{summary.ran} runs done, {summary.skipped} already there, {len(summary.errors)} failed to run, "
        f"{len(summary.stopped)} stopped early ({summary.wall_s:.1f} s)"
    )
    console.print(f"sweep report: [bold]{summary.out / 'sweep.md'}[/bold]")
    if summary.interrupted:
        print(
            f"hivemind-sim: interrupted: {len(summary.records)} of {summary.planned} runs finished and "
            "are kept; the same command runs the others",
            file=sys.stderr,
        )
        return INTERRUPTED
    if summary.errors or summary.stopped:
        return STOPPED
    return FAILED if summary.failed else 0


def _compare(args: argparse.Namespace) -> int:
    from .scenario.results.compare import compare_reports, write_comparison

    print(compare_reports(args.a, args.b))
    if args.out:
        for path in write_comparison(args.a, args.b, args.out):
            print(f"wrote {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hivemind-sim",
        description="Run swarm scenarios from YAML files in simulated time and read their reports.",
        epilog=EXIT_STATUSES,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    def scenario_command(name: str, help: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help, epilog=EXIT_STATUSES, formatter_class=HelpFormatter)
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
    run.add_argument(
        "--out",
        default=None,
        help="report folder, refused when it holds the report of another run (default: runs/<name>/<seed>/, "
        "or the first free runs/<name>/<seed>-N/ when that holds another run's report)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the report in the folder even when it is another run's",
    )
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
    sweep.epilog = (
        "Ctrl-C starts no new run and waits for those in flight; a second Ctrl-C abandons them. The "
        f"finished runs are kept and reported, and the same command runs the others. {EXIT_STATUSES}"
    )
    sweep.set_defaults(handler=_sweep)
    deploy = scenario_command(
        "deploy", "run a scenario's peers as real processes, measured and reported as `run` does"
    )
    where = deploy.add_mutually_exclusive_group(required=True)
    where.add_argument("--local", action="store_true", help="every peer a process on loopback")
    where.add_argument(
        "--netns",
        action="store_true",
        help="every peer a process in its own network namespace (root or unprivileged user namespaces)",
    )
    deploy.add_argument("--seed", type=int, default=None, help="root seed (default: the file's)")
    deploy.add_argument(
        "--max-peers",
        type=_positive,
        default=None,
        help="scale the scenario's groups down to this many processes in all (default: 6 per core, "
        "within half the memory)",
    )
    deploy.add_argument(
        "--no-delays",
        action="store_true",
        help="do not add the topology's one-way delays to what each peer sends",
    )
    deploy.add_argument("--out", default=None, help="report folder (as for `run`)")
    deploy.add_argument("--overwrite", action="store_true", help="as for `run`")
    deploy.add_argument("--quiet", action="store_true", help="no progress bar")
    deploy.set_defaults(handler=_deploy)
    fidelity = scenario_command(
        "fidelity",
        "simulate and deploy (--local) a scenario for several seeds, and report how far apart they are",
    )
    fidelity.add_argument(
        "--seeds", type=_positive, default=3, help="runs of each kind, seeds counted up from the file's"
    )
    fidelity.add_argument("--max-peers", type=_positive, default=None, help="as for `deploy`")
    fidelity.add_argument("--no-delays", action="store_true", help="as for `deploy`")
    fidelity.add_argument("--out", default=None, help="report folder (default: runs/<name>/fidelity/)")
    fidelity.add_argument("--quiet", action="store_true", help="no line per run")
    fidelity.set_defaults(handler=_fidelity)
    peer = commands.add_parser(
        "peer",
        help="run a real peer described by a peer file (a scenario peer group's keys)",
        description="Run `hivemind-core` for the real peer a peer file describes (see docs/deploy.md). "
        "Arguments after `--` go to hivemind-core: the network's (--host, --port, --initial-peers, "
        "--announce, --identity...).",
        epilog=EXIT_STATUSES,
        formatter_class=HelpFormatter,
    )
    peer.add_argument("file", help="the peer file (YAML)")
    peer.add_argument(
        "--print", action="store_true", help="print the hivemind-core command instead of running it"
    )
    peer.set_defaults(handler=_peer)
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
        return INVALID
    argv = list(sys.argv[1:] if argv is None else argv)
    core_args: list[str] = []
    if "--" in argv:  # `peer FILE -- ARGS`: ARGS are hivemind-core's
        argv, core_args = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = build_parser()
    args = parser.parse_args(argv)
    if core_args and args.command != "peer":
        parser.error(f"arguments after `--` are for `peer` (hivemind-core's), not `{args.command}`")
    args.core_args = core_args
    args.argv = argv
    args.command_line = shlex.join(["hivemind-sim", *argv])
    from .scenario.format.loader import ScenarioError
    from .scenario.results.compare import CompareError
    from .scenario.run.sweep_execution import ClusterError

    try:
        return args.handler(args)
    except ScenarioError as error:
        print(f"hivemind-sim: invalid scenario:\n{error}", file=sys.stderr)
        return INVALID
    except (ClusterError, CompareError, UsageError) as error:
        print(f"hivemind-sim: error: {error}", file=sys.stderr)
        return INVALID
    except KeyboardInterrupt:
        print("hivemind-sim: interrupted", file=sys.stderr)
        return INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
