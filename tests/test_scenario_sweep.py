"""Sweeps (planning, local workers, resuming, Dask in local mode) and comparing two reports."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hivemind_sim.scenario.format.loader import ScenarioError, load_scenario
from hivemind_sim.scenario.results.compare import CompareError, compare_reports, write_comparison
from hivemind_sim.scenario.results.plots import PLOTS
from hivemind_sim.scenario.results.report import deterministic_metrics
from hivemind_sim.scenario.run.sweep_execution import (
    REQUIRED_FILES,
    ClusterError,
    execute,
    read_finished,
    run_sweep,
)
from hivemind_sim.scenario.run.sweep_plan import SweepRun, derive_seed, plan_sweep, point_slugs, split_values

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

TINY = """\
schema_version: 1
name: tiny
seed: 5
warmup: 5s
duration: 10s
sample_interval: 5s
topology: {kind: world_regions}
peers:
  - group: dht
    role: dht
    count: 4
    link: {uplink: 20Mbit/s, downlink: 100Mbit/s, latency: 10ms}
events:
  - name: blip
    at: 2s
    duration: 4s
    action: crash
    select: {group: dht, fraction: 25%}
workload:
  dht: {stores_per_second: 2, gets_per_second: 5, keys: 20}
assertions:
  - dht.get.success_rate >= 0.5
  - peers.alive.min >= 1
  - dht.get.p99 <= 1h during blip
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC


def without_wall(metrics: dict | None) -> dict:
    """A metrics.json's content but its wall time: equal for two runs of one seed."""
    assert metrics is not None
    return {key: value for key, value in metrics.items() if key != "wall_s"}


# ---- planning ------------------------------------------------------------------------------------------


def test_plan_axes_fixed_overrides_seeds_and_slugs(tiny: Path) -> None:
    sets = ["peers.0.count=3,4", "workload.dht.keys=10,20", "duration=12s"]
    runs = plan_sweep(tiny, sets, seeds=3)
    assert len(runs) == 2 * 2 * 3
    points = list(dict.fromkeys(run.point for run in runs))
    assert points == [
        (("peers.0.count", "3"), ("workload.dht.keys", "10")),
        (("peers.0.count", "3"), ("workload.dht.keys", "20")),
        (("peers.0.count", "4"), ("workload.dht.keys", "10")),
        (("peers.0.count", "4"), ("workload.dht.keys", "20")),
    ]
    first = runs[0]
    assert first.slug == "peers.0.count=3_workload.dht.keys=10"
    assert first.rel_dir == Path(first.slug) / f"seed-{first.seed}"
    for run in runs:  # every run's scenario carries its point, the fixed override and its own seed
        assert run.scenario.duration == 12.0
        assert run.scenario.peers[0].count == int(run.point[0][1])
        assert run.scenario.workload.dht is not None
        assert run.scenario.workload.dht.keys == int(run.point[1][1])
        assert run.scenario.seed == run.seed
        assert run.overrides[-1] == f"seed={run.seed}"
    seeds = [run.seed for run in runs]
    assert len(set(seeds)) == len(seeds), "every run has its own seed"
    assert seeds == [run.seed for run in plan_sweep(tiny, sets, seeds=3)], "planning is deterministic"
    assert all(run.seed == derive_seed(5, run.point, run.replicate) for run in runs)

    # another root seed moves every seed; another value on an axis keeps the other points' seeds
    moved = plan_sweep(tiny, [*sets[:2], "seed=6"], seeds=3)
    assert not {run.seed for run in moved} & set(seeds)
    wider = plan_sweep(tiny, ["peers.0.count=3,4,5", *sets[1:]], seeds=3)
    assert {(r.point, r.replicate, r.seed) for r in runs} <= {(r.point, r.replicate, r.seed) for r in wider}


def test_nothing_swept_is_one_point_of_replicates(tiny: Path) -> None:
    runs = plan_sweep(tiny, [], seeds=2)
    assert [(run.point, run.slug, run.replicate) for run in runs] == [((), "base", 0), ((), "base", 1)]


def test_seeds_are_the_same_in_every_process(tiny: Path) -> None:
    point = (("peers.0.count", "3"), ("churn.session.median", "10m"))
    code = (
        f"from hivemind_sim.scenario.run.sweep_plan import derive_seed\nprint(derive_seed(5, {point!r}, 1))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == derive_seed(5, point, 1)


def test_values_split_on_top_level_commas_only() -> None:
    assert split_values("10m,30m,2h") == ["10m", "30m", "2h"]
    assert split_values("[8,8],[4, 4]") == ["[8,8]", "[4, 4]"]
    assert split_values("{a: 1, b: 2},'x,y'") == ["{a: 1, b: 2}", "'x,y'"]
    assert split_values("8") == ["8"]


def test_slugs_are_safe_and_distinct() -> None:
    points = [
        (("peers.0.link.uplink", "10Mbit/s"),),
        (("peers.0.client_mode", "30%"),),
        (("a", "x y"),),
        (("a", "x/y"),),
        (("a", "v" * 300),),
    ]
    slugs = point_slugs(points)
    assert slugs[0] == "peers.0.link.uplink=10Mbit_s"
    assert slugs[1] == "peers.0.client_mode=30pct"
    assert slugs[2] != slugs[3] and slugs[2].startswith("a=x_y-")  # both sanitise to `a=x_y`
    assert len(slugs[4]) <= 120
    assert all("/" not in slug and " " not in slug for slug in slugs)


@pytest.mark.parametrize(
    ("sets", "seeds", "where", "words"),
    [
        (["peers.0.count"], 2, "--set peers.0.count:", "expected `key.path=value`"),
        (["=3,4"], 2, "--set =3,4:", "expected `key.path=value`"),
        (["peers.0.count=3,,4"], 2, "--set peers.0.count=3,,4:", "empty value"),
        (["seed=1,2"], 2, "--set seed=1,2:", "--seeds N"),
        (["peers.0.count=3,4", "peers.0.count=5,6"], 2, "--set peers.0.count=5,6:", "already set"),
        (["peers.0.count=3,3"], 2, "--set peers.0.count=3,3:", "repeated"),
        (["peers.0.count=0,3"], 2, "--set peers.0.count=0,3:", "must be >= 1, got `0` (at peers.0.count=0)"),
        (["peers.0.cout=3,4"], 2, "--set peers.0.cout=3,4", "did you mean `count`?"),
        (["peers.0.count=3,4"], 0, "--seeds:", "at least 1"),
    ],
)
def test_bad_sweep_flags_are_named(tiny: Path, sets: list[str], seeds: int, where: str, words: str) -> None:
    with pytest.raises(ScenarioError) as error:
        plan_sweep(tiny, sets, seeds=seeds)
    message = str(error.value)
    assert where in message and words in message, message


# ---- running -------------------------------------------------------------------------------------------


def test_tiny_sweep_on_two_workers_writes_everything_and_resumes(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    sets = ["peers.0.count=4,6"]
    statuses: list[str] = []
    summary = run_sweep(
        tiny,
        sets,
        seeds=2,
        out=out,
        workers=2,
        progress=lambda done, total, run, status: statuses.append(status),
    )
    assert summary.errors == [] and summary.ran == 4 and summary.skipped == 0
    assert statuses == ["done"] * 4
    assert not summary.failed
    for record in summary.records:
        folder = out / record.run.rel_dir
        for name in (*REQUIRED_FILES, "timeseries.csv", "events.csv", "run.log"):
            assert (folder / name).is_file(), folder / name
        assert all(is_png(folder / png) for png in PLOTS)
        assert record.metrics is not None and record.metrics["seed"] == record.run.seed
    assert {f.name for f in summary.files} >= {"sweep.md", "sweep.csv", "sweep_dht.get.success_rate.png"}
    assert all(is_png(f) for f in summary.files if f.suffix == ".png")
    assert "sweep_dht.get.p99_during_blip.png" in {f.name for f in summary.files}

    with (out / "sweep.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [row["peers.0.count"] for row in rows] == ["4", "6"]
    point = summary.points[0]
    counts = [r.metrics["summary"]["dht.get.count"] for r in summary.records[:2] if r.metrics]
    assert float(rows[0]["dht.get.count.mean"]) == pytest.approx(sum(counts) / 2)
    assert float(rows[0]["dht.get.count.min"]) == min(counts)
    assert int(rows[0]["pass"]) + int(rows[0]["fail"]) + int(rows[0]["unknown"]) == 2 * 3
    assert point.assertions["dht.get.success_rate >= 50%"].total() == 2
    markdown = (out / "sweep.md").read_text()
    assert "`peers.0.count` = `4`, `6`" in markdown
    for record in summary.records:
        assert f"{record.run.rel_dir.as_posix()}/report.md" in markdown
    for png in summary.files[2:]:
        assert f"]({png.name})" in markdown

    # a worker's run is the run: the same digest when its resolved scenario.yaml runs here
    from hivemind_sim.scenario.run.runner import run_scenario

    first = summary.records[0]
    again = run_scenario(load_scenario(out / first.run.rel_dir / "scenario.yaml"))
    assert first.metrics is not None and again.digest == first.metrics["digest"]

    # resuming: nothing reruns, the files stay as they were
    stamps = {r.run: (out / r.run.rel_dir / "metrics.json").stat().st_mtime_ns for r in summary.records}
    statuses.clear()
    resumed = run_sweep(
        tiny,
        sets,
        seeds=2,
        out=out,
        workers=2,
        progress=lambda done, total, run, status: statuses.append(status),
    )
    assert statuses == ["skipped"] * 4 and resumed.ran == 0 and resumed.skipped == 4
    assert {
        r.run: (out / r.run.rel_dir / "metrics.json").stat().st_mtime_ns for r in resumed.records
    } == stamps
    assert [r.metrics for r in resumed.records] == [r.metrics for r in summary.records]

    # a run folder left incomplete (an interrupted copy) reruns; the others are read back
    broken = summary.records[1].run
    (out / broken.rel_dir / "report.md").unlink()
    (out / broken.rel_dir.with_name(broken.rel_dir.name + ".partial")).mkdir()  # debris of a crash
    ran: list[tuple[SweepRun, str]] = []
    repaired = run_sweep(
        tiny,
        sets,
        seeds=2,
        out=out,
        workers=2,
        progress=lambda done, total, run, status: ran.append((run, status)),
    )
    assert [run for run, status in ran if status == "done"] == [broken]
    assert repaired.skipped == 3 and repaired.ran == 1
    assert (out / broken.rel_dir / "report.md").is_file()
    assert not list(out.glob("*/*.partial"))
    assert [without_wall(r.metrics) for r in repaired.records] == [
        without_wall(r.metrics) for r in summary.records
    ]


def test_a_failing_run_is_reported_not_raised(tiny: Path) -> None:
    source = plan_sweep(tiny, [], seeds=1)[0].source
    files, error = execute(source, ["peers.0.count=-1"])
    assert files is None and error is not None and "must be >= 1" in error


def test_cluster_needs_dask(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dask.distributed", None)  # as if not installed
    with pytest.raises(ClusterError, match=r"hivemind-sim\[cluster\]"):
        run_sweep(tiny, [], seeds=1, out=tmp_path / "out", cluster="tcp://127.0.0.1:1")


@pytest.mark.timeout(90)
def test_sweep_on_a_local_dask_cluster(tiny: Path, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed", reason="Dask is the optional `cluster` extra")
    out = tmp_path / "sweep"
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as cluster:
        summary = run_sweep(tiny, [], seeds=2, out=out, cluster=cluster.scheduler_address)
    assert summary.errors == [] and summary.ran == 2
    local = run_sweep(tiny, [], seeds=2, out=tmp_path / "local", workers=1)
    assert [r.run for r in local.records] == [r.run for r in summary.records]
    for record in summary.records:  # the same runs, to the byte
        path = record.run.rel_dir / "metrics.json"
        assert deterministic_metrics(out / path) == deterministic_metrics(tmp_path / "local" / path)
    assert all(is_png(out / r.run.rel_dir / "alive_peers.png") for r in summary.records)


# ---- comparing ---------------------------------------------------------------------------------------------


@pytest.fixture
def two_reports(tiny: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A real report, and a copy edited as a worse run would be (compare reads files only)."""
    from hivemind_sim.scenario.results.report import write_run_report
    from hivemind_sim.scenario.run.runner import run_scenario

    a, b = tmp_path / "a", tmp_path / "b"
    write_run_report(a, run_scenario(load_scenario(tiny)))
    shutil.copytree(a, b)
    metrics = json.loads((b / "metrics.json").read_text())
    metrics["digest"] = "0" * 64
    metrics["summary"]["dht.get.success_rate"] = 0.25
    metrics["assertions"][0].update(status="fail", observed=0.25)
    (b / "metrics.json").write_text(json.dumps(metrics))
    return a, b


def test_compare_names_changes(two_reports: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_reports
    before = json.loads((a / "metrics.json").read_text())["summary"]["dht.get.success_rate"]
    text = compare_reports(a, b)
    assert "Trace digests **differ**" in text
    assert "| `dht.get.success_rate >= 50%` | pass (" in text and "| **pass -> fail** |" in text
    assert "| `peers.alive.min >= 1` |" in text and "| same |" in text
    assert f"-{(before - 0.25) * 100:.3g} pp" in text
    assert "1 of " in text  # only the edited metric differs

    same = compare_reports(a, a / "metrics.json")
    assert "Trace digests are **equal**" in same and "0 of " in same and "**pass" not in same

    paths = write_comparison(a, b, tmp_path / "cmp")
    assert [p.name for p in paths] == ["compare.md", "compare.png", "compare_metrics.png"]
    assert paths[0].read_text() == text
    assert all(is_png(p) for p in paths[1:])


def test_compare_refuses_a_folder_without_a_report(tmp_path: Path) -> None:
    with pytest.raises(CompareError, match=r"no metrics\.json"):
        compare_reports(tmp_path, tmp_path)


def test_every_kind_of_summary_metric_gets_words() -> None:
    from hivemind_sim.scenario.format.names import describe_metric

    assert describe_metric("dht.get.p99 during cut") == "DHT get latency p99 during cut"
    assert describe_metric("dht.lookup.hops.mean") == "DHT lookup hops, mean"
    top1 = "DHT lookup found the nearest live peer (share of lookups)"
    assert describe_metric("dht.lookup.top1.mean") == top1
    assert describe_metric("moe.step.laptops.p50") == "training step (laptops) latency p50"
    assert describe_metric("rpc.bytes.per_peer") == "RPC bytes, per peer"
    assert describe_metric("peers.alive.servers.min") == "alive peers (servers), min"
    assert describe_metric("train.loss.final") == "training loss, final"
    assert describe_metric("something.new") == "something.new"  # unknown keys stay as they are


# ---- Ctrl-C ----------------------------------------------------------------------------------------------


def workers_of(pid: int) -> set[int]:
    """The spawned worker processes (not multiprocessing's resource tracker) whose parent is pid."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rpartition(")")[2].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if parent == pid and b"spawn_main" in command:
            found.add(int(stat.parent.name))
    return found


class SweepProcess:
    """`hivemind-sim sweep` in its own process, read line by line; ends every process it started."""

    def __init__(self, tiny: Path, out: Path, tmp: Path, *args: str) -> None:
        command = [sys.executable, "-m", "hivemind_sim.cli", "sweep", str(tiny), "--workers", "1"]
        env = {**os.environ, "TMPDIR": str(tmp), "COLUMNS": "200"}
        self.process = subprocess.Popen(
            [*command, "--out", str(out), *args], stderr=subprocess.PIPE, text=True, env=env
        )
        self.lines: list[str] = []
        self.workers: set[int] = set()

    def read_until(self, text: str) -> str:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if text in line:
                return line
        raise AssertionError(f"the sweep ended without printing {text!r}:\n{''.join(self.lines)}")

    def interrupt(self) -> None:
        self.workers |= workers_of(self.process.pid)
        self.process.send_signal(signal.SIGINT)

    def finish(self) -> int:
        assert self.process.stderr is not None
        self.lines += self.process.stderr.readlines()
        return self.process.wait(timeout=60)

    def close(self) -> set[int]:
        """Kills what is left (a failed test's sweep and its workers); returns the workers that were."""
        left = {pid for pid in self.workers if Path(f"/proc/{pid}").exists()}
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        assert self.process.stderr is not None
        self.process.stderr.close()
        return left

    @property
    def text(self) -> str:
        return "".join(self.lines)


@pytest.fixture
def sweep_process(tiny: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    started: list[SweepProcess] = []

    def start(out: Path, *args: str) -> SweepProcess:
        (tmp_path / "tmp").mkdir(exist_ok=True)
        started.append(SweepProcess(tiny, out, tmp_path / "tmp", *args))
        return started[-1]

    yield start
    for each in started:
        assert not each.close(), "worker processes outlived the sweep"


def test_a_first_ctrl_c_finishes_the_runs_in_flight_keeps_them_and_resumes(
    sweep_process, tiny: Path, tmp_path: Path
) -> None:
    out = tmp_path / "sweep"
    sweep = sweep_process(out, "--seeds", "3")
    sweep.read_until("[1/3] done")  # the next run is in flight by then: it was started first
    sweep.interrupt()
    assert sweep.read_until("stopping:").strip() == (
        "stopping: no new runs; waiting for the 1 run in flight (Ctrl-C again to abandon them)"
    )
    assert sweep.finish() == 130, sweep.text
    assert "[2/3] done" in sweep.text and "[3/3]" not in sweep.text
    assert "Traceback" not in sweep.text
    assert sweep.lines[-1].strip() == (
        "hivemind-sim: interrupted: 2 of 3 runs finished and are kept; the same command runs the others"
    )
    assert sweep.workers and not any(Path(f"/proc/{pid}").exists() for pid in sweep.workers)
    runs = plan_sweep(tiny, [], seeds=3)
    finished = [read_finished(out / run.rel_dir, run) is not None for run in runs]
    assert finished == [True, True, False], "the two finished runs are kept; resuming runs the third"
    markdown = (out / "sweep.md").read_text()
    assert "**interrupted** (Ctrl-C): 1 of 3 runs did not finish" in markdown
    assert markdown.count("/report.md)") == 2
    assert not list((tmp_path / "tmp").iterdir()), "the workers' temporary files are gone"


def test_a_second_ctrl_c_abandons_the_runs_in_flight(sweep_process, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    sweep = sweep_process(out, "--set", "duration=10s,10m")  # the second run is long
    sweep.read_until("[1/2] done")
    sweep.interrupt()
    sweep.read_until("stopping:")
    sweep.interrupt()
    assert sweep.read_until("abandoning").strip() == "abandoning the 1 run in flight"
    assert sweep.finish() == 130, sweep.text
    assert "Traceback" not in sweep.text
    assert sweep.lines[-1].startswith("hivemind-sim: interrupted: 1 of 2 runs finished")
    assert not any(Path(f"/proc/{pid}").exists() for pid in sweep.workers), "the workers were terminated"
    assert [path.parent.parent.name for path in out.glob("*/seed-*/report.md")] == ["duration=10s"]
    assert "**interrupted** (Ctrl-C): 1 of 2 runs did not finish" in (out / "sweep.md").read_text()
    assert not list((tmp_path / "tmp").iterdir()), "the abandoned run's temporary files are gone"


def test_compare_names_the_scenario_keys_that_differ(
    two_reports: tuple[Path, Path], tmp_path: Path, capsys
) -> None:
    from hivemind_sim.cli import main

    a, b = two_reports
    assert "The resolved scenarios are **identical** (the difference comes from the simulator" in (
        compare_reports(a, b)
    ), "b differs in its digest only"
    resolved = (b / "scenario.yaml").read_text()
    edited = resolved.replace("duration: 10 s", "duration: 12 s").replace("count: 4", "count: 6")
    assert edited.count("12 s") == 1 and edited.count("count: 6") == 1
    (b / "scenario.yaml").write_text(edited)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    table = [
        "2 key(s) of the resolved scenarios differ (`--set` paths):",
        "| `duration` | `10 s` | `12 s` |",
        "| `peers.dht.count` | `4` | `6` |",  # a group by its name, as `--set` names it
    ]
    for line in table:
        assert line in printed and line in (tmp_path / "cmp" / "compare.md").read_text(), line
    assert "identical" not in compare_reports(a, b)
    assert "The resolved scenarios are **identical**." in compare_reports(a, a)
    (b / "scenario.yaml").unlink()
    assert f"No `scenario.yaml` in B ({b})" in compare_reports(a, b)


def test_scenario_differences_name_keys_as_set_does() -> None:
    from hivemind_sim.scenario.format.loader import dump_resolved
    from hivemind_sim.scenario.results.compare import Difference, differences_line, scenario_differences

    quickstart = Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.yaml"
    a = dump_resolved(load_scenario(quickstart))
    sets = [
        "seed=1",
        "workload.training.grid=[8,8]",
        "events.crash-wave.select.fraction=10%",
        "assertions.1=x >= 1",
    ]
    b = dump_resolved(load_scenario(quickstart, sets[:3]))
    assert scenario_differences(a, b) == [
        Difference("seed", "0", "1"),
        Difference("events.crash-wave.select.fraction", "50%", "10%"),
        Difference("workload.training.grid", "[6, 4]", "[8, 8]"),
    ]
    assert scenario_differences(a, a) == []
    fewer = a.replace("- peers.alive.min >= 16", "").replace(", peers.alive.min >= 16", "")
    assert scenario_differences(a, fewer) == [Difference("assertions.4", "peers.alive.min >= 16", "(absent)")]
    assert differences_line(scenario_differences(a, b), most=2) == (
        "seed: 0 -> 1, events.crash-wave.select.fraction: 50% -> 10% and 1 more"
    )
    with pytest.raises(ValueError, match="not a scenario"):
        scenario_differences(a, "- a list")


def test_a_sweep_shows_its_runs_that_stopped_early(tiny: Path, tmp_path: Path, monkeypatch) -> None:
    from hivemind_sim import cli
    from hivemind_sim.scenario.results.sweep_report import write_sweep_report
    from hivemind_sim.scenario.results.sweep_summary import RunRecord, SweepSummary, summarize_points
    from hivemind_sim.scenario.run import sweep_execution

    runs = plan_sweep(tiny, [], seeds=2)
    metrics = {
        "digest": "ab" * 32,
        "summary": {"peers.alive.min": 4.0},
        "assertions": [],
        "assertion_counts": {"pass": 0, "fail": 0, "unknown": 0},
    }
    why = "the runner failed at 7.5 s: RuntimeError: boom"
    records = [
        RunRecord(runs[0], {**metrics, "stopped": None}),
        RunRecord(runs[1], {**metrics, "stopped": why}),
    ]
    summary = SweepSummary(
        scenario=str(tiny),
        name="tiny",
        root_seed=5,
        seeds=2,
        axes=[],
        fixed=[],
        out=tmp_path,
        planned=2,
        records=records,
        points=summarize_points(records),
        files=[],
        wall_s=1.0,
    )
    write_sweep_report(summary)
    markdown = (tmp_path / "sweep.md").read_text()
    assert "(2 run now, 0 read back from an earlier sweep, 0 error(s), 1 stopped early)" in markdown
    assert f"| `base` | {runs[1].seed} | **stopped early**: 0 pass, 0 fail, 0 unknown |" in markdown
    assert f"### Stopped early: `base`, seed {runs[1].seed}\n\n{why} (the run's report" in markdown
    assert summary.stopped == [records[1]] and not summary.interrupted and not summary.failed

    monkeypatch.setattr(sweep_execution, "run_sweep", lambda *args, **kwargs: summary)
    assert cli.main(["sweep", str(tiny), "--out", str(tmp_path)]) == 3, "a run stopped early: exit 3"
