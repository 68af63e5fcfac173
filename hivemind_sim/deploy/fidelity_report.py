"""The fidelity report: fidelity.md for people, fidelity.json for programs, and the plots.

fidelity.md leads with the verdict and a summary table (one row per figure: mean difference over
the seeds, its spread, how many seeds were within tolerance), then one table per figure with a
row per seed, so a pass that hides one bad seed, or a fail caused by one, shows. fidelity.json
holds every number of both; non-finite numbers are written as the strings "nan", "inf", as in a
run's metrics.json.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..scenario.format.names import describe_metric, metric_unit
from ..scenario.results.assertions import format_duration
from ..scenario.results.compare import _percent, _value
from ..scenario.results.report import _finite
from .fidelity import MIN_SEEDS, WORLDS, Check, FidelityResult, FigureResult
from .fidelity_plots import write_fidelity_plots

if TYPE_CHECKING:
    from ..scenario.run.runner import RunResult

FIDELITY_FORMAT = 1  # bump when the layout of fidelity.json changes
VERDICT_WORDS = {"pass": "pass", "fail": "**FAIL**", "unknown": "**unknown**", "reported": "reported"}
OVERALL_WORDS = {"pass": "PASSED", "fail": "FAILED", "unknown": "UNKNOWN (not every judged figure measured)"}


def write_report(out: Path, result: FidelityResult, *, command: str, notes: list[str]) -> None:
    """Writes fidelity.json, the PNGs and fidelity.md into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    data = fidelity_json(result, command=command, notes=notes)
    (out / "fidelity.json").write_text(
        json.dumps(_finite(data), indent=2, sort_keys=True, allow_nan=False) + "\n"
    )
    plots = write_fidelity_plots(out, result)
    (out / "fidelity.md").write_text(fidelity_markdown(result, command=command, notes=notes, plots=plots))


def fidelity_json(result: FidelityResult, *, command: str, notes: list[str]) -> dict[str, Any]:
    """Every number of the comparison: runs, per-seed values and differences, spreads, verdicts."""
    runs = []
    for i, seed in enumerate(result.seeds):
        worlds = zip(WORLDS, (result.simulated[i], result.deployed[i]), strict=True)
        runs.append(
            {"seed": seed}
            | {
                world: {
                    "digest": run.digest,
                    "wall_s": round(run.wall_s, 3),
                    "stopped": run.stopped,
                    "duration_s": run.recorder.end_time(),
                }
                for world, run in worlds
            }
        )
    return {
        "format": FIDELITY_FORMAT,
        "scenario": result.scenario,
        "command": command,
        "notes": list(notes),
        "seeds": list(result.seeds),
        "verdict": result.verdict,
        "counts": result.counts,
        "runs": runs,
        "figures": [_figure_json(figure) for figure in result.figures],
    }


def _figure_json(figure: FigureResult) -> dict[str, Any]:
    check = figure.check
    data = {k: v for k, v in asdict(figure).items() if k not in ("check", "seeds")}
    return data | {
        "key": check.key,
        "description": describe_metric(check.key),
        "unit": metric_unit(check.key),
        "kind": check.kind,
        "tolerance": check.tolerance,
        "judged": check.judged,
        "seeds": [asdict(row) for row in figure.seeds],
    }


# ---- markdown ---------------------------------------------------------------------------------------------


def fidelity_markdown(
    result: FidelityResult, *, command: str, notes: list[str], plots: list[Path] | None = None
) -> str:
    """fidelity.md's text (see the module docstring)."""
    seeds = result.seeds
    counts = result.counts
    lines = [f"# Fidelity of `{result.scenario}`: simulated vs deployed, {len(seeds)} seed(s)", ""]
    for seed, world, why in result.stopped:
        lines.append(f"> **The {world} run of seed {seed} stopped early**: {why.rstrip('.')}.")
    if result.stopped:
        lines += ["> Its figures cover only what was measured until then.", ""]
    lines += [
        f"- verdict: **{OVERALL_WORDS[result.verdict]}**: {counts['pass']} pass, {counts['fail']} fail, "
        f"{counts['unknown']} unknown of {sum(counts.values())} judged figure(s)",
        f"- command: `{command}`",
        "- seeds: " + ", ".join(f"`{s}`" for s in seeds),
    ]
    if len(seeds) < MIN_SEEDS:
        lines.append(f"- **too few seeds** for a fidelity claim: {len(seeds)}, at least {MIN_SEEDS} wanted")
    lines += [
        "",
        "A latency compares as a relative difference, |deployed - simulated| / simulated; a success rate",
        "as an absolute one, in percentage points. A judged figure passes when its mean difference over",
        "the seeds is within tolerance; a figure missing from a run is unknown, never a pass.",
        "",
        "## Summary",
        "",
        "| figure | check | mean difference | spread (min..max) | std | mean change | seeds within "
        "| verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for figure in result.figures:
        check = figure.check
        spread = f"{_gap(figure.min_difference, check)}..{_gap(figure.max_difference, check)}"
        if figure.min_difference is None:
            spread = "-"
        cells = [
            f"`{check.key}`",
            _check_text(check),
            _gap(figure.mean_difference, check),
            spread,
            _gap(figure.std_difference, check),
            _gap(figure.mean_change, check, signed=True),
            _seeds_within(figure, len(seeds)),
            VERDICT_WORDS[figure.verdict],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not result.figures:
        lines.append("| - | neither world recorded any compared series | | | | | | **unknown** |")
    lines += ["", "Mean change is signed: positive where the deployment measured more (slower, higher)."]
    lines += ["", "## Runs", "", "| seed | simulated: digest | simulated | deployed |", "|---|---|---|---|"]
    for i, seed in enumerate(seeds):
        sim, dep = result.simulated[i], result.deployed[i]
        lines.append(f"| {seed} | `{sim.digest or '-'}` | {_run_text(sim)} | {_run_text(dep)} |")
    lines += ["", "A deployed run has no trace digest: real processes do not replay event for event."]
    lines += ["", "## Figures by seed", ""]
    for figure in result.figures:
        lines += _figure_lines(figure)
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    if plots:
        lines += ["## Plots", ""]
        for png in plots:
            lines += [f"### [{png.name}]({png.name})", "", f"![{png.name}]({png.name})", ""]
    lines += ["## Files", "", "- `fidelity.json`: every number above, machine readable", ""]
    return "\n".join(lines)


def _figure_lines(figure: FigureResult) -> list[str]:
    check = figure.check
    unit = metric_unit(check.key)
    lines = [f"### `{check.key}`: {describe_metric(check.key)} ({_check_text(check)})", ""]
    lines += ["| seed | simulated | deployed | change | difference | within |", "|---|---|---|---|---|---|"]
    for row in figure.seeds:
        within = {True: "yes", False: "**no**", None: "-" if check.judged else "(not judged)"}[row.within]
        if row.difference is None:
            within = "**unknown**"
        cells = [
            str(row.seed),
            _value(row.simulated, unit) if row.simulated is not None else "not measured",
            _value(row.deployed, unit) if row.deployed is not None else "not measured",
            _gap(row.change, check, signed=True),
            _gap(row.difference, check),
            within,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, "", f"Mean difference {_gap(figure.mean_difference, check)}: {figure.verdict}.", ""]


def _check_text(check: Check) -> str:
    measure = "relative difference" if check.kind == "relative" else "absolute difference"
    if check.tolerance is None:
        return f"{measure}, reported"
    return f"{measure} <= {_gap(check.tolerance, check)}"


def _gap(x: float | None, check: Check, *, signed: bool = False) -> str:
    """A difference as the check measures it: `12.5%` relative, `1.5 pp` absolute on a fraction."""
    if x is None:
        return "-"
    if abs(x) == float("inf"):
        return ("+" if x > 0 and signed else "-" if x < 0 else "") + "unbounded (simulated 0)"
    if check.kind == "relative":
        text = _percent(x)
    elif metric_unit(check.key) == "fraction":
        text = f"{x * 100:+.3g} pp"
    else:
        text = ("+" if x >= 0 else "-") + _value(abs(x), metric_unit(check.key))
    return text if signed else text.removeprefix("+")


def _seeds_within(figure: FigureResult, seeds: int) -> str:
    if not figure.check.judged:
        return "-"
    text = f"{figure.within_seeds} of {seeds}"
    unknown = seeds - figure.known_seeds
    return text + (f" ({unknown} unknown)" if unknown else "")


def _run_text(run: RunResult) -> str:
    text = f"{format_duration(run.recorder.end_time())} measured, wall {format_duration(run.wall_s)}"
    return text + (f", **stopped early**: {run.stopped}" if run.stopped else "")
