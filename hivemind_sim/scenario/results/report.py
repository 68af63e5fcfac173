"""Writes a run's report folder: scenario.yaml, metrics.json, CSVs, five PNGs and report.md.

metrics.json is deterministic for one seed: keys sorted, no wall-clock value anywhere except the
top-level `wall_s` (the run's wall time, in seconds), so two runs of one seed give files that are
equal once `wall_s` is dropped (`deterministic_metrics` does that). report.md shows the wall time
too and is not meant to be compared byte for byte. Non-finite numbers (a NaN loss) are written as
the strings "nan", "inf", "-inf", since JSON has no such numbers and null would read as unknown.
`stopped` is null for a run that reached its end, else why and when it stopped early.

The command-line overrides (`--set`, `--seed`) are shown in report.md only: metrics.json
describes the run, and a rerun of its resolved scenario.yaml without any override is the same
run, to the byte.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..format.loader import dump_resolved
from ..format.names import metric_unit
from .assertions import AssertionResult, format_value
from .metrics import Recorder
from .plots import PLOTS, write_plots

if TYPE_CHECKING:
    from ..run.runner import RunResult

METRICS_FORMAT = 2  # bump when the layout of metrics.json changes
WALL_KEY = "wall_s"


def write_report(
    out_dir: str | Path,
    *,
    name: str,
    seed: int,
    scenario_yaml: str,
    recorder: Recorder,
    results: Sequence[AssertionResult],
    digest: str,
    wall_s: float,
    description: str = "",
    stopped: str | None = None,
    overrides: Sequence[str] = (),
    deployment: Sequence[str] | None = None,
) -> Path:
    """Writes every report file into out_dir (created if missing) and returns out_dir.

    stopped: why the run ended before its end (None: it did not); overrides: the `key.path=value`
    strings applied to the file (`--set`, and `seed=N` for `--seed`), shown in report.md;
    deployment: for real processes (`hivemind-sim deploy`), what the deployment did differently
    from a simulation (scaled groups, skipped events), kept in metrics.json and report.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scenario.yaml").write_text(
        scenario_yaml if scenario_yaml.endswith("\n") else scenario_yaml + "\n"
    )
    metrics = build_metrics(
        name=name,
        seed=seed,
        recorder=recorder,
        results=results,
        digest=digest,
        description=description,
        stopped=stopped,
    )
    metrics[WALL_KEY] = round(float(wall_s), 3)
    if deployment is not None:
        metrics["deployment"] = list(deployment)
    (out / "metrics.json").write_text(
        json.dumps(_finite(metrics), indent=2, sort_keys=True, allow_nan=False) + "\n"
    )
    rows = recorder.timeseries()
    _write_csv(out / "timeseries.csv", list(rows[0]), [list(r.values()) for r in rows])
    end = recorder.end_time()
    _write_csv(
        out / "events.csv",
        ["name", "action", "start_s", "end_s", "duration_s"],
        [
            [w.name, w.action, w.start, min(w.stop(), end), min(w.stop(), end) - w.start]
            for w in recorder.windows
        ],
    )
    write_plots(out, recorder, rows=rows, run=f"{name}, seed {seed}")
    (out / "report.md").write_text(_markdown(metrics, recorder, results, wall_s, overrides))
    return out


def write_run_report(
    out_dir: str | Path,
    result: RunResult,
    *,
    overrides: Sequence[str] = (),
    deployment: Sequence[str] | None = None,
) -> Path:
    """``write_report`` for a finished ``run_scenario``: what `hivemind-sim run` and sweep workers
    write, with the overrides that made the scenario from its file (only they know them)."""
    scenario = result.scenario
    return write_report(
        out_dir,
        name=scenario.name,
        seed=scenario.seed,
        scenario_yaml=dump_resolved(scenario),
        recorder=result.recorder,
        results=result.results,
        digest=result.digest,
        wall_s=round(result.wall_s, 3),
        description=scenario.description,
        stopped=result.stopped,
        overrides=overrides,
        deployment=deployment,
    )


def build_metrics(
    *,
    name: str,
    seed: int,
    recorder: Recorder,
    results: Sequence[AssertionResult],
    digest: str,
    description: str = "",
    stopped: str | None = None,
) -> dict[str, Any]:
    """metrics.json without wall_s (see the module docstring for the layout)."""
    statuses = [r.status for r in results]
    return {
        "format": METRICS_FORMAT,
        "name": name,
        "description": description,
        "seed": seed,
        "digest": digest,
        "stopped": stopped,
        "duration_s": recorder.end_time(),
        "sample_interval_s": recorder.sample_interval,
        "peers_ever_alive": recorder.peers_ever_alive,
        "summary": recorder.summary(),
        "during": {w: recorder.summary(during=w) for w in sorted({w.name for w in recorder.windows})},
        "windows": [
            {"name": w.name, "action": w.action, "start_s": w.start, "end_s": w.end} for w in recorder.windows
        ],
        "assertions": [r.as_dict() for r in results],
        "assertion_counts": {s: statuses.count(s) for s in ("pass", "fail", "unknown")},
    }


def counts_text(counts: dict[str, int]) -> str:
    """`3 pass, 1 fail, 0 unknown`, from metrics.json's `assertion_counts`."""
    return f"{counts.get('pass', 0)} pass, {counts.get('fail', 0)} fail, {counts.get('unknown', 0)} unknown"


def deterministic_metrics(path: str | Path) -> dict[str, Any]:
    """A metrics.json without its wall time: equal for two runs of one seed."""
    data = json.loads(Path(path).read_text())
    data.pop(WALL_KEY, None)
    return data


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # "nan", "inf", "-inf"
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(["" if x is None else x for x in row] for row in rows)


def _markdown(
    metrics: dict[str, Any],
    recorder: Recorder,
    results: Sequence[AssertionResult],
    wall_s: float,
    overrides: Sequence[str],
) -> str:
    counts = metrics["assertion_counts"]
    lines = [f"# Scenario `{metrics['name']}`, seed {metrics['seed']}", ""]
    if metrics["stopped"]:
        why = metrics["stopped"].rstrip(".")
        lines += [
            f"> **This run stopped early**: {why}. The assertions judged only what was measured",
            "> until then; `run.log` has the details.",
            "",
        ]
    if metrics["description"]:
        lines += [metrics["description"], ""]
    verdict = "FAILED" if counts["fail"] else ("passed" if not counts["unknown"] else "passed, with unknowns")
    lines += [f"- assertions: **{verdict}**: {counts_text(counts)}"]
    if overrides:
        shown = ", ".join(f"`{override}`" for override in overrides)
        lines.append(f"- overrides of the scenario file: {shown} (`scenario.yaml` has them applied)")
    lines += [
        f"- seed: `{metrics['seed']}` (re-run `scenario.yaml` in this folder to repeat the run)",
        f"- trace digest: `{metrics['digest']}`"
        if "deployment" not in metrics
        else "- real processes (`hivemind-sim deploy`): times are wall-clock seconds, and no trace digest",
        f"- measured window: {format_value(metrics['duration_s'], 's')}, "
        f"sampled every {format_value(metrics['sample_interval_s'], 's')}",
        f"- peers ever alive: {metrics['peers_ever_alive']}",
        f"- wall time: {wall_s:.1f} s"
        + ("" if "deployment" in metrics else " (the only figure that differs between runs of one seed)"),
        "",
        "## Assertions",
        "",
    ]
    if results:
        lines += ["| status | assertion | observed |", "|---|---|---|"]
        for r in results:
            unit = metric_unit(r.metric)
            observed = "not observed" if r.observed is None else format_value(r.observed, unit)
            wanted = f"{r.subject} {r.op} {format_value(r.threshold, unit)}"
            lines.append(f"| {r.status.upper()} | `{wanted}` | {observed} |")
    else:
        lines.append("No assertions in this scenario.")
    if "deployment" in metrics:
        lines += ["", "## Deployment", ""]
        lines += [f"- {note}" for note in metrics["deployment"]]
    lines += ["", "## Fault windows", ""]
    if recorder.windows:
        lines += ["| event | action | start | end |", "|---|---|---|---|"]
        for w in recorder.windows:
            end = "end of run" if w.end is None else format_value(w.end, "s")
            lines.append(f"| {w.name} | {w.action} | {format_value(w.start, 's')} | {end} |")
        lines += ["", "Times count from the start of the measured window (after the warmup)."]
    else:
        lines.append("No scheduled events in this scenario.")
    lines += ["", "## Summary", ""]
    during = metrics["during"]
    header = ["metric", "whole run", *(f"during {w}" for w in during)]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, value in metrics["summary"].items():
        unit = metric_unit(key)
        cells = [format_value(value, unit)]
        cells += [format_value(during[w][key], unit) if key in during[w] else "-" for w in during]
        lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
    lines += ["", "Latencies include failed operations; `.final` is the mean of the last 10% of samples.", ""]
    lines += ["## Plots", ""]
    for png in PLOTS:
        lines += [f"### [{png}]({png})", "", f"![{png}]({png})", ""]
    lines += [
        "## Files",
        "",
        "- `metrics.json`: summary, per-event-window summaries, assertions, seed, digest, wall time",
        "- `timeseries.csv`: one row per sample interval (gauges, counts, success rates, p50 latency, loss)",
        "- `events.csv`: fault windows",
        "- `scenario.yaml`: the scenario as resolved, with its seed",
        "",
    ]
    return "\n".join(lines)
