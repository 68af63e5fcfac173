"""``hivemind-sim fidelity``: one scenario simulated and deployed, seed by seed, side by side.

The simulator is only worth its results if a real swarm behaves the same: this compares what a
simulated run and a deployed run (real processes, ``deploy_scenario``) of the same scenario and
seed measured, figure by figure (`FIDELITY_CHECKS`), over several seeds, because one seed's gap
may be luck. Latencies compare as relative differences, success rates as absolute ones (a
99.5% -> 98% drop is small relatively but a real loss). A judged figure passes when its mean
difference over the seeds is within tolerance; a figure a run did not measure is unknown, never
a pass. `write_fidelity_report` writes the report (``fidelity_report``, ``fidelity_plots``); the
callables that run each world are injected, so the command wires the real ones and tests pass fakes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from ..scenario.format.schema import Scenario
    from ..scenario.run.runner import RunResult

Kind = Literal["relative", "absolute"]
Verdict = Literal["pass", "fail", "unknown", "reported"]
WORLDS = ("simulated", "deployed")
MIN_SEEDS = 3
"""Seeds the acceptance of a fidelity claim asks for; fewer are reported but said to be too few."""
LATENCY_TOLERANCE = 0.15
SUCCESS_TOLERANCE = 0.01
_SLACK = 1e-9  # 0.99 vs 0.98 is one percentage point, although its float difference is a hair above


@dataclass(frozen=True)
class Check:
    """One compared figure: a summary key, how its two values differ, and the tolerance (None:
    reported, not judged)."""

    metric: str
    """The recorded series (`dht.lookup`, `train.loss`)."""
    stat: str
    """The summary statistic (`p50`, `success_rate`, `final`)."""
    kind: Kind
    tolerance: float | None = None

    @property
    def key(self) -> str:
        return f"{self.metric}.{self.stat}"

    @property
    def judged(self) -> bool:
        return self.tolerance is not None

    def change(self, simulated: float | None, deployed: float | None) -> float | None:
        """Deployed minus simulated, relative to simulated for a relative check; None when unknown."""
        if simulated is None or deployed is None or math.isnan(simulated) or math.isnan(deployed):
            return None
        gap = deployed - simulated
        if self.kind == "absolute":
            return gap
        if simulated == 0:  # nothing to scale by: equal is no gap, anything else an unbounded one
            return 0.0 if gap == 0 else math.copysign(math.inf, gap)
        return gap / abs(simulated)

    def within(self, difference: float | None) -> bool | None:
        """Whether a difference (unsigned) is within tolerance; None if unknown or not judged."""
        if difference is None or self.tolerance is None:
            return None
        return difference <= self.tolerance + _SLACK


JUDGED_LATENCIES = ("dht.lookup", "moe.step")
"""Whose latency p50 is judged. A get's or a store's is only reported: in a small swarm many
gets find the key in the requester's own storage (0 s) and the rest cross the network, so their
median sits on the edge between two modes and a relative gap there says nothing."""


def _checks() -> tuple[Check, ...]:
    checks: list[Check] = []
    for event in ("dht.lookup", "dht.get", "dht.store", "moe.step"):
        tolerance = LATENCY_TOLERANCE if event in JUDGED_LATENCIES else None
        checks += [
            Check(event, "p50", "relative", tolerance),
            Check(event, "p90", "relative"),
            Check(event, "p99", "relative"),
            Check(event, "success_rate", "absolute", SUCCESS_TOLERANCE),
        ]
    return (*checks, Check("train.loss", "final", "relative"))


FIDELITY_CHECKS = _checks()
"""The compared figures, for each series a scenario records; lookup and step p50 and every
success rate are judged."""


@dataclass(frozen=True)
class SeedFigure:
    """One figure in one seed: both worlds' values and how they differ."""

    seed: int
    simulated: float | None
    deployed: float | None
    change: float | None
    """Signed: deployed - simulated (relative to simulated for a relative check)."""
    difference: float | None
    """What the check judges: |change|."""
    within: bool | None


@dataclass(frozen=True)
class FigureResult:
    """One figure over all seeds: the per-seed rows, the spread of the difference, the verdict."""

    check: Check
    seeds: tuple[SeedFigure, ...]
    mean_difference: float | None
    min_difference: float | None
    max_difference: float | None
    std_difference: float | None
    """Sample standard deviation over the seeds (None with fewer than two known)."""
    mean_change: float | None
    """Mean signed change: which way the deployment is off, on average."""
    known_seeds: int
    within_seeds: int
    verdict: Verdict


@dataclass(frozen=True)
class FidelityResult:
    """Every seed's runs in both worlds, and each figure compared."""

    scenario: str
    seeds: tuple[int, ...]
    simulated: tuple[RunResult, ...]
    deployed: tuple[RunResult, ...]
    figures: tuple[FigureResult, ...]

    @property
    def counts(self) -> dict[str, int]:
        """Judged figures by verdict (pass, fail, unknown)."""
        verdicts = [f.verdict for f in self.figures if f.check.judged]
        return {v: verdicts.count(v) for v in ("pass", "fail", "unknown")}

    @property
    def verdict(self) -> Literal["pass", "fail", "unknown"]:
        """fail if a judged figure failed, else unknown if one is unknown or none was judged, else pass."""
        counts = self.counts
        if counts["fail"]:
            return "fail"
        return "unknown" if counts["unknown"] or not counts["pass"] else "pass"

    @property
    def stopped(self) -> list[tuple[int, str, str]]:
        """(seed, world, why) for each run that stopped before the end of its window."""
        return [
            (seed, world, run.stopped)
            for world, runs in zip(WORLDS, (self.simulated, self.deployed), strict=True)
            for seed, run in zip(self.seeds, runs, strict=True)
            if run.stopped is not None
        ]

    def figure(self, key: str) -> FigureResult:
        """The figure of a summary key (`dht.lookup.p50`); KeyError if it was not compared."""
        for figure in self.figures:
            if figure.check.key == key:
                return figure
        raise KeyError(key)


def compare_runs(
    simulated: Sequence[RunResult], deployed: Sequence[RunResult], seeds: Sequence[int]
) -> FidelityResult:
    """Each figure of `FIDELITY_CHECKS` whose series some run recorded, seed by seed.

    simulated[i] and deployed[i] are runs of seeds[i]; raises ValueError when the lengths differ
    or a run's scenario has another seed (a miswired comparison would look like a fidelity gap).
    """
    if not len(simulated) == len(deployed) == len(seeds):
        raise ValueError(
            f"{len(simulated)} simulated and {len(deployed)} deployed runs for {len(seeds)} seeds"
        )
    if not seeds:
        raise ValueError("no seeds to compare")
    for world, runs in zip(WORLDS, (simulated, deployed), strict=True):
        for seed, run in zip(seeds, runs, strict=True):
            if run.scenario.seed != seed:
                raise ValueError(f"the {world} run for seed {seed} ran seed {run.scenario.seed}")
    runs = [*simulated, *deployed]
    recorded = set().union(*(_series(run) for run in runs))
    sim_summaries = [run.recorder.summary() for run in simulated]
    dep_summaries = [run.recorder.summary() for run in deployed]
    figures = []
    for check in FIDELITY_CHECKS:
        if check.metric not in recorded:
            continue  # the scenario does not have it: neither world recorded the series
        rows = [
            _seed_figure(check, seed, sim.get(check.key), dep.get(check.key))
            for seed, sim, dep in zip(seeds, sim_summaries, dep_summaries, strict=True)
        ]
        figures.append(_summarise(check, rows))
    return FidelityResult(
        scenario=simulated[0].scenario.name,
        seeds=tuple(seeds),
        simulated=tuple(simulated),
        deployed=tuple(deployed),
        figures=tuple(figures),
    )


def _series(run: RunResult) -> set[str]:
    names = run.recorder.names()
    return {*names["events"], *names["values"]}


def _seed_figure(check: Check, seed: int, simulated: float | None, deployed: float | None) -> SeedFigure:
    change = check.change(simulated, deployed)
    difference = None if change is None else abs(change)
    return SeedFigure(seed, simulated, deployed, change, difference, check.within(difference))


def _summarise(check: Check, rows: list[SeedFigure]) -> FigureResult:
    """The spread over the seeds whose difference is known; a verdict only if all are (a figure
    not judged is then "reported")."""
    known = np.array([r.difference for r in rows if r.difference is not None], dtype=float)
    changes = np.array([r.change for r in rows if r.change is not None], dtype=float)
    mean = _number(known.mean()) if known.size else None
    if known.size < len(rows) or mean is None:
        verdict: Verdict = "unknown"
    elif not check.judged:
        verdict = "reported"
    else:
        verdict = "pass" if check.within(mean) else "fail"
    with np.errstate(invalid="ignore"):  # inf - inf in the spread of an unbounded gap
        std = _number(known.std(ddof=1)) if known.size > 1 else None
    return FigureResult(
        check=check,
        seeds=tuple(rows),
        mean_difference=mean,
        min_difference=_number(known.min()) if known.size else None,
        max_difference=_number(known.max()) if known.size else None,
        std_difference=std,
        mean_change=_number(changes.mean()) if changes.size else None,
        known_seeds=int(known.size),
        within_seeds=sum(1 for r in rows if r.within),
        verdict=verdict,
    )


def _number(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def run_fidelity(
    scenario: Scenario,
    seeds: Sequence[int],
    *,
    simulate: Callable[[Scenario], RunResult],
    deploy: Callable[[Scenario], RunResult],
    progress: Callable[[str], None] | None = None,
) -> FidelityResult:
    """Simulates and deploys ``scenario`` once per seed, then compares the runs.

    The seed replaces the scenario's (as `--seed` does: nothing else in a scenario depends on it).
    """
    say = progress or (lambda _text: None)
    simulated: list[RunResult] = []
    deployed: list[RunResult] = []
    for i, seed in enumerate(seeds, 1):
        if seed < 0:
            raise ValueError(f"seeds must be >= 0, got {seed}")
        seeded = scenario.model_copy(update={"seed": seed})
        say(f"seed {seed} ({i}/{len(seeds)}): simulating")
        simulated.append(simulate(seeded))
        say(f"seed {seed} ({i}/{len(seeds)}): deploying")
        deployed.append(deploy(seeded))
    return compare_runs(simulated, deployed, seeds)


def fidelity_failed(result: FidelityResult) -> bool:
    """The exit status: anything but a pass of every judged figure (unknown is not a pass)."""
    return result.verdict != "pass"


def write_fidelity_report(out: Path, result: FidelityResult, *, command: str, notes: list[str]) -> None:
    """fidelity.md, fidelity.json and the plots into ``out`` (created if missing).

    command: how the comparison was run, shown so it can be repeated; notes: what the reader must
    know to trust the figures (what the deployment scaled or skipped)."""
    from .fidelity_report import write_report  # matplotlib and the report only when written

    write_report(Path(out), result, command=command, notes=notes)
