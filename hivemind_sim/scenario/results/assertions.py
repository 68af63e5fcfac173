"""Checks a run's metrics against the scenario's assertions: each is pass, fail or unknown.

Unknown means there was nothing to judge (the metric was never observed, or the event named by
`during` never happened) and is not a pass. An assertion is anything with `metric`, `op`,
`threshold` (in the metric's base unit: seconds, fractions, counts) and `during` (an event name
or None), such as `Assertion` below or the schema's own model.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from ..format.names import metric_unit
from .metrics import Recorder

Status = Literal["pass", "fail", "unknown"]

OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    # equality on measured floats tolerates rounding noise (a rate of 0.1 + 0.2 equals 0.3)
    "==": lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12),
    "!=": lambda a, b: not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12),
}


class AssertionLike(Protocol):
    @property
    def metric(self) -> str: ...
    @property
    def op(self) -> str: ...
    @property
    def threshold(self) -> float: ...
    @property
    def during(self) -> str | None: ...


class Assertion(NamedTuple):
    metric: str
    op: str
    threshold: float
    during: str | None = None


@dataclass(frozen=True)
class AssertionResult:
    metric: str
    op: str
    threshold: float
    during: str | None
    status: Status
    observed: float | None
    line: str  # "moe.step.p99 during crash-wave = 2.4 s <= 3 s: pass"

    @property
    def subject(self) -> str:
        """The metric and its window: "moe.step.p99 during crash-wave"."""
        return self.metric if self.during is None else f"{self.metric} during {self.during}"

    def as_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "op": self.op,
            "threshold": self.threshold,
            "during": self.during,
            "status": self.status,
            "observed": self.observed,
            "line": self.line,
        }


def evaluate(assertions: Iterable[AssertionLike], recorder: Recorder) -> list[AssertionResult]:
    """One result per assertion, in order; summaries are computed once per window."""
    window_names = {w.name for w in recorder.windows}
    summaries: dict[str | None, dict[str, float]] = {}
    results = []
    for a in assertions:
        if a.op not in OPS:
            raise ValueError(
                f"unknown comparison {a.op!r} in assertion on {a.metric!r}; use one of {list(OPS)}"
            )
        if a.during not in summaries:
            summaries[a.during] = recorder.summary(during=a.during)
        observed = summaries[a.during].get(a.metric)
        unit = metric_unit(a.metric)
        subject = a.metric if a.during is None else f"{a.metric} during {a.during}"
        wanted = f"{a.op} {format_value(a.threshold, unit)}"
        if observed is None:
            status: Status = "unknown"
            if a.during is not None and a.during not in window_names:
                why = f"event {a.during} never happened"
            elif a.during is not None:
                why = f"{a.metric} not observed during {a.during}"
            else:
                why = f"{a.metric} never observed"
            line = f"{subject} {wanted}: unknown ({why})"
        else:
            status = "pass" if OPS[a.op](observed, a.threshold) else "fail"
            line = f"{subject} = {format_value(observed, unit)} {wanted}: {status}"
        results.append(AssertionResult(a.metric, a.op, float(a.threshold), a.during, status, observed, line))
    return results


def format_value(v: float, unit: str = "") -> str:
    """A number for people: durations with a unit ("2.4 s", "35 ms"), fractions as percentages
    ("99.5%"), others with 4 significant digits."""
    if not math.isfinite(v):
        return str(v)
    if unit == "s":
        return format_duration(v)
    if unit == "fraction":
        return f"{v * 100:.4g}%"
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.4g}"


def format_duration(seconds: float) -> str:
    """ "120 us", "35 ms", "2.4 s", "3.5 min", "2 h" (3 significant digits)."""
    if not math.isfinite(seconds):
        return str(seconds)
    seconds = float(f"{seconds:.3g}")  # round first, so 0.9999 s reads "1 s", not "1e+03 ms"
    s = abs(seconds)
    if s == 0:
        return "0 s"
    for limit, scale, unit in (
        (1e-3, 1e6, "us"),
        (1.0, 1e3, "ms"),
        (60.0, 1.0, "s"),
        (3600.0, 1 / 60, "min"),
    ):
        if s < limit:
            return f"{seconds * scale:.3g} {unit}"
    return f"{seconds / 3600:.3g} h"
