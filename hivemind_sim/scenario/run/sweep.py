"""Sweeps: one scenario run at every point of a grid of `--set` values, several seeds per point.

Each `--set key.path=v1,v2,...` is an axis (a single value is a fixed override); the points are
the cartesian product of the axes, and each point runs `seeds` times. A run's seed is derived
from the scenario's root seed, the point and the replicate index by a stable hash, so the same
sweep gives the same seeds in every process and on every machine, and adding a point does not
change the seeds of the others. Each run writes the usual report folder to
`<out>/<point>/seed-<seed>/`; a run whose folder is already complete is read back, not rerun,
so an interrupted sweep picks up where it stopped. A first Ctrl-C starts no new run and waits
for those in flight, a second abandons them; the finished runs are kept and reported.

Runs go to local worker processes (spawned, so each starts clean) or, with ``cluster``, to an
existing Dask scheduler (`pip install 'hivemind-sim[cluster]'`). Dask rather than Ray: it is
pure Python and a small install, connects to a running scheduler with one address, and its
futures work like ``concurrent.futures``, so both paths share one loop; Ray would bring a large
binary runtime for what is here a plain map of independent jobs. Either way a worker runs the
scenario into a temporary folder and sends the report files back, so cluster workers need no
shared filesystem (only the files a scenario names, such as churn traces, at the same path).

The sweep's own report (`sweep.md`, `sweep.csv`, one `sweep_<metric>.png` per plotted metric)
gives, per point, every summary metric's mean and spread across seeds and the assertion counts.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, Protocol

from ..format.loader import Problem, ScenarioError, dump_resolved, parse_scenario
from ..format.names import describe_metric, metric_unit
from ..format.schema import Scenario
from ..results.assertions import format_duration, format_value
from ..results.report import METRICS_FORMAT, counts_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Point = tuple[tuple[str, str], ...]
"""(key path, value text) for each axis, in axis order; () when nothing is swept."""

Progress = Callable[[int, int, "SweepRun", str], None]
"""Called once per run as it finishes: (runs finished, runs in all, the run, status), status being
"done", "skipped" (read back from an earlier sweep) or "error"."""

SEED_BITS = 31  # seeds stay small enough for every generator the world seeds
REQUIRED_FILES = ("scenario.yaml", "metrics.json", "report.md")
HEADLINE_METRICS = (
    "dht.get.success_rate",
    "dht.get.p99",
    "moe.step.success_rate",
    "moe.step.p99",
    "train.loss.final",
    "peers.alive.mean",
)
MAX_PLOTS = 12
MAX_SLUG = 120
POLL_S = 0.2  # how soon a sweep acts on Ctrl-C while it waits for runs


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: a point, a replicate, its derived seed and its validated scenario."""

    point: Point
    replicate: int
    seed: int
    root_seed: int
    slug: str
    """The point's folder name (`peers.0.count=8_workload.dht.keys=100`; `base` when nothing is swept)."""
    overrides: tuple[str, ...]
    """What is applied to the file: fixed overrides, the point's values, then `seed=<seed>`."""
    scenario: Scenario = field(repr=False, compare=False)
    source: Source = field(repr=False, compare=False)

    @property
    def rel_dir(self) -> Path:
        """The run's report folder, relative to the sweep's output folder."""
        return Path(self.slug) / f"seed-{self.seed}"

    @property
    def label(self) -> str:
        return point_label(self.point)


@dataclass(frozen=True)
class Source:
    """The scenario file's text and folder: what a worker needs to build a run's scenario itself
    (validated models do not pickle, and a cluster worker may not see the file)."""

    text: str
    filename: str
    base_dir: str

    def load(self, overrides: Sequence[str]) -> Scenario:
        return parse_scenario(self.text, filename=self.filename, base_dir=self.base_dir, overrides=overrides)


@dataclass
class RunRecord:
    """A run's outcome: its metrics.json (None after an error) and whether it was read back."""

    run: SweepRun
    metrics: dict[str, Any] | None
    skipped: bool = False
    error: str | None = None


@dataclass(frozen=True)
class Stats:
    """One metric at one point, across the seeds that observed it."""

    n: int
    mean: float
    std: float  # sample standard deviation; 0 for one seed
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stats:
        n = len(values)
        mean = math.fsum(values) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        return cls(n, mean, std, min(values), max(values))


@dataclass
class PointSummary:
    point: Point
    slug: str
    runs: int
    errors: int
    metrics: dict[str, Stats]
    """Every summary metric seen at this point (`... during <event>` included), by name."""
    assertions: dict[str, Counter[str]]
    """Each assertion's statuses (pass/fail/unknown) across the point's seeds, by its text."""

    @property
    def assertion_counts(self) -> Counter[str]:
        return sum(self.assertions.values(), Counter())


@dataclass
class SweepSummary:
    scenario: str
    name: str
    root_seed: int
    seeds: int
    axes: list[tuple[str, list[str]]]
    fixed: list[str]
    out: Path
    planned: int
    """Runs in the plan; ``records`` has fewer after a Ctrl-C."""
    records: list[RunRecord]
    points: list[PointSummary]
    files: list[Path]
    """sweep.md, sweep.csv and the plots."""
    wall_s: float

    @property
    def ran(self) -> int:
        return sum(1 for r in self.records if not r.skipped and r.error is None)

    @property
    def skipped(self) -> int:
        return sum(1 for r in self.records if r.skipped)

    @property
    def errors(self) -> list[RunRecord]:
        return [r for r in self.records if r.error is not None]

    @property
    def stopped(self) -> list[RunRecord]:
        """Runs that stopped early on an internal error (their report says why)."""
        return [r for r in self.records if r.metrics is not None and r.metrics.get("stopped")]

    @property
    def interrupted(self) -> bool:
        """Whether a Ctrl-C left runs of the plan unfinished (the same sweep again runs them)."""
        return len(self.records) < self.planned

    @property
    def failed(self) -> bool:
        """Whether an assertion failed or could not be judged somewhere (unknown is not a pass)."""
        return any(p.assertion_counts["fail"] or p.assertion_counts["unknown"] for p in self.points)


class ClusterError(RuntimeError):
    """The cluster engine is missing or cannot be reached."""


# ---- planning ------------------------------------------------------------------------------------------


def plan_sweep(
    path: str | Path, sets: Sequence[str], *, seeds: int, fixed: Sequence[str] = ()
) -> list[SweepRun]:
    """Every point x replicate of a sweep, validated; raises ``ScenarioError`` naming the bad flag.

    sets: `key.path=v1,v2,...` strings (commas inside brackets, braces or quotes do not split);
    fixed: plain `key.path=value` overrides applied to every run, never split.
    """
    axes, fixed_overrides = parse_sets(sets, fixed=fixed)
    if seeds < 1:
        raise ScenarioError([Problem("--seeds", "", f"must be at least 1, got {seeds}")])
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ScenarioError([Problem(str(path), "", f"cannot read the scenario: {error}")]) from None
    source = Source(text, str(path), str(Path(path).resolve().parent))
    points = [tuple(zip([key for key, _ in axes], values, strict=True)) for values in _product(axes)]
    overrides = {point: (*fixed_overrides, *(f"{k}={v}" for k, v in point)) for point in points}
    scenarios: dict[Point, Scenario] = {}
    problems: dict[tuple[str, str, str], list[Point]] = {}  # each problem, with the points it hits
    for point in points:
        try:
            scenarios[point] = source.load(overrides[point])
        except ScenarioError as error:
            for problem in error.problems:
                named = _name_flag(problem, point, sets)
                problems.setdefault((named.where, named.path, named.message), []).append(point)
    if problems:
        raise ScenarioError(
            [
                Problem(where, key, message if len(hit) == len(points) else f"{message} (at {_labels(hit)})")
                for (where, key, message), hit in problems.items()
            ]
        )
    root = scenarios[points[0]].seed  # not swept, so the same at every point
    runs: list[SweepRun] = []
    taken: set[int] = set()
    for point, slug in zip(points, point_slugs(points), strict=True):
        for replicate in range(seeds):
            seed = derive_seed(root, point, replicate, taken=taken)
            taken.add(seed)
            with_seed = (*overrides[point], f"seed={seed}")
            runs.append(
                SweepRun(point, replicate, seed, root, slug, with_seed, source.load(with_seed), source)
            )
    return runs


def _labels(points: Sequence[Point]) -> str:
    return "; ".join(point_label(point) for point in points)


def parse_sets(
    sets: Sequence[str], *, fixed: Sequence[str] = ()
) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """Axes (key, values) and fixed overrides from `--set` flags; errors name the flag."""
    axes: list[tuple[str, list[str]]] = []
    fixed_overrides = list(fixed)
    problems: list[Problem] = []
    seen: dict[str, str] = {}
    for text in sets:
        where = f"--set {text}"
        key, sep, values_text = text.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(Problem(where, "", "expected `key.path=value` or `key.path=v1,v2,...`"))
            continue
        values = split_values(values_text)
        if any(not value.strip() for value in values):
            message = "empty value (write `key.path=v1,v2,...`, no empty item)"
            problems.append(Problem(where, key, message))
            continue
        if key == "seed" and len(values) > 1:
            message = "seeds are not swept with --set: use --seeds N (each run's seed is derived)"
            problems.append(Problem(where, key, message))
            continue
        if key in seen:
            problems.append(Problem(where, key, f"`{key}` is already set by `{seen[key]}`"))
            continue
        seen[key] = where
        if len(values) == 1:
            fixed_overrides.append(f"{key}={values[0]}")
        else:
            if len(set(values)) < len(values):
                problems.append(Problem(where, key, "a value is repeated"))
                continue
            axes.append((key, [value.strip() for value in values]))
    if problems:
        raise ScenarioError(problems)
    return axes, fixed_overrides


def split_values(text: str) -> list[str]:
    """Split on the commas outside brackets, braces and quotes: `[8,8],[4,4]` is two values."""
    values, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(0, depth - 1)
        elif char == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    values.append(text[start:])
    return values


def derive_seed(
    root: int, point: Point, replicate: int, *, taken: set[int] | frozenset[int] = frozenset()
) -> int:
    """A run's seed: a stable hash of (root seed, point, replicate); never one in ``taken``."""
    for salt in itertools.count():
        data = json.dumps([root, [list(axis) for axis in point], replicate, salt]).encode()
        seed = int.from_bytes(hashlib.sha256(data).digest()[:8], "big") >> (64 - SEED_BITS)
        if seed not in taken:
            return seed
    raise AssertionError("unreachable")


def point_label(point: Point) -> str:
    return ", ".join(f"{key}={value}" for key, value in point) or "base"


def point_slugs(points: Sequence[Point]) -> list[str]:
    """Folder names for points: readable, filesystem-safe, distinct."""
    slugs = []
    for point in points:
        slug = "_".join(f"{key}={_safe(value)}" for key, value in point) or "base"
        if len(slug) > MAX_SLUG:
            slug = slug[: MAX_SLUG - 9] + "-" + _short_hash(point)
        slugs.append(slug)
    counts = Counter(slugs)
    return [f"{s}-{_short_hash(p)}" if counts[s] > 1 else s for s, p in zip(slugs, points, strict=True)]


def _safe(value: str) -> str:
    value = value.replace("%", "pct")
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", value.strip()).strip("_") or "_"


def _short_hash(point: Point) -> str:
    return hashlib.sha256(json.dumps(point).encode()).hexdigest()[:8]


def _product(axes: list[tuple[str, list[str]]]) -> list[tuple[str, ...]]:
    return list(itertools.product(*(values for _, values in axes)))


def _name_flag(problem: Problem, point: Point, sets: Sequence[str]) -> Problem:
    """A point's `--set key=v` problem, reported against the user's `--set key=v1,v2` flag."""
    for key, value in point:
        if problem.where == f"--set {key}={value}":
            flag = next((s for s in sets if s.partition("=")[0].strip() == key), f"{key}={value}")
            return Problem(f"--set {flag}", problem.path, problem.message)
    return problem


# ---- running -------------------------------------------------------------------------------------------


def run_sweep(
    path: str | Path,
    sets: Sequence[str],
    *,
    seeds: int,
    out: str | Path,
    fixed: Sequence[str] = (),
    workers: int | None = None,
    cluster: str | None = None,
    progress: Progress | None = None,
    notify: Callable[[str], None] | None = None,
) -> SweepSummary:
    """Plan, run what is not done yet (local processes, or the Dask scheduler at ``cluster``),
    and write the sweep's report into ``out``. Raises ``ScenarioError`` before running anything
    when a point is invalid, ``ClusterError`` when the cluster is unusable.

    Ctrl-C (in the main thread): the first stops starting runs and waits for those in flight,
    the second abandons them (local workers are terminated); either way the finished runs are
    kept, the report covers them, and ``SweepSummary.interrupted`` says so. ``notify`` (default:
    print to stderr) is told at once what a Ctrl-C does."""
    started = time.perf_counter()
    runs = plan_sweep(path, sets, seeds=seeds, fixed=fixed)
    axes, fixed_overrides = parse_sets(sets, fixed=fixed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records: dict[SweepRun, RunRecord] = {}
    pending = []
    for run in runs:
        metrics = read_finished(out / run.rel_dir, run)
        if metrics is None:
            pending.append(run)
            continue
        records[run] = RunRecord(run, metrics, skipped=True)
        if progress is not None:
            progress(len(records), len(runs), run, "skipped")
    pending.sort(key=lambda run: run.replicate)  # a first seed of every point comes early
    if pending:
        interrupts = _Interrupts()
        pool = _Cluster(cluster) if cluster else _Local(min(workers or os.cpu_count() or 1, len(pending)))
        with interrupts.caught(), pool:
            for run, files, error in _schedule(pending, pool, interrupts, notify or _to_stderr):
                if error is None:
                    assert files is not None
                    _store(out / run.rel_dir, files)
                    records[run] = RunRecord(run, json.loads(files["metrics.json"]))
                else:
                    records[run] = RunRecord(run, None, error=error)
                if progress is not None:
                    progress(len(records), len(runs), run, "error" if error else "done")
    ordered = [records[run] for run in runs if run in records]
    summary = SweepSummary(
        scenario=str(path),
        name=runs[0].scenario.name,
        root_seed=runs[0].root_seed,
        seeds=seeds,
        axes=axes,
        fixed=fixed_overrides,
        out=out,
        planned=len(runs),
        records=ordered,
        points=summarize_points(ordered),
        files=[],
        wall_s=0.0,
    )
    summary.wall_s = time.perf_counter() - started
    summary.files = write_sweep_report(summary)
    return summary


def read_finished(run_dir: Path, run: SweepRun) -> dict[str, Any] | None:
    """The metrics of a complete report of exactly this run, or None (then it must run)."""
    if not all((run_dir / name).is_file() for name in REQUIRED_FILES):
        return None
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        same = (run_dir / "scenario.yaml").read_text() == _resolved(run.scenario)
    except (OSError, ValueError):
        return None
    complete = (
        isinstance(metrics, dict)
        and metrics.get("format") == METRICS_FORMAT
        and metrics.get("seed") == run.seed
        and isinstance(metrics.get("summary"), dict)
        and isinstance(metrics.get("assertions"), list)
    )
    return metrics if complete and same else None


def _resolved(scenario: Scenario) -> str:
    text = dump_resolved(scenario)
    return text if text.endswith("\n") else text + "\n"


def _store(run_dir: Path, files: dict[str, bytes]) -> None:
    """Write a run's files next to their folder, then move them in: a folder is complete or absent."""
    partial = run_dir.with_name(run_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name, data in files.items():
        (partial / name).write_bytes(data)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    partial.rename(run_dir)


def execute(source: Source, overrides: Sequence[str]) -> tuple[dict[str, bytes] | None, str | None]:
    """Run one scenario in a worker: (its report files by name, None) or (None, the traceback).

    The core's log (lost gradients, bans, timeouts) goes to the report's `run.log`, as with
    `hivemind-sim run`, instead of flooding the sweep's console from every worker."""
    from ..results.report import write_run_report
    from .runlog import logs_to
    from .runner import run_scenario  # heavy (torch): imported in the worker, not by the planner

    try:
        scenario = source.load(overrides)
        with tempfile.TemporaryDirectory(prefix="hivemind-sweep-") as tmp:
            with logs_to(Path(tmp) / "run.log"):
                write_run_report(tmp, run_scenario(scenario), overrides=overrides)
            return {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}, None
    except Exception:  # reported with the run; the other runs go on
        return None, traceback.format_exc()


Outcome = tuple[SweepRun, dict[str, bytes] | None, str | None]


class _Interrupts:
    """Counts Ctrl-C presses while installed; the sweep's loop acts on the count, so nothing is
    raised in the middle of storing a run or writing the report."""

    def __init__(self) -> None:
        self.presses = 0

    @contextlib.contextmanager
    def caught(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # only the main thread receives signals: Ctrl-C stays the caller's business
            return
        previous = signal.signal(signal.SIGINT, self._press)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _press(self, signum: int, frame: FrameType | None) -> None:
        self.presses += 1


class _Pool(Protocol):
    """Where runs execute: local worker processes or a Dask cluster."""

    def __enter__(self) -> _Pool: ...
    def __exit__(self, *exc: object) -> None: ...
    def slots(self) -> int:
        """How many runs can execute at once (no more are submitted, so none waits in a queue)."""
        ...

    def submit(self, run: SweepRun) -> Any: ...
    def wait(self, futures: Collection[Any], timeout: float) -> set[Any]:
        """The futures that are done, after waiting up to ``timeout`` for a first one."""
        ...

    def outcome(self, future: Any) -> tuple[dict[str, bytes] | None, str | None]: ...
    def abandon(self, futures: Collection[Any]) -> None: ...


def _to_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _schedule(
    runs: Sequence[SweepRun], pool: _Pool, interrupts: _Interrupts, notify: Callable[[str], None]
) -> Iterator[Outcome]:
    """Keep ``pool.slots()`` runs in flight and yield each as it finishes; on the first Ctrl-C start
    no more, on the second abandon those in flight. The loop wakes every ``POLL_S`` to see a press
    at once (a signal handler may not safely do more than count)."""
    pending = deque(runs)
    in_flight: dict[Any, SweepRun] = {}
    seen = 0

    def fill() -> None:
        slots = pool.slots()
        while pending and not interrupts.presses and len(in_flight) < slots:
            run = pending.popleft()
            in_flight[pool.submit(run)] = run

    fill()
    while in_flight:
        if interrupts.presses > seen:
            seen = interrupts.presses
            flight = f"{len(in_flight)} run{'s' if len(in_flight) > 1 else ''} in flight"
            if seen >= 2:
                notify(f"abandoning the {flight}")
                pool.abandon(list(in_flight))
                return
            notify(f"stopping: no new runs; waiting for the {flight} (Ctrl-C again to abandon them)")
        done = pool.wait(list(in_flight), POLL_S)
        if not done:
            continue
        finished = [(in_flight.pop(future), *pool.outcome(future)) for future in done]
        fill()  # before handing the results on: a free worker starts its next run at once
        yield from finished
    if interrupts.presses > seen and pending:  # pressed as the last run in flight finished
        notify("stopping: no new runs")


def _ignore_interrupts(scratch: str) -> None:
    """A local worker's start: Ctrl-C reaches the whole terminal's process group, but only the
    sweep decides what stops; temporary files go to the sweep's scratch folder, which is removed
    even when a worker is terminated mid-run."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tempfile.tempdir = scratch


class _Local:
    """Spawned worker processes (each starts clean), ``count`` of them."""

    def __init__(self, count: int) -> None:
        self.count = max(1, count)
        self._scratch = tempfile.TemporaryDirectory(prefix="hivemind-sweep-")
        self._pool = ProcessPoolExecutor(
            max_workers=self.count,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_ignore_interrupts,
            initargs=(self._scratch.name,),
        )

    def __enter__(self) -> _Local:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._scratch.cleanup()

    def slots(self) -> int:
        return self.count

    def submit(self, run: SweepRun) -> Future[tuple[dict[str, bytes] | None, str | None]]:
        return self._pool.submit(execute, run.source, run.overrides)

    def wait(self, futures: Collection[Any], timeout: float) -> set[Any]:
        return wait(futures, timeout=timeout, return_when=FIRST_COMPLETED).done

    def outcome(self, future: Any) -> tuple[dict[str, bytes] | None, str | None]:
        try:
            return future.result()
        except Exception as crash:  # a worker killed (out of memory...) takes its run down with it
            return None, f"the worker process failed: {crash!r}"

    def abandon(self, futures: Collection[Any]) -> None:
        """Terminate the workers (what Python 3.14's ``terminate_workers`` does; 3.11 has none)."""
        for process in list((self._pool._processes or {}).values()):
            process.terminate()


class _Cluster:
    """An existing Dask scheduler's workers; ``abandon`` cancels the runs (the workers are not ours)."""

    def __init__(self, address: str) -> None:
        try:
            from dask.distributed import Client
        except ImportError:
            raise ClusterError(
                "--cluster needs Dask's distributed scheduler: pip install 'hivemind-sim[cluster]'"
            ) from None
        try:
            self._client = Client(address, timeout=30)
        except (OSError, TimeoutError) as error:
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: {error}") from None

    def __enter__(self) -> _Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def slots(self) -> int:
        return max(1, sum(self._client.nthreads().values()))  # workers may join or leave meanwhile

    def submit(self, run: SweepRun) -> Any:
        return self._client.submit(execute, run.source, run.overrides, pure=False)

    def wait(self, futures: Collection[Any], timeout: float) -> set[Any]:
        from dask.distributed import wait as dask_wait

        with contextlib.suppress(TimeoutError):
            dask_wait(list(futures), timeout=timeout, return_when="FIRST_COMPLETED")
        return {future for future in futures if future.done()}

    def outcome(self, future: Any) -> tuple[dict[str, bytes] | None, str | None]:
        try:
            return future.result()
        except Exception as crash:  # a lost worker, or a scenario the worker cannot unpickle
            return None, f"the cluster failed this run: {crash!r}"

    def abandon(self, futures: Collection[Any]) -> None:
        self._client.cancel(list(futures))


# ---- aggregating ---------------------------------------------------------------------------------------


def run_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """A metrics.json's summary, and its `during` summaries as `<metric> during <event>`."""
    values = {key: float(value) for key, value in metrics.get("summary", {}).items()}
    for event, summary in metrics.get("during", {}).items():
        values.update({f"{key} during {event}": float(value) for key, value in summary.items()})
    return values


def assertion_text(assertion: dict[str, Any]) -> str:
    """`dht.get.success_rate >= 95%`, `moe.step.p99 <= 3 s during crash-wave`."""
    unit = metric_unit(assertion["metric"])
    text = f"{assertion['metric']} {assertion['op']} {format_value(float(assertion['threshold']), unit)}"
    return f"{text} during {assertion['during']}" if assertion.get("during") else text


def summarize_points(records: Sequence[RunRecord]) -> list[PointSummary]:
    by_point: dict[Point, list[RunRecord]] = {}
    for record in records:
        by_point.setdefault(record.run.point, []).append(record)
    points = []
    for point, group in by_point.items():
        values: dict[str, list[float]] = {}
        assertions: dict[str, Counter[str]] = {}
        for record in group:
            if record.metrics is None:
                continue
            for key, value in run_metrics(record.metrics).items():
                values.setdefault(key, []).append(value)
            for assertion in record.metrics.get("assertions", []):
                assertions.setdefault(assertion_text(assertion), Counter())[assertion["status"]] += 1
        points.append(
            PointSummary(
                point=point,
                slug=group[0].run.slug,
                runs=len(group),
                errors=sum(1 for r in group if r.error is not None),
                metrics={key: Stats.of(v) for key, v in sorted(values.items())},
                assertions=assertions,
            )
        )
    return points


# ---- the sweep's report ------------------------------------------------------------------------------


def write_sweep_report(summary: SweepSummary) -> list[Path]:
    """sweep.csv, the plots and sweep.md (which links them); returns their paths."""
    csv_path = _write_csv(summary)
    plots = write_sweep_plots(summary)
    md_path = summary.out / "sweep.md"
    md_path.write_text(_markdown(summary, plots))
    return [md_path, csv_path, *plots]


def _all_metrics(points: Sequence[PointSummary]) -> list[str]:
    return sorted({key for p in points for key in p.metrics})


def _write_csv(summary: SweepSummary) -> Path:
    """One row per point: the axis values, run and assertion counts, then mean/std/min/max of
    every metric across seeds (empty where no seed observed it)."""
    keys = [key for key, _ in summary.axes]
    metrics = _all_metrics(summary.points)
    header = ["point", *keys, "runs", "errors", "pass", "fail", "unknown"]
    header += [f"{m}.{stat}" for m in metrics for stat in ("mean", "std", "min", "max")]
    path = summary.out / "sweep.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for p in summary.points:
            counts = p.assertion_counts
            row: list[Any] = [p.slug, *(value for _, value in p.point), p.runs, p.errors]
            row += [counts["pass"], counts["fail"], counts["unknown"]]
            for m in metrics:
                s = p.metrics.get(m)
                row += ["", "", "", ""] if s is None else [s.mean, s.std, s.min, s.max]
            writer.writerow(row)
    return path


def _cell(stats: Stats | None, unit: str) -> str:
    if stats is None:
        return "-"
    if stats.n == 1:
        return show(stats.mean, unit)
    return f"{show(stats.mean, unit)} ({show(stats.min, unit)} to {show(stats.max, unit)})"


def show(value: float, unit: str) -> str:
    """``format_value``, with big counts written whole (`46,913`, not `4.691e+04`)."""
    if not unit and math.isfinite(value) and abs(value) >= 1000:
        return f"{value:,.0f}"
    return format_value(value, unit)


def _markdown(summary: SweepSummary, plots: Sequence[Path]) -> str:
    points = summary.points
    runs, errors = len(summary.records), summary.errors
    lines = [f"# Sweep of `{summary.name}`: {len(points)} point(s) x {summary.seeds} seed(s)", ""]
    lines += [f"- scenario: `{summary.scenario}`"]
    for key, values in summary.axes:
        lines.append(f"- swept: `{key}` = " + ", ".join(f"`{v}`" for v in values))
    if summary.fixed:
        lines.append("- fixed: " + ", ".join(f"`{o}`" for o in summary.fixed))
    stopped = summary.stopped
    lines += [
        f"- root seed: `{summary.root_seed}`; each run's seed derives from it, the point and the replicate",
        f"- runs: {runs} ({summary.ran} run now, {summary.skipped} read back from an earlier sweep, "
        f"{len(errors)} error(s), {len(stopped)} stopped early)",
    ]
    if summary.interrupted:
        missing = summary.planned - runs
        lines.append(
            f"- **interrupted** (Ctrl-C): {missing} of {summary.planned} runs did not finish and are not "
            "below; the same command again runs only them"
        )
    lines += [f"- wall time: {format_duration(summary.wall_s)}", "", "## Assertions", ""]
    texts = list(dict.fromkeys(text for p in points for text in p.assertions))
    if texts:
        lines += ["Seeds passing each assertion, per point.", ""]
        lines += ["| point | " + " | ".join(f"`{t}`" for t in texts) + " |", "|---|" + "---|" * len(texts)]
        for p in points:
            cells = [_status_cell(p.assertions.get(t, Counter())) for t in texts]
            lines.append(f"| `{point_label(p.point)}` | " + " | ".join(cells) + " |")
    else:
        lines.append("No assertions in this scenario.")
    lines += ["", "## Metrics", "", "Mean over seeds, with (min to max) when there are several.", ""]
    lines += ["| metric | " + " | ".join(f"`{point_label(p.point)}`" for p in points) + " |"]
    lines += ["|---|" + "---|" * len(points)]
    for metric in _all_metrics(points):
        unit = metric_unit(metric)
        cells = [_cell(p.metrics.get(metric), unit) for p in points]
        lines.append(f"| `{metric}` | " + " | ".join(cells) + " |")
    lines += ["", "`sweep.csv` has every metric's mean, standard deviation, min and max per point.", ""]
    lines += ["## Plots", ""]
    for plot in plots:
        lines += [f"### [{plot.name}]({plot.name})", "", f"![{plot.name}]({plot.name})", ""]
    if not plots:
        lines += ["No metric to plot.", ""]
    lines += ["## Runs", "", "| point | seed | assertions | digest | report |", "|---|---|---|---|---|"]
    for record in summary.records:
        run = record.run
        link = f"[report]({run.rel_dir.as_posix()}/report.md)"
        if record.metrics is None:
            lines.append(f"| `{run.label}` | {run.seed} | **error** | - | - |")
            continue
        counts = counts_text(record.metrics.get("assertion_counts", {}))
        if record.metrics.get("stopped"):
            counts = f"**stopped early**: {counts}"
        lines.append(
            f"| `{run.label}` | {run.seed} | {counts} | `{record.metrics['digest'][:12]}` | {link} |"
        )
    for record in stopped:
        assert record.metrics is not None
        lines += [
            "",
            f"### Stopped early: `{record.run.label}`, seed {record.run.seed}",
            "",
            f"{record.metrics['stopped']} (the run's report has what was measured until then; its "
            "`run.log` has the details)",
        ]
    for record in errors:
        lines += [
            "",
            f"### Error: `{record.run.label}`, seed {record.run.seed}",
            "",
            "```",
            record.error or "",
            "```",
        ]
    return "\n".join(lines) + "\n"


def _status_cell(counts: Counter[str]) -> str:
    total = sum(counts.values())
    if not total:
        return "-"
    cell = f"{counts['pass']}/{total} pass"
    if counts["fail"]:
        cell = f"**{cell}, {counts['fail']} fail**"
    if counts["unknown"]:
        cell += f", {counts['unknown']} unknown"
    return cell


# ---- plots ------------------------------------------------------------------------------------------------


def plotted_metrics(summary: SweepSummary) -> list[str]:
    """The metrics assertions name (as written), then the headline ones, when observed."""
    observed = set(_all_metrics(summary.points))
    wanted = []
    for record in summary.records:
        for a in (record.metrics or {}).get("assertions", []):
            wanted.append(f"{a['metric']} during {a['during']}" if a.get("during") else a["metric"])
    wanted += HEADLINE_METRICS
    return [m for m in dict.fromkeys(wanted) if m in observed][:MAX_PLOTS]


def write_sweep_plots(summary: SweepSummary) -> list[Path]:
    paths = []
    for metric in plotted_metrics(summary):
        fig = sweep_figure(summary, metric)
        path = summary.out / f"sweep_{_safe(metric)}.png"
        fig.savefig(path, metadata={"Software": None})
        paths.append(path)
    return paths


def sweep_figure(summary: SweepSummary, metric: str) -> Figure:
    """The metric against the first axis: the mean with min-max bars, each seed a dot beside it,
    one line per combination of the other axes, assertion thresholds dashed."""
    from ..results.plots import new_figure

    x_key, x_values = summary.axes[0] if summary.axes else ("", ["base"])
    title = describe_metric(metric)
    fig, ax = new_figure(f"{title} vs {x_key}" if x_key else title)
    note = f"sweep of {summary.name}, {summary.seeds} seed(s) per point"
    fig.suptitle(note, fontsize="small", color="gray", x=0.99, ha="right")
    series: dict[Point, list[PointSummary]] = {}
    for p in summary.points:
        series.setdefault(p.point[1:], []).append(p)
    width = 0.3 / len(series)
    singles = _seed_values(summary, metric)
    observed = [v for values in singles.values() for v in values if math.isfinite(v)]
    scale, y_unit = _y_scale(metric, observed)
    for index, (rest, group) in enumerate(series.items()):
        color = f"C{index % 10}"
        offset = (index - (len(series) - 1) / 2) * width
        xs, means, lows, highs = [], [], [], []
        for p in group:
            s = p.metrics.get(metric)
            if s is None:
                continue
            x = (x_values.index(p.point[0][1]) if p.point else 0) + offset
            dots = [v / scale for v in singles.get(p.slug, [])]
            ax.scatter([x + width / 4] * len(dots), dots, s=14, color=color, alpha=0.45, linewidths=0)
            xs.append(x)
            means.append(s.mean / scale)
            lows.append((s.mean - s.min) / scale)
            highs.append((s.max - s.mean) / scale)
        if xs:
            label = f"{point_label(rest)}: mean" if rest else "mean over seeds"
            ax.errorbar(xs, means, yerr=[lows, highs], color=color, marker="o", capsize=4, label=label)
    ax.errorbar([], [], yerr=[], color="gray", capsize=4, linestyle="none", label="min to max over seeds")
    ax.scatter([], [], s=14, color="gray", alpha=0.6, linewidths=0, label="one seed")
    low, high = min(observed, default=0.0), max(observed, default=1.0)
    margin = max(high - low, abs(high) * 0.5, 1e-9)
    for threshold, op in _thresholds(summary, metric):
        label = f"assertion: {op} {format_value(threshold, metric_unit(metric))}"
        if low - 2 * margin <= threshold <= high + 2 * margin:
            ax.axhline(threshold / scale, color="red", linestyle="--", linewidth=1, label=label)
        else:  # drawing it would squash the data into a line
            ax.plot([], [], color="red", linestyle="--", linewidth=1, label=f"{label} (off the chart)")
    ax.set_xticks(range(len(x_values)), x_values, rotation=30 if max(map(len, x_values)) > 8 else 0)
    ax.set_xlim(-0.5, len(x_values) - 0.5)
    ax.set_xlabel(f"{x_key} (swept value)" if x_key else "nothing swept")
    name = metric.partition(" during ")[0]
    if metric_unit(metric) == "fraction":
        from matplotlib.ticker import PercentFormatter

        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    elif y_unit and low >= 0:
        ax.set_ylim(bottom=0)  # latencies: from zero, where a reader expects them
    ax.set_ylabel(f"{name} ({y_unit})" if y_unit else name)
    handles, labels = ax.get_legend_handles_labels()
    rank = {"min to max over seeds": 1, "one seed": 2}
    order = sorted(
        range(len(labels)), key=lambda i: rank.get(labels[i], 3 if "assertion" in labels[i] else 0)
    )
    ax.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize="small",
        frameon=False,
    )
    return fig


def _seed_values(summary: SweepSummary, metric: str) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for record in summary.records:
        if record.metrics is not None:
            value = run_metrics(record.metrics).get(metric)
            if value is not None:
                values.setdefault(record.run.slug, []).append(value)
    return values


def _thresholds(summary: SweepSummary, metric: str) -> list[tuple[float, str]]:
    found: dict[tuple[float, str], None] = {}
    for record in summary.records:
        for a in (record.metrics or {}).get("assertions", []):
            name = f"{a['metric']} during {a['during']}" if a.get("during") else a["metric"]
            if name == metric:
                found[(float(a["threshold"]), a["op"])] = None
    return list(found)


def _y_scale(metric: str, values: Sequence[float]) -> tuple[float, str]:
    """(divisor, unit) for the y axis: latencies in ms, s or min by their size, others as they are."""
    if metric_unit(metric) != "s":
        return 1.0, ""
    top = max((abs(v) for v in values), default=0.0)
    if top < 1.0:
        return 1e-3, "ms"
    return (1.0, "s") if top < 180.0 else (60.0, "min")
