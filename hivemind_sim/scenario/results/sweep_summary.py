"""A sweep's runs summed up per point: every summary metric's mean and spread across seeds, and
each assertion's statuses, read from the runs' metrics.json alone."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..format.names import metric_unit
from .assertions import format_value

if TYPE_CHECKING:
    from ..run.sweep_plan import Point, SweepRun


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


def all_metrics(points: Sequence[PointSummary]) -> list[str]:
    """Every metric observed at any point, sorted."""
    return sorted({key for p in points for key in p.metrics})
