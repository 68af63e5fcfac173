"""A sweep's plan: one scenario run at every point of a grid of `--set` values, several seeds per point.

Each `--set key.path=v1,v2,...` is an axis (a single value is a fixed override); the points are
the cartesian product of the axes, and each point runs `seeds` times. A run's seed is derived
from the scenario's root seed, the point and the replicate index by a stable hash, so the same
sweep gives the same seeds in every process and on every machine, and adding a point does not
change the seeds of the others. Each run's report folder is `<out>/<point>/seed-<seed>/`. Every
point is validated here, before anything runs, and a problem is reported against the user's flag.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..format.loader import Problem, ScenarioError, parse_scenario
from ..format.schema import Scenario

Point = tuple[tuple[str, str], ...]
"""(key path, value text) for each axis, in axis order; () when nothing is swept."""

SEED_BITS = 31  # seeds stay small enough for every generator the world seeds
MAX_SLUG = 120


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
        slug = "_".join(f"{key}={safe_name(value)}" for key, value in point) or "base"
        if len(slug) > MAX_SLUG:
            slug = slug[: MAX_SLUG - 9] + "-" + _short_hash(point)
        slugs.append(slug)
    counts = Counter(slugs)
    return [f"{s}-{_short_hash(p)}" if counts[s] > 1 else s for s, p in zip(slugs, points, strict=True)]


def safe_name(value: str) -> str:
    """A value as part of a file name: `50%` is `50pct`, anything unsafe an underscore."""
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
