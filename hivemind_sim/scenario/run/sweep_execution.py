"""Running a sweep: every planned run not done yet, on local worker processes or a Dask cluster.

A run whose report folder is already complete is read back, not rerun, so an interrupted sweep
picks up where it stopped. A first Ctrl-C starts no new run and waits for those in flight, a
second abandons them; the finished runs are kept and reported.

Runs go to local worker processes (spawned, so each starts clean) or, with ``cluster``, to an
existing Dask scheduler (`pip install 'hivemind-sim[cluster]'`). Dask rather than Ray: it is
pure Python and a small install, connects to a running scheduler with one address, and its
futures work like ``concurrent.futures``, so both paths share one loop; Ray would bring a large
binary runtime for what is here a plain map of independent jobs. Either way a worker runs the
scenario into a temporary folder and sends the report files back, so cluster workers need no
shared filesystem (only the files a scenario names, such as churn traces, at the same path).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from ..format.loader import dump_resolved
from ..format.schema import Scenario
from ..results.report import METRICS_FORMAT
from ..results.sweep_report import write_sweep_report
from ..results.sweep_summary import RunRecord, SweepSummary, summarize_points
from .sweep_plan import Source, SweepRun, parse_sets, plan_sweep

Progress = Callable[[int, int, "SweepRun", str], None]
"""Called once per run as it finishes: (runs finished, runs in all, the run, status), status being
"done", "skipped" (read back from an earlier sweep) or "error"."""
REQUIRED_FILES = ("scenario.yaml", "metrics.json", "report.md")
POLL_S = 0.2  # how soon a sweep acts on Ctrl-C while it waits for runs


class ClusterError(RuntimeError):
    """The cluster engine is missing or cannot be reached."""


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
