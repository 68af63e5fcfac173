"""The scenario format: units, distributions, every error's FILE:LINE message, overrides, resolved dumps.

Running this file as a script (`python tests/test_scenario_schema.py`) rewrites the key reference
in docs/scenarios.md from the models; a test checks that the committed doc matches it.
"""

from __future__ import annotations

import random
import sys
import textwrap
import types
import typing
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, BeforeValidator, TypeAdapter

from hivemind_sim.scenario.format import distributions, schema, units
from hivemind_sim.scenario.format.distributions import ChurnTime, Popularity, Varying
from hivemind_sim.scenario.format.loader import (
    ScenarioError,
    TraceSession,
    dump_resolved,
    load_scenario,
    parse_scenario,
    read_churn_trace,
)
from hivemind_sim.scenario.format.schema import Assertion, Scenario
from hivemind_sim.scenario.format.units import (
    Bandwidth,
    Compute,
    Duration,
    format_bandwidth,
    format_compute,
    format_duration,
    format_fraction,
    format_size,
    parse_bandwidth,
    parse_compute,
    parse_duration,
    parse_fraction,
    parse_size,
)

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "scenarios.md"

MINIMAL = """\
schema_version: 1
name: t
duration: 5m
peers:
  - group: servers
    role: server
    count: 4
  - group: trainers
    role: trainer
    count: 2
workload:
  training: {grid: [4, 4]}
"""


def errors(text: str, overrides: tuple[str, ...] = ()) -> list[str]:
    """The problem lines loading ``text`` as `s.yaml` gives (there must be some)."""
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, filename="s.yaml", overrides=overrides)
    lines = str(caught.value).splitlines()
    assert lines == [str(problem) for problem in caught.value.problems]
    return lines


def with_lines(extra: str) -> str:
    """MINIMAL plus ``extra`` (more top-level keys), for errors on known line numbers."""
    return MINIMAL + textwrap.dedent(extra)


# ---- units ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "text", "value"),
    [
        (parse_duration, "50ms", 0.05),
        (parse_duration, "2 s", 2.0),
        (parse_duration, "10m", 600.0),
        (parse_duration, "1.5min", 90.0),
        (parse_duration, "2h", 7200.0),
        (parse_duration, "1d", 86400.0),
        (parse_duration, "250us", 250e-6),
        (parse_duration, 3, 3.0),
        (parse_bandwidth, "10Mbit/s", 10e6),
        (parse_bandwidth, "1Gbit/s", 1e9),
        (parse_bandwidth, "500kbit/s", 500e3),
        (parse_bandwidth, "2MB/s", 16e6),
        (parse_bandwidth, "100Mbps", 100e6),
        (parse_bandwidth, "1Mibit/s", 2**20),
        (parse_compute, "1.5TFLOP/s", 1.5e12),
        (parse_compute, "200GFLOP/s", 200e9),
        (parse_compute, "10TFLOPS", 10e12),
        (parse_size, "64KiB", 65536),
        (parse_size, "1MB", 10**6),
        (parse_size, "64B", 64),
        (parse_size, 100, 100),
        (parse_fraction, "30%", 0.3),
        (parse_fraction, "0.1%", 0.001),
        (parse_fraction, 0.25, 0.25),
        (parse_fraction, "1", 1.0),
    ],
)
def test_quantities_parse_to_base_units(parse: Any, text: object, value: float) -> None:
    assert parse(text) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (
            parse_duration,
            "5 parsecs",
            "expected a duration like `50ms`, `2h` (units: ns, us or µs, ms, s or sec, m or min, h, d)",
        ),
        (parse_duration, "5 parsecs", "got `5 parsecs` (unknown unit `parsecs`)"),
        (parse_duration, "-5s", "got `-5s` (must be >= 0)"),
        (parse_duration, True, "got `True`"),
        (parse_duration, "1e999s", "(not finite)"),
        (parse_bandwidth, "10mbit/s", "unknown unit `mbit/s`; did you mean `Mbit/s`?"),
        (parse_bandwidth, "0Mbit/s", "expected a positive bandwidth"),
        (parse_compute, "10 TFLOP", "unknown unit `TFLOP`"),
        (parse_size, "1.5B", "expected a whole number of bytes, got `1.5B`"),
        (parse_fraction, "130%", "got `130%` (must be between 0 and 100%)"),
        (parse_fraction, "2", "got `2` (must be between 0 and 100%)"),
        (parse_fraction, "lots", "expected a fraction like `0.3` or `30%`, got `lots`"),
    ],
)
def test_bad_quantities_say_what_was_expected(parse: Any, text: object, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse(text)
    assert message in str(caught.value)


def test_reports_format_quantities_for_humans() -> None:
    assert format_duration(0.05) == "50 ms"
    assert format_duration(7200) == "2 h"
    assert format_duration(0.123456) == "123.5 ms"
    assert format_duration(0) == "0 s"
    assert format_bandwidth(2e7) == "20 Mbit/s"
    assert format_compute(1.5e12) == "1.5 TFLOP/s"
    assert format_size(65536) == "64 KiB"
    assert format_fraction(0.3) == "30%"


@given(st.floats(min_value=0, max_value=1e9, allow_nan=False))
def test_exact_durations_parse_back_to_the_same_float(seconds: float) -> None:
    assert parse_duration(format_duration(seconds, exact=True)) == seconds


@given(st.floats(min_value=1e-3, max_value=1e15, allow_nan=False))
def test_exact_bandwidths_and_compute_parse_back(value: float) -> None:
    assert parse_bandwidth(format_bandwidth(value, exact=True)) == value
    assert parse_compute(format_compute(value, exact=True)) == value


@given(st.floats(min_value=0, max_value=1, allow_nan=False), st.integers(min_value=0, max_value=2**50))
def test_exact_fractions_and_sizes_parse_back(fraction: float, size: int) -> None:
    assert parse_fraction(format_fraction(fraction, exact=True)) == fraction
    assert parse_size(format_size(size, exact=True)) == size


# ---- distributions -------------------------------------------------------------------------------


def draws(distribution: Any, seed: int = 1, n: int = 20) -> list[float]:
    rng = random.Random(seed)
    return [distribution.sample(rng) for _ in range(n)]


@pytest.mark.parametrize(
    "spec",
    [
        "20Mbit/s",
        {"distribution": "constant", "value": "20Mbit/s"},
        {"distribution": "lognormal", "median": "20Mbit/s", "sigma": 0.5},
        {"distribution": "uniform", "low": "1Mbit/s", "high": "10Mbit/s"},
        {"distribution": "choice", "values": ["1Mbit/s", "1Gbit/s"], "weights": [3, 1]},
        {"distribution": "choice", "values": ["1Mbit/s", "1Gbit/s"]},
    ],
)
def test_peer_attribute_distributions_sample_deterministically(spec: object) -> None:
    distribution = TypeAdapter(Varying[Bandwidth]).validate_python(spec)
    values = draws(distribution)
    assert values == draws(distribution)
    assert all(value > 0 for value in values)
    if isinstance(spec, dict) and spec["distribution"] in ("lognormal", "uniform"):
        assert values != draws(distribution, seed=2)


def test_distribution_parameters_take_the_attribute_units() -> None:
    adapter = TypeAdapter(Varying[Duration])
    uniform = adapter.validate_python({"distribution": "uniform", "low": "10ms", "high": "1s"})
    assert (uniform.low, uniform.high) == (0.01, 1.0)
    assert all(0.01 <= value <= 1.0 for value in draws(uniform))
    choice = TypeAdapter(Varying[Compute]).validate_python(
        {"distribution": "choice", "values": ["1TFLOP/s", "10TFLOP/s"], "weights": [1, 0]}
    )
    assert set(draws(choice)) == {1e12}


@pytest.mark.parametrize(
    ("spec", "mean"),
    [
        ({"distribution": "exponential", "mean": "10m"}, 600),
        ({"distribution": "weibull", "shape": 0.55, "median": "30m"}, None),
        ({"distribution": "weibull", "shape": 2, "scale": "1h"}, None),
        ({"distribution": "lognormal", "median": "20m", "sigma": 1}, None),
        ({"distribution": "pareto", "shape": 1.5, "minimum": "5m"}, None),
    ],
)
def test_churn_times_sample_as_the_churn_classes_do(spec: dict[str, Any], mean: float | None) -> None:
    distribution = TypeAdapter(ChurnTime).validate_python(spec)
    converted = distribution.to_churn()
    assert type(converted).__module__.endswith("churn")
    assert draws(distribution, n=50) == draws(converted, n=50)
    assert all(value > 0 for value in draws(distribution, n=50))
    if mean is not None:
        assert sum(draws(distribution, n=4000)) / 4000 == pytest.approx(mean, rel=0.1)


def test_a_weibull_median_is_the_median() -> None:
    weibull = TypeAdapter(ChurnTime).validate_python(
        {"distribution": "weibull", "shape": 0.55, "median": "30m"}
    )
    samples = sorted(draws(weibull, n=4001))
    assert samples[2000] == pytest.approx(1800, rel=0.1)


def test_key_popularity_is_deterministic_and_skewed() -> None:
    zipf = TypeAdapter(Popularity).validate_python({"distribution": "zipf", "exponent": 1.1})
    uniform = TypeAdapter(Popularity).validate_python({"distribution": "uniform"})
    for popularity in (zipf, uniform):
        draw = popularity.sampler(100)
        first = [draw(random.Random(5)) for _ in range(3)]
        assert first == [draw(random.Random(5)) for _ in range(3)]
        rng = random.Random(0)
        keys = [draw(rng) for _ in range(2000)]
        assert all(0 <= key < 100 for key in keys)
    rng = random.Random(0)
    hot = sum(zipf.sample(rng, 100) == 0 for _ in range(2000))
    assert hot > 2000 / 10  # key 0 gets ~19% of zipf(1.1) requests over 100 keys, not 1%


# ---- schema errors, each with its file, line, key path and suggestion ----------------------------


def test_minimal_scenario_gets_defaults() -> None:
    scenario = parse_scenario(MINIMAL, filename="s.yaml")
    assert scenario.duration == 300 and scenario.warmup == 60 and scenario.sample_interval == 10
    assert scenario.topology.kind == "world_regions"
    servers = scenario.group("servers")
    assert servers.link.latency.sample(random.Random(0)) == 0.005
    assert servers.link.uplink is None  # unlimited
    assert servers.hardware.trainer_device == servers.hardware.device
    assert scenario.workload.training is not None and scenario.workload.training.k_best == 4


def test_unknown_key_names_file_line_path_and_the_nearest_key() -> None:
    churn = "    churn:\n      sesion: {distribution: exponential, mean: 1h}\n      downtime: 1h\n"
    assert errors(MINIMAL.replace("    count: 4\n", f"    count: 4\n{churn}")) == [
        "s.yaml:9: peers.0.churn.sesion: unknown key `sesion` (did you mean `session`?)",
        "s.yaml:10: peers.0.churn.downtime: expected a mapping with `distribution`"
        " (one of `exponential`, `weibull`, `lognormal`, `pareto`) and its parameters, got `1h`",
    ]
    assert errors(with_lines("sed: 3\n")) == ["s.yaml:13: sed: unknown key `sed` (did you mean `seed`?)"]


def test_every_problem_is_listed_in_file_order() -> None:
    text = MINIMAL.replace("count: 4", "count: 0").replace("duration: 5m", "duration: -5m")
    text = text.replace("role: trainer", "role: trainr")
    assert errors(text) == [
        "s.yaml:3: duration: expected a positive duration like `50ms`, `2h`"
        " (units: ns, us or µs, ms, s or sec, m or min, h, d), got `-5m` (must be > 0)",
        "s.yaml:7: peers.0.count: must be >= 1, got `0`",
        "s.yaml:9: peers.1.role: expected one of `dht`, `server`, `trainer`, `peer`, got `trainr`"
        " (did you mean `trainer`?)",
    ]


def test_missing_keys_point_at_their_parent() -> None:
    text = MINIMAL.replace("    count: 2\n", "")
    assert errors(text) == ["s.yaml:8: peers.1.count: missing required key `count`"]


def test_unknown_distribution_and_action_suggest_the_nearest() -> None:
    text = with_lines(
        """\
        events:
          - at: 1m
            action: crsh
            select: {group: servers}
        """
    ).replace(
        "count: 4\n", "count: 4\n    link: {uplink: {distribution: lognorml, median: 1Mbit/s, sigma: 1}}\n"
    )
    lines = errors(text)
    assert lines[0].startswith(
        "s.yaml:8: peers.0.link.uplink.distribution:"
        " unknown distribution `lognorml` (did you mean `lognormal`?)"
    )
    assert "one of `constant`, `lognormal`, `uniform`, `choice`" in lines[0]
    assert lines[1].startswith("s.yaml:16: events.0.action: unknown action `crsh` (did you mean `crash`?)")


def test_a_distribution_without_its_key_says_which_keys_exist() -> None:
    text = MINIMAL.replace("count: 4\n", "count: 4\n    hardware: {device: {median: 1TFLOP/s}}\n")
    assert errors(text) == [
        "s.yaml:8: peers.0.hardware.device: missing `distribution`:"
        " one of `constant`, `lognormal`, `uniform`, `choice` (or a plain quantity for a constant)"
    ]


def test_bad_quantity_inside_a_distribution() -> None:
    text = MINIMAL.replace(
        "count: 4\n",
        "count: 4\n    link:\n      uplink: {distribution: uniform, low: 5 parsecs, high: 1Gbit/s}\n",
    )
    (line,) = errors(text)
    assert line.startswith("s.yaml:9: peers.0.link.uplink.low: expected a positive bandwidth like `10Mbit/s`")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (
            "events:\n  - {at: 1m, action: crash, select: {group: server}}\n",
            "s.yaml:14: events.0.select.group: no group `server` (did you mean `servers`?)",
        ),
        (
            "events:\n  - {at: 1m, action: crash, select: {peers: [servers-4]}}\n",
            "s.yaml:14: events.0.select.peers.0: no peer `servers-4`"
            " (peers are named `<group>-<index>` from 0)",
        ),
        (
            "events:\n  - {at: 1m, action: partition}\n",
            "s.yaml:14: events.0.sides: missing required key `sides`",
        ),
        (
            "events:\n  - {at: 1m, action: partition, sides: []}\n",
            "s.yaml:14: events.0.sides: needs at least 1 item(s)",
        ),
        (
            "events:\n  - {at: 1m, action: partition,"
            " sides: [{group: servers}, {role: dht}, {group: servers}]}\n",
            "s.yaml:14: events.0.sides.2: the same selector as side 0: both would pick the same peers",
        ),
        (
            "events:\n  - {at: 1m, action: restart, duration: 1s, select: {role: server}}\n",
            "s.yaml:14: events.0.duration: a restart is over at once: it takes no `duration`",
        ),
        (
            "events:\n  - {at: 1m, action: heal}\n",
            "s.yaml:14: events.0.at: heal with no partition at or before it",
        ),
        (
            "events:\n  - {at: 6m, action: freeze, select: {group: servers}}\n",
            "s.yaml:14: events.0.at: 6 min is not before the end of the measured window (duration 5 min)",
        ),
        (
            "events:\n  - {at: 1m, action: crash, select: {}}\n",
            "s.yaml:14: events.0.select: select needs at least one of"
            " group, role, region(s), peers, fraction, count",
        ),
        (
            "events:\n  - {at: 1m, action: misbehave, output: nan, select: {group: trainers}}\n",
            "s.yaml:14: events.0.select: misbehave needs peers that host experts (role server or peer)",
        ),
        (
            "events:\n  - {name: a, at: 1m, action: leave, select: {role: server}}\n"
            "  - {name: a, at: 2m, action: leave, select: {role: server}}\n",
            "s.yaml:15: events.1.name: duplicate event name `a`",
        ),
        (
            "assertions:\n  - dht.get.sucess_rate >= 0.99\n",
            "s.yaml:14: assertions.0: unknown metric `dht.get.sucess_rate`"
            " (did you mean `dht.get.success_rate`?)",
        ),
        (
            "events:\n  - {name: crash-wave, at: 1m, action: crash, select: {group: servers}}\n"
            "assertions:\n  - moe.step.p99 <= 3s during crash-wav\n",
            "s.yaml:16: assertions.0: `during crash-wav`: no event named so (did you mean `crash-wave`?)",
        ),
        (
            "assertions:\n  - train.loss.final < nan\n",
            "s.yaml:14: assertions.0.threshold: expected a threshold like `0.99`, `99%`, `3s`, got `nan`",
        ),
        (
            "assertions:\n  - {metric: moe.step.p99, op: '<', threshold: 3 parsecs}\n",
            "s.yaml:14: assertions.0.threshold: expected a threshold like `0.99`, `99%`, `3s`,"
            " got `3 parsecs`",
        ),
        (
            "assertions:\n  - loss is low\n",
            "s.yaml:14: assertions.0: expected `<metric> <op> <threshold> [during <event>]` like"
            " `dht.get.success_rate >= 0.99`, got `loss is low`",
        ),
        (
            "topology: {kind: waxman, nodes: 10, params: {alpa: 0.3}}\n",
            "s.yaml:13: topology.params.alpa: unknown parameter `alpa` for waxman (did you mean `alpha`?);"
            " known: alpha, beta, max_latency",
        ),
        (
            "events:\n  - {at: 1m, action: crash, select: {region: eu}}\n",
            "s.yaml:14: events.0.select.region: no topology node `eu` in world_regions"
            " (nodes: asia-east, asia-south, eu-central, eu-west, oceania, sa-east, us-east, us-west)",
        ),
        (
            "topology: {kind: waxman, nodes: 3}\n"
            "events:\n  - {at: 1m, action: crash, select: {region: '1'}}\n",
            "s.yaml:15: events.0.select.region: routers are numbers: write 1 without quotes",
        ),
        (
            "events:\n  - {at: 1m, action: crash, selct: {group: servers}}\n",
            "s.yaml:14: events.0.selct: unknown key `selct` (did you mean `select`?)",
        ),
        (
            "topology: {kind: barabasi_albert}\n",
            "s.yaml:13: topology.nodes: a barabasi_albert topology needs `nodes`",
        ),
        (
            "topology: {kind: file, path: missing.graphml}\n",
            "s.yaml:13: topology.path: file not found: ",
        ),
        (
            "seed: -1\n",
            "s.yaml:13: seed: must be >= 0, got `-1`",
        ),
    ],
)
def test_cross_checks_name_the_key_and_line(extra: str, expected: str) -> None:
    lines = errors(with_lines(extra))
    assert len(lines) == 1 and lines[0].startswith(expected), lines


@pytest.mark.parametrize(
    ("churn", "expected"),
    [
        (
            "{session: {distribution: exponential, mean: 1h}, downtime: 1h}",
            "peers.0.churn.downtime: expected a mapping with `distribution` (one of `exponential`, `weibull`,"
            " `lognormal`, `pareto`) and its parameters, got `1h`",
        ),
        (
            "{session: {distribution: exponential, mean: 1h}}",
            "peers.0.churn.downtime: churn with `session` and `downtime` needs both: `downtime`",
        ),
        (
            "{session: {distribution: exponential, mean: 1h},"
            " downtime: {distribution: exponential, mean: 1h}, trace: t.csv}",
            "peers.0.churn.trace: give either `session` and `downtime`, or `trace`, not both",
        ),
        ("{graceful: 30%}", "peers.0.churn: churn needs `session` and `downtime`, or a `trace` file"),
        (
            "{session: {distribution: weibull, shape: 0.5}, downtime: {distribution: exponential, mean: 1h}}",
            "peers.0.churn.session: weibull needs exactly one of `median` and `scale`",
        ),
        (
            "{trace: t.csv, min_alive: 5}",
            "peers.0.churn.min_alive: min_alive 5 > count 4",
        ),
        (
            "{trace: t.csv, start: lockstep}",
            "peers.0.churn.start: `start` is for drawn sessions: a trace gives every time",
        ),
        (
            "{session: {distribution: pareto, shape: 1, minimum: 1m},"
            " downtime: {distribution: exponential, mean: 1h}}",
            "peers.0.churn.session.shape: a Pareto session of shape 1 (<= 1) has an infinite mean, so churn"
            " has no steady state to start in: use a shape > 1, or `start: lockstep`",
        ),
    ],
)
def test_churn_needs_session_and_downtime_or_a_trace(churn: str, expected: str, tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("peer,join,leave\n")
    text = MINIMAL.replace("count: 4\n", f"count: 4\n    churn: {churn}\n")
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, filename="s.yaml", base_dir=tmp_path)
    assert str(caught.value) == f"s.yaml:8: {expected}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "peers:\n  - group: p\n    role: trainer\n    count: 1\nduration: 1m\n",
            "s.yaml:4: peers.0.role: role `trainer` needs a `workload.training` section",
        ),
        (
            "peers:\n  - group: p\n    role: dht\n    count: 1\n    experts: 3\nduration: 1m\n",
            "s.yaml:6: peers.0.experts: `experts` is for roles server and peer, not dht",
        ),
        (
            "peers:\n  - {group: p, role: server, count: 3, experts: 4}\n"
            "  - {group: t, role: trainer, count: 1}\n"
            "duration: 1m\nworkload: {training: {grid: [2, 5]}}\n",
            "s.yaml:6: workload.training.grid: peers host 12 experts but the grid [2, 5] has only 10",
        ),
        (
            "peers:\n  - {group: p, role: server, count: 3}\nduration: 1m\nworkload: {training: {}}\n",
            "s.yaml:5: workload.training: training needs a group with role trainer or peer",
        ),
        (
            "peers:\n  - {group: p, role: dht, count: 3}\n  - {group: p, role: dht, count: 3}\n"
            "duration: 1m\n",
            "s.yaml:4: peers.1.group: duplicate group name `p`",
        ),
        (
            "peers:\n  - {group: p, role: peer, count: 3}\nduration: 1m\n"
            "workload: {training: {k_best: 2, k_min: 3}}\n",
            "s.yaml:5: workload.training.k_min: k_min 3 > k_best 2",
        ),
    ],
)
def test_roles_and_workloads_must_agree(text: str, expected: str) -> None:
    assert errors("name: t\n" + text) == [expected]


# ---- slips that validate but cannot mean what was meant: refused, each with its fix -------------

WITH_DHT = MINIMAL.replace("  training: {grid: [4, 4]}\n", "  training: {grid: [4, 4]}\n  dht: {}\n")


@pytest.mark.parametrize(
    ("assertion", "expected"),
    [
        (
            "dht.get.success_rate >= 99",
            "`dht.get.success_rate` is a fraction from 0 to 1, and `99` would mean 9900%: write it like"
            " `0.99` or `99%`",
        ),
        (
            "dht.get.success_rate >= 0.99%",
            "`0.99%` is 0.0099: a lower bound under 1% on `dht.get.success_rate` passes when almost every"
            " operation fails; write `0.99` or `99%` if you meant 99%, or `0.0099` to keep 0.99%",
        ),
        (
            "dht.lookup.overlap.mean >= 90",
            "`dht.lookup.overlap.mean` is a fraction from 0 to 1, and `90` would mean 9000%: write it like"
            " `0.9` or `90%`",
        ),
        (
            "moe.step.success_rate > 2s",
            "`moe.step.success_rate` is a fraction from 0 to 1, not a duration:"
            " write it like `0.99` or `99%`",
        ),
        (
            "moe.step.p99 <= 99%",
            "`moe.step.p99` is a latency: write a duration like `3s` or `250ms`, not `99%` (read as 990 ms)",
        ),
        (
            "{metric: moe.step.trainers.p50, op: '<', threshold: 1MB}",
            "`moe.step.trainers.p50` is a latency: write a duration like `3s` or `250ms`, not `1MB`",
        ),
        (
            "dht.get.p99 <= 250",
            "`250` is read as 4.167 min, longer than any operation waits: write `250ms` if you meant that,"
            " or `250s` to keep 4.167 min",
        ),
        (
            "peers.alive.min >= 50%",
            "`peers.alive.min` (alive peers, min) is a plain number: write the threshold without a unit,"
            " not `50%`",
        ),
        (
            "rpc.bytes.per_peer < 1s",
            "`rpc.bytes.per_peer` counts bytes: write a size like `64KiB` or a number of bytes, not `1s`",
        ),
    ],
)
def test_a_threshold_must_fit_its_metric(assertion: str, expected: str) -> None:
    assert errors(f"{WITH_DHT}assertions:\n  - {assertion}\n") == [
        f"s.yaml:15: assertions.0.threshold: {expected}"
    ]


def test_thresholds_that_fit_their_metric_pass() -> None:
    assert schema.parse_threshold("99%") == (0.99, "fraction")
    assert schema.parse_threshold("250ms") == (0.25, "duration")
    assert schema.parse_threshold(3) == (3.0, "number")
    fitting = [
        "dht.get.success_rate >= 0.99",
        "dht.get.success_rate >= 99%",
        "dht.get.success_rate == 1",
        "dht.get.success_rate < 0.5%",  # an upper bound: failing almost always is what is asserted
        "dht.lookup.top1.mean >= 95%",
        "moe.step.p99 <= 3s",
        "moe.step.p99 <= 59",
        "rpc.bytes.per_peer < 64KiB",
        "rpc.messages.total < 100000",
        "peers.alive.min >= 3",
        "train.loss.final <= 0.8",
    ]
    text = WITH_DHT + "assertions:\n" + "".join(f"  - {line}\n" for line in fitting)
    assert len(parse_scenario(text).assertions) == len(fitting)


DHT_ONLY = "name: t\nduration: 1m\npeers:\n  - {group: d, role: dht, count: 3}\n"


@pytest.mark.parametrize(
    ("text", "expected", "fix"),
    [
        (
            DHT_ONLY + "assertions:\n  - train.loss.final <= 1\n",
            "s.yaml:6: assertions.0: `train.loss.final` can never be observed: the scenario has no training"
            " (add a `workload.training` section, or drop this assertion)",
            ("  - train.loss.final <= 1\n", "  - peers.alive.min >= 1\n"),
        ),
        (
            DHT_ONLY + "assertions:\n  - moe.expert_failures.total == 0\n",
            "s.yaml:6: assertions.0: `moe.expert_failures.total` can never be observed: the scenario has no"
            " training (add a `workload.training` section, or drop this assertion)",
            ("moe.expert_failures.total == 0", "rpc.messages.total > 0"),
        ),
        (
            MINIMAL + "assertions:\n  - dht.get.success_rate >= 0.9\n",
            "s.yaml:14: assertions.0: `dht.get.success_rate` can never be observed: the scenario has no DHT"
            " workload (add a `workload.dht` section, or drop this assertion)",
            ("workload:\n", "workload:\n  dht: {}\n"),
        ),
        (
            WITH_DHT.replace("dht: {}", "dht: {gets_per_second: 0}") + "assertions:\n  - dht.get.p99 < 1s\n",
            "s.yaml:15: assertions.0: `dht.get.p99` can never be observed:"
            " `workload.dht.gets_per_second` is 0 (raise it, or drop this assertion)",
            ("gets_per_second: 0", "gets_per_second: 1"),
        ),
        (
            WITH_DHT.replace("dht: {}", "dht: {stores_per_second: 0}")
            + "assertions:\n  - dht.get.count > 1\n",
            "s.yaml:15: assertions.0: `dht.get.count` can never be observed: gets ask only for stored keys,"
            " and `workload.dht.stores_per_second` is 0 (raise it)",
            ("stores_per_second: 0", "stores_per_second: 0.1"),
        ),
        (
            WITH_DHT.replace("dht: {}", "dht: {lookups_per_second: 0}")
            + "assertions:\n  - dht.lookup.top1.mean >= 0.9\n",
            "s.yaml:15: assertions.0: `dht.lookup.top1.mean` can never be observed:"
            " `workload.dht.lookups_per_second` is 0 (raise it, or drop this assertion)",
            ("lookups_per_second: 0", "lookups_per_second: 2"),
        ),
        (
            MINIMAL + "assertions:\n  - moe.step.servers.p99 <= 3s\n",
            "s.yaml:14: assertions.0: `moe.step.servers.p99` can never be observed: group `servers` has role"
            " server and does not train (name a trainer group)",
            ("moe.step.servers", "moe.step.trainers"),
        ),
        (
            MINIMAL + "events:\n  - {name: r, at: 1m, action: restart, select: {group: servers}}\n"
            "assertions:\n  - peers.alive.min >= 1 during r\n",
            "s.yaml:16: assertions.0: `during r`: a restart is over at once, so nothing is observed during it"
            " (drop `during`, or name an event that lasts)",
            (" during r", ""),
        ),
    ],
)
def test_an_assertion_that_can_never_be_observed_is_refused(
    text: str, expected: str, fix: tuple[str, str]
) -> None:
    assert errors(text) == [expected]
    parse_scenario(text.replace(*fix))  # the fix it names is enough


PLACED = MINIMAL.replace("count: 4\n", "count: 4\n    regions: [eu-west, us-east]\n")


@pytest.mark.parametrize(
    ("event", "expected", "fix"),
    [
        (
            "{at: 1m, action: crash, select: {group: servers, region: asia-east}}",
            "events.0.select.region: picks no peer: no peer of group `servers` is placed on `asia-east`;"
            " they are on eu-west, us-east (select one of those, or add it to the group's `regions`)",
            ("asia-east", "us-east"),
        ),
        (
            "{at: 1m, action: freeze, select: {role: server, regions: [sa-east, oceania]}}",
            "events.0.select.regions: picks no peer: no peer of role `server` is placed on any of"
            " `sa-east`, `oceania`; they are on eu-west, us-east (select one of those, or add it to a"
            " group's `regions`)",
            ("sa-east", "us-east"),
        ),
        (
            "{at: 1m, action: crash, select: {group: servers, role: trainer}}",
            "events.0.select.role: picks no peer: group `servers` has role `server`, not `trainer`"
            " (drop `role` or `group`)",
            ("{group: servers, role: trainer}", "{group: servers, role: server}"),
        ),
        (
            "{at: 1m, action: leave, select: {group: trainers, peers: [servers-1]}}",
            "events.0.select.peers: picks no peer: group `trainers` matches 2 peer(s)"
            " (trainers-0, trainers-1) and `peers` names none of them",
            ("group: trainers, ", ""),
        ),
        (
            "{at: 1m, action: crash, select: {group: servers, fraction: 10%}}",
            "events.0.select.fraction: picks no peer: 10% of the 4 peer(s) matched rounds to 0"
            " (write `count: 1`, or a larger fraction)",
            ("fraction: 10%", "fraction: 0%"),  # a sweep's baseline point: no peer, on purpose
        ),
        (
            "{at: 1m, action: slow_compute, factor: 2, select: {group: trainers}}",
            "events.0.select: slow_compute needs peers that host experts (role server or peer)",
            ("{group: trainers}", "{group: servers}"),
        ),
    ],
)
def test_an_event_that_picks_no_peer_is_refused(event: str, expected: str, fix: tuple[str, str]) -> None:
    text = f"{PLACED}events:\n  - {event}\n"
    assert errors(text) == [f"s.yaml:15: {expected}"]
    parse_scenario(text.replace(*fix))


def test_events_before_a_group_joins_and_on_unplaced_routers_pick_no_peer() -> None:
    late = MINIMAL.replace("count: 2\n", "count: 2\n    join_at: 2m\n")
    crash = "events:\n  - {at: 1m, action: crash, select: {group: trainers}}\n"
    assert errors(late + crash) == [
        "s.yaml:15: events.0.select: picks no peer: the crash at 1 min acts on live peers, and group"
        " `trainers` joins at 2 min (move the event later, or select peers that are up)"
    ]
    parse_scenario(late + crash.replace("crash, select", "degrade, latency: 50ms, select"))  # links exist
    routers = with_lines(
        "topology: {kind: waxman, nodes: 10}\nevents:\n  - {at: 1m, action: freeze, select: {region: 7}}\n"
    )
    assert errors(routers) == [
        "s.yaml:15: events.0.select.region: picks no peer: no peer is placed on `7`; peers are on 0, 1, 2, 3"
        " (select one of those, or add it to a group's `regions`)"
    ]


@pytest.mark.parametrize(
    ("key", "value", "expected", "fixes"),
    [
        (
            "link: {latency: 10}",
            "10",
            "peers.0.link.latency: `10` is read as 10 s, far longer than a link's latency:"
            " write `10ms` if you meant that, or `10s` to keep 10 s",
            ("10ms", "10s", "0.01"),
        ),
        (
            "link: {downlink: 200}",
            "200",
            "peers.0.link.downlink: `200` is read as 200 bit/s, far too slow for a link: write `200Mbit/s`"
            " or `200kbit/s` if you meant that, or `200bit/s` to keep 200 bit/s",
            ("200Mbit/s", "200bit/s", "2e8"),
        ),
        (
            "hardware: {device: 10}",
            "10",
            "peers.0.hardware.device: `10` is read as 10 FLOP/s, far slower than any device:"
            " write `10TFLOP/s` or `10GFLOP/s` if you meant that, or `10FLOP/s` to keep 10 FLOP/s",
            ("10TFLOP/s", "10FLOP/s", "1e13"),
        ),
        (
            "link: {latency: {distribution: uniform, low: 5, high: 0.05}}",
            "5",
            "peers.0.link.latency.low: `5` is read as 5 s, far longer than a link's latency:"
            " write `5ms` if you meant that, or `5s` to keep 5 s",
            ("5ms", "0.005"),
        ),
    ],
)
def test_a_bare_number_far_from_what_its_key_means_is_refused(
    key: str, value: str, expected: str, fixes: tuple[str, ...]
) -> None:
    text = MINIMAL.replace("count: 4\n", f"count: 4\n    {key}\n")
    assert errors(text) == [f"s.yaml:8: {expected}"]
    for fix in fixes:  # with its unit, any value passes; a bare one in range passes too
        parse_scenario(text.replace(key, key.replace(f": {value}", f": {fix}")))


def test_bare_latencies_of_events_and_generated_backbones_are_checked_too() -> None:
    assert errors(with_lines("topology: {kind: waxman, nodes: 10, params: {max_latency: 80}}\n")) == [
        "s.yaml:13: topology.params.max_latency: `80` is read as 1.333 min, far longer than a link's"
        " latency: write `80ms` if you meant that, or `80s` to keep 1.333 min"
    ]
    degrade = "events:\n  - {at: 1m, action: degrade, latency: 50, select: {group: servers}}\n"
    assert errors(with_lines(degrade))[0].startswith(
        "s.yaml:14: events.0.latency: `50` is read as 50 s, far longer than a link's latency"
    )
    parse_scenario(with_lines(degrade.replace("50", "50s")))


def test_every_duration_unit_is_documented_and_listed_in_the_error() -> None:
    row = next(line for line in DOC.read_text().splitlines() if line.startswith("| duration |"))
    with pytest.raises(ValueError) as caught:
        parse_duration("5 parsecs")
    listed = str(caught.value).split("(units: ")[1].split(")")[0].replace(" or ", ", ").split(", ")
    assert listed == list(units.DURATION_UNITS)
    for unit in units.DURATION_UNITS:
        assert f"`{unit}`" in row.split("|")[4], unit


def test_drawn_churn_starts_stationary_unless_told() -> None:
    churn = "    churn:\n      session: {distribution: weibull, shape: 0.5, median: 10m}\n"
    churn += "      downtime: {distribution: exponential, mean: 1m}\n      graceful: 20%\n"
    scenario = parse_scenario(MINIMAL.replace("count: 4\n", f"count: 4\n{churn}"))
    assert scenario.peers[0].churn is not None and scenario.peers[0].churn.start == "stationary"
    assert "start: stationary" in dump_resolved(scenario)
    model = scenario.peers[0].churn.model()
    assert (model.start, model.graceful_fraction, model.downtime.mean) == ("stationary", 0.2, 60.0)
    lockstep = MINIMAL.replace("count: 4\n", f"count: 4\n{churn}      start: lockstep\n")
    churned = parse_scenario(lockstep).peers[0].churn
    assert churned is not None and churned.model().start == "lockstep"


def test_invalid_yaml_names_file_and_line() -> None:
    (line,) = errors("name: t\nduration: 5m\npeers:\n  - group: [unclosed\n")
    assert line.startswith("s.yaml:5: invalid YAML: ")
    (line,) = errors("name: t\n  duration: 5m\n")
    assert line.startswith("s.yaml:2: invalid YAML: ")
    assert errors("") == [
        "s.yaml:1: a scenario is a mapping of keys (schema_version, duration, peers...), got an empty file"
    ]
    assert errors("- 1\n")[0].endswith("got a list")


def test_duplicate_keys_are_errors() -> None:
    assert errors(MINIMAL + "duration: 10m\n") == [
        "s.yaml:13: duration: duplicate key `duration` (first at line 3)"
    ]


def test_load_scenario_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "quick.yaml"
    path.write_text(MINIMAL.replace("name: t\n", "").replace("count: 4", "cout: 4"))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert str(caught.value) == f"{path}:6: peers.0.cout: unknown key `cout` (did you mean `count`?)"
    path.write_text(MINIMAL.replace("name: t\n", ""))
    assert load_scenario(path).name == "quick"  # the default name is the file's stem
    with pytest.raises(ScenarioError, match="cannot read the file"):
        load_scenario(tmp_path / "nope.yaml")


# ---- overrides -----------------------------------------------------------------------------------


def test_overrides_reach_the_model() -> None:
    scenario = parse_scenario(
        MINIMAL + "events:\n  - {name: wave, at: 1m, action: crash, select: {group: servers}}\n",
        overrides=[
            "seed=7",
            "peers.0.count=8",
            "peers.trainers.concurrent_batches=3",
            "duration=10m",
            "peers.0.link.uplink={distribution: lognormal, median: 20Mbit/s, sigma: 0.5}",
            "workload.dht.keys=10",  # creates the section
            "events.wave.at=2m",
            "assertions=[dht.get.success_rate >= 0.9]",
        ],
    )
    assert scenario.seed == 7 and scenario.duration == 600 and scenario.events[0].at == 120
    assert scenario.peers[0].count == 8 and scenario.group("trainers").concurrent_batches == 3
    assert (
        scenario.peers[0].link.uplink is not None
        and scenario.peers[0].link.uplink.distribution == "lognormal"
    )
    assert scenario.workload.dht is not None and scenario.workload.dht.keys == 10
    assert scenario.assertions == (Assertion(metric="dht.get.success_rate", op=">=", threshold=0.9),)
    mapping = {"metric": "moe.step.p99", "op": "<=", "threshold": "250ms", "during": "wave"}
    assert Assertion.model_validate(mapping) == Assertion.model_validate("moe.step.p99 <= 0.25 during wave")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("peers.0.cont=8", "--set peers.0.cont=8: peers.0.cont: unknown key `cont` (did you mean `count`?)"),
        ("sed=1", "--set sed=1: sed: unknown key `sed` (did you mean `seed`?)"),
        ("peers.5.count=8", "--set peers.5.count=8: peers.5: `peers` has 2 item(s), numbered from 0"),
        (
            "peers.server.count=8",
            "--set peers.server.count=8: peers.server: no item `server` in `peers`"
            " (an index from 0, or a name) (did you mean `servers`?)",
        ),
        ("seed.x=1", "--set seed.x=1: seed.x: `seed` is `0`, which has no key `x`"),
        ("seed", "--set seed: expected `key.path=value`, like `peers.0.count=8`"),
        ("peers.0.count=0", "--set peers.0.count=0: peers.0.count: must be >= 1, got `0`"),
        (
            "duration=5 parsecs",
            "--set duration=5 parsecs: duration: expected a positive duration like `50ms`",
        ),
    ],
)
def test_bad_overrides_name_the_override(override: str, expected: str) -> None:
    text = MINIMAL.replace("name: t\n", "name: t\nseed: 0\n")
    lines = errors(text, (override,))
    assert len(lines) == 1 and lines[0].startswith(expected), lines


# ---- the resolved dump ---------------------------------------------------------------------------

FULL = """\
schema_version: 1
name: full
description: every section
seed: 3
warmup: 30s
duration: 5m
sample_interval: 5s
topology: {kind: waxman, nodes: 12, params: {alpha: 0.5, max_latency: 80ms}, jitter: 5%, loss: 0.1%,
           backbone_bandwidth: 10Gbit/s, tcp: {handshake: true, retransmit: true}}
peers:
  - group: servers
    role: server
    count: 6
    regions: [0, 1]
    link:
      uplink: {distribution: lognormal, median: 20Mbit/s, sigma: 0.5}
      downlink: 100Mbit/s
      latency: {distribution: uniform, low: 5ms, high: 30ms}
    hardware: {device: {distribution: choice, values: [1TFLOP/s, 10TFLOP/s], weights: [3, 1]}}
    experts: 2
    churn:
      session: {distribution: weibull, shape: 0.55, median: 30m}
      downtime: {distribution: pareto, shape: 1.5, minimum: 5m}
      graceful: 30%
      min_alive: 2
      max_alive: 5
      start: lockstep
  - group: peers
    role: peer
    count: 3
    client_mode: 50%
    concurrent_batches: 2
    hardware: {device: 1TFLOP/s, trainer_device: 200GFLOP/s}
    churn:
      session: {distribution: lognormal, median: 20m, sigma: 1}
      downtime: {distribution: exponential, mean: 10m}
  - {group: dht, role: dht, count: 10, join_at: 1m, churn: {trace: trace.csv}}
events:
  - {name: crash-wave, at: 2m, duration: 30s, action: crash, select: {group: servers, fraction: 25%}}
  - {name: split, at: 3m, action: partition, sides: [{group: servers}, {region: 1}]}
  - {at: 4m, action: heal}
  - {at: 1m, action: degrade, latency: 100ms, loss: 5%, bandwidth: 1Mbit/s, select: {role: peer}}
  - {at: 1m, action: slow_compute, factor: 10, select: {peers: [peers-1]}}
  - {at: 1m, action: misbehave, output: nan, select: {group: servers, count: 2}}
  - {at: 1m, action: freeze, duration: 0.1s, select: {region: 0, role: dht}}
  - {at: 1m, action: leave, select: {group: dht, fraction: 0.1}}
  - {at: 1m, action: restart, select: {group: dht, count: 1}}
  - {at: 1m, action: misbehave, output: slow, delay: 2s, select: {group: servers, count: 1}}
  - {at: 1m, action: hostile, behaviour: store_flood, rate: 50/s, select: {group: dht, count: 1}}
  - {at: 1m, action: store, key: k, ttl: 1m, value_size: 1KiB, select: {group: dht, count: 1}}
  - {at: 1m, action: get, key: k, select: {group: dht, count: 1}}
  - {at: 1m, action: lookup, target: 12345, select: {group: dht, count: 1}}
  - {at: 1m, action: forward, select: {role: peer, count: 1}}
workload:
  dht: {stores_per_second: 2, gets_per_second: 10, lookups_per_second: 2, keys: 100,
        popularity: {distribution: zipf, exponent: 1.1}, ttl: 1h, value_size: 64KiB}
  training:
    model: {hidden_dim: 16, expert: transformer}
    grid: [4, 4]
    k_best: 3
    k_min: 2
    forward_timeout: 2500ms
    backward_timeout: 3s
    batch_size: 8
    optimizer: {name: sgd, lr: 0.01}
    dataset: digits
    batches_in_flight: 0
dht: {k: 16, alpha: 2, replicas: 4, refresh_interval: 1h, republish_interval: 20m, rpc_timeout: 2s}
assertions:
  - dht.get.success_rate >= 99%
  - train.loss.final <= 0.8
  - moe.step.p99 <= 3s during crash-wave
  - peers.alive.servers.min > 1
  - rpc.bytes.per_peer < 64KiB
  - dht.get.max <= 2min
"""


def test_resolved_dump_loads_back_equal(tmp_path: Path) -> None:
    (tmp_path / "trace.csv").write_text("peer,join,leave\ndht-0,0,60\ndht-0,2m,\ndht-3,10s,20s\n")
    scenario = parse_scenario(FULL, filename="full.yaml", base_dir=tmp_path)
    text = dump_resolved(scenario)
    assert "seed: 3" in text and "median: 20 Mbit/s" in text and "latency: 100 ms" in text
    again = parse_scenario(text, filename="resolved.yaml", base_dir=ROOT)  # the trace path is absolute now
    assert again == scenario
    assert dump_resolved(again) == text
    assert again.peers[0].churn is not None and again.peers[0].churn.session is not None
    assert again.workload.training is not None and again.workload.training.forward_timeout == 2.5
    assert str(again.assertions[4]) == "rpc.bytes.per_peer < 65536"
    assert str(again.assertions[5]) == "dht.get.max <= 120s", "a bare 120 would be refused as a slip"


def test_the_full_example_sets_every_key() -> None:
    """So that the round trip above covers every key (except alternatives to keys it uses)."""
    used = set(_keys(yaml.safe_load(FULL)))
    missing = {f"{model.__name__}.{name}" for model, name in _all_fields() if name not in used}
    assert missing == {
        "Topology.path",
        "WeibullTime.scale",
        "Constant.value",
        "Assertion.metric",
        "Assertion.op",
        "Assertion.threshold",
        "Assertion.during",
    }


def _keys(data: object) -> list[str]:
    if isinstance(data, dict):
        return [key for key, value in data.items() for key in [key, *_keys(value)]]
    if isinstance(data, list):
        return [key for item in data for key in _keys(item)]
    return []


# ---- churn traces --------------------------------------------------------------------------------


def test_churn_traces_are_read_and_checked(tmp_path: Path) -> None:
    text = MINIMAL.replace("count: 4\n", "count: 4\n    churn: {trace: t.csv}\n")
    trace = tmp_path / "t.csv"
    trace.write_text("peer,join,leave\nservers-1,2m,\nservers-0,0,90s\nservers-0,100,120\n")
    scenario = parse_scenario(text, filename="s.yaml", base_dir=tmp_path)
    assert read_churn_trace(scenario.peers[0]) == [
        TraceSession("servers-0", 0.0, 90.0),
        TraceSession("servers-0", 100.0, 120.0),
        TraceSession("servers-1", 120.0, None),
    ]
    trace.write_text("peer,join,leave\nservers-9,0,1\nservers-0,5,1\nservers-1,0,\nservers-1,10,20\nx\n")
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, filename="s.yaml", base_dir=tmp_path)
    assert str(caught.value).splitlines() == [
        f"{trace}:2: no peer `servers-9` in group `servers` (servers-0 to -3)",
        f"{trace}:3: leave `1` is not after join `5`",
        f"{trace}:5: `servers-1` joins at 10.0 s, before its session from 0.0 s ended",
        f"{trace}:6: expected 3 columns `peer,join,leave`, got 1",
    ]
    trace.write_text("who,when\n")
    with pytest.raises(
        ScenarioError, match=r"t.csv:1: expected the header `peer,join,leave`, got `who,when`"
    ):
        parse_scenario(text, filename="s.yaml", base_dir=tmp_path)


# ---- shipped scenarios and the key reference -----------------------------------------------------


SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml"))


@pytest.mark.skipif(not SHIPPED, reason="no scenarios/*.yaml yet")
@pytest.mark.parametrize("path", SHIPPED, ids=[path.name for path in SHIPPED])
def test_shipped_scenarios_load_and_round_trip(path: Path) -> None:
    scenario = load_scenario(path)
    assert parse_scenario(dump_resolved(scenario), filename="resolved.yaml") == scenario


def _all_fields() -> list[tuple[type[BaseModel], str]]:
    return [(model, name) for model, _ in REFERENCE for name in model.model_fields]


EVENT_KEYS = frozenset(schema._SelectingEvent.model_fields)
"""Keys every event has (`select`: all but partition and heal), documented once."""

REFERENCE: list[tuple[type[BaseModel], str]] = [
    (Scenario, "(top level)"),
    (schema.Topology, "topology"),
    (schema.TcpEffects, "topology.tcp"),
    (schema.PeerGroup, "peers[]"),
    (schema.Link, "peers[].link"),
    (schema.Hardware, "peers[].hardware"),
    (schema.Churn, "peers[].churn"),
    (distributions.ExponentialTime, "churn time: exponential"),
    (distributions.WeibullTime, "churn time: weibull"),
    (distributions.LogNormalTime, "churn time: lognormal"),
    (distributions.ParetoTime, "churn time: pareto"),
    (distributions.Constant, "peer attribute: constant"),
    (distributions.LogNormal, "peer attribute: lognormal"),
    (distributions.Uniform, "peer attribute: uniform"),
    (distributions.Choice, "peer attribute: choice"),
    (schema._SelectingEvent, "events[]"),
    *((model, f"events[], action: {action}") for action, model in schema.EVENT_ACTIONS.items()),
    (schema.Selector, "events[].select, events[].sides[]"),
    (schema.Workload, "workload"),
    (schema.DHTWorkload, "workload.dht"),
    (distributions.ZipfPopularity, "workload.dht.popularity: zipf"),
    (distributions.UniformPopularity, "workload.dht.popularity: uniform"),
    (schema.TrainingWorkload, "workload.training"),
    (schema.ModelShape, "workload.training.model"),
    (schema.Optimizer, "workload.training.optimizer"),
    (schema.DHTSettings, "dht"),
    (Assertion, "assertions[] (mapping form)"),
]
"""Every model of the format, in the order docs/scenarios.md lists them, and where it sits."""

_UNIT_NAMES = {
    units.parse_duration: "duration",
    units.parse_latency: "duration",
    units.parse_bandwidth: "bandwidth",
    units.parse_link_bandwidth: "bandwidth",
    units.parse_compute: "compute",
    units.parse_device_compute: "compute",
    units.parse_size: "size",
    units.parse_fraction: "fraction",
}


def _describe(tp: Any, metadata: tuple[Any, ...] = ()) -> str:
    """A reader's name for a field's type: `duration`, `bandwidth or distribution`, `list of integer`."""
    for item in metadata:
        if isinstance(item, BeforeValidator):
            func = item.func
            if isinstance(func, partial):
                return f"{_UNIT_NAMES[func.func]} > 0"
            if func in _UNIT_NAMES:
                return _UNIT_NAMES[func]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _describe(args[0], (*args[1:], *metadata))
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        generic = [getattr(m, "__pydantic_generic_metadata__", {}).get("args") for m in members]
        if generic and all(generic):
            return f"{_describe(generic[0][0])} or distribution"
        text = " or ".join(dict.fromkeys(_describe(member) for member in members))
        return f"{text} or null" if len(members) < len(args) else text
    if origin is typing.Literal:
        return " \\| ".join(f"`{arg}`" for arg in args)
    if origin is tuple:
        return f"list of {_describe(args[0])}"
    if isinstance(tp, typing.TypeVar):
        return "the attribute's quantity"
    if tp is Assertion:
        return "string"
    if origin is dict or (isinstance(tp, type) and issubclass(tp, BaseModel)):
        tag = next(
            (key for key in ("distribution", "action") if key in getattr(tp, "model_fields", {})), None
        )
        return f"mapping with `{tag}`" if tag else "mapping"
    return {int: "integer", float: "number", str: "string", Path: "file path"}.get(tp, str(tp))


def _kind(field: Any) -> str:
    kind = _describe(field.annotation, tuple(field.metadata))
    bounds = " ".join(
        f"{sign} {getattr(item, attribute)}"
        for item in field.metadata
        for attribute, sign in (("ge", ">="), ("gt", ">"))
        if getattr(item, attribute, None) is not None
    )
    if not bounds:
        return kind
    base, null, _ = kind.partition(" or null")
    return f"{base} {bounds}{null}"


def _default(field: Any) -> str:
    if field.is_required():
        # a key the loader fills in says so in its docstring (`name`: "default: the file's stem")
        filled = (field.description or "").partition("; default: ")[2]
        return filled.rstrip(".") if filled else "required"
    default = field.default
    if isinstance(default, BaseModel):
        dumped = default.model_dump(mode="json", exclude_none=True)
        return f"`{dumped}`" if not isinstance(dumped, dict) else "defaults below" if dumped else "`{}`"
    if default is None:
        return "null"
    if default == ():
        return "`[]`"
    if default in ({}, ""):
        return "`{}`" if default == {} else '`""`'
    return f"`{TypeAdapter(field.rebuild_annotation()).dump_python(default, mode='json')}`"


def reference_markdown() -> str:
    """The key tables of docs/scenarios.md, generated from the models."""
    out = []
    for model, where in REFERENCE:
        out.append(f"#### `{where}`\n\n{(model.__doc__ or '').strip()}\n")
        shared = {*EVENT_KEYS, "action"} if where.startswith("events[], action") else set()
        rows = [(name, field) for name, field in model.model_fields.items() if name not in shared]
        if model is schema._SelectingEvent:
            rows.insert(0, ("action", schema.CrashEvent.model_fields["action"]))
        if not rows:
            out.append("No keys besides the ones every event has.\n")
            continue
        out.append("| key | type | default | meaning |\n|---|---|---|---|")
        for name, field in rows:
            meaning = " ".join((field.description or "").split()).replace("|", "\\|")
            kind = _kind(field)
            if model is schema._SelectingEvent and name == "action":
                kind, meaning = "one of the actions below", "What happens."
            elif model is schema._SelectingEvent and name == "select":
                meaning = "The peers it acts on (every action but `partition` and `heal`)."
            out.append(f"| `{name}` | {kind} | {_default(field)} | {meaning} |")
        out.append("")
    return "\n".join(out)


BEGIN, END = "<!-- keys: generated by tests/test_scenario_schema.py, do not edit -->", "<!-- keys end -->"


def test_the_docs_worked_example_loads() -> None:
    examples = [
        block for block in DOC.read_text().split("```yaml\n")[1:] if block.startswith("schema_version")
    ]
    assert examples
    for block in examples:
        scenario = parse_scenario(block.split("```")[0], filename="scenarios.md")
        assert scenario.name == "quickstart" and scenario.assertions


def test_the_docs_compare_example_changes_the_scenario() -> None:
    section = DOC.read_text().split("## Comparing two runs")[1]
    run_b = next(line for line in section.splitlines() if "--out runs/b" in line).split()
    overrides = [run_b[i + 1] for i, word in enumerate(run_b) if word == "--set"]
    quickstart = ROOT / "scenarios" / "quickstart.yaml"
    assert overrides and load_scenario(quickstart, overrides) != load_scenario(quickstart)


def test_docs_list_every_key_with_meaning_and_default() -> None:
    doc = DOC.read_text()
    assert BEGIN in doc and END in doc
    generated = doc.split(BEGIN)[1].split(END)[0].strip()
    assert generated == reference_markdown().strip(), "run `python tests/test_scenario_schema.py` to refresh"
    for model, name in _all_fields():
        assert model.model_fields[name].description, f"{model.__name__}.{name} has no docstring"
    assert "../shared" not in doc


if __name__ == "__main__":
    doc = DOC.read_text()
    head, rest = doc.split(BEGIN)
    tail = rest.split(END)[1]
    DOC.write_text(f"{head}{BEGIN}\n\n{reference_markdown().strip()}\n\n{END}{tail}")
    sys.exit(0)
