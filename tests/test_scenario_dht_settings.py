"""A scenario's `dht` block: the DHTConfig of every simulated peer, and of every real peer a
deployment starts (as `--dht-*` flags of hivemind-core)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hivemind_core.cli import _dht_config, build_parser, main
from hivemind_core.dht import DHTConfig
from hivemind_sim.deploy.local import DeployOptions, Loopback, _Deployment
from hivemind_sim.deploy.peer_file import PeerFile, core_command
from hivemind_sim.scenario.format.loader import ScenarioError, parse_model, parse_scenario
from hivemind_sim.scenario.format.schema import DHTSettings, Scenario
from hivemind_sim.scenario.format.units import format_duration
from hivemind_sim.scenario.run.runner import RunResult, open_run, run_scenario

IDLE = """\
schema_version: 1
name: idle
seed: 1
warmup: 60s
duration: 12m
sample_interval: 1m
peers:
  - {group: dht, role: dht, count: 48}
workload:
  dht: {stores_per_second: 0, gets_per_second: 0, lookups_per_second: 0.005, keys: 20}
"""
"""48 DHT peers that join in the first minute, then look up an id every 200 s between them: their
buckets go quiet, so bucket refreshes are most of what they send."""


def scenario(text: str, dht: str = "") -> Scenario:
    return parse_scenario(text + (f"dht: {dht}\n" if dht else ""), filename="s.yaml")


def problems(dht: str) -> list[str]:
    with pytest.raises(ScenarioError) as caught:
        scenario(IDLE, dht)
    return [str(problem) for problem in caught.value.problems]


# ---- the format ----------------------------------------------------------------------------------


def test_durations_take_units_and_keys_left_out_keep_the_librarys_defaults() -> None:
    settings = scenario(
        IDLE, "{refresh_interval: 1h, republish_interval: 600s, rpc_timeout: 500ms, k: 8}"
    ).dht
    assert (settings.refresh_interval, settings.republish_interval, settings.rpc_timeout) == (
        3600.0,
        600.0,
        0.5,
    )
    config = settings.config(max_per_subnet=None)
    default = DHTConfig()
    assert (config.k, config.refresh_interval, config.rpc_timeout) == (8, 3600.0, 0.5)
    assert (config.alpha, config.replicas, config.max_per_subnet) == (default.alpha, default.replicas, None)
    assert scenario(IDLE).dht.config(max_per_subnet=None) == DHTConfig(max_per_subnet=None), (
        "no `dht` block: the config every scenario ran before the block existed (same digests)"
    )


def test_the_docstrings_state_the_librarys_defaults() -> None:
    """Each key says what leaving it out means: the library's default, as DHTConfig has it now."""
    default = DHTConfig()
    for key, field in DHTSettings.model_fields.items():
        value = getattr(default, key)
        stated = str(value) if isinstance(value, int) else format_duration(value)
        described = " ".join((field.description or "").split())
        assert described.endswith(f"null: the library's default, {stated}."), (key, described)


@pytest.mark.parametrize(
    ("dht", "expected"),
    [
        ("{kk: 8}", "s.yaml:11: dht.kk: unknown key `kk` (did you mean `k`?)"),
        ("{k: 0}", "s.yaml:11: dht.k: must be >= 1, got `0`"),
        ("{refresh_interval: 0s}", "s.yaml:11: dht.refresh_interval: expected a positive duration"),
        ("{k: 3, replicas: 4}", "s.yaml:11: dht.replicas: replicas (4) cannot exceed k (3)"),
        (
            "{k: 3}",
            "s.yaml:11: dht.k: replicas (5) cannot exceed k (3); `replicas` left out: the library's default",
        ),
    ],
)
def test_a_bad_dht_block_names_the_key(dht: str, expected: str) -> None:
    found = problems(dht)
    assert len(found) == 1 and found[0].startswith(expected), found


# ---- the simulation -----------------------------------------------------------------------------


def test_every_node_of_the_swarm_gets_the_scenarios_settings() -> None:
    small = scenario(IDLE.replace("count: 48", "count: 6"), "{k: 8, alpha: 2}")
    with open_run(small) as run:
        run.sim.run(run.begin())
        configs = {node.config for node in run.peers.swarm.nodes.values()}
    assert len(run.peers.swarm.nodes) == 6
    assert configs == {DHTConfig(k=8, alpha=2, max_per_subnet=None)}


@pytest.fixture(scope="module")
def idle_runs() -> tuple[RunResult, RunResult]:
    """The idle swarm with the library's bucket refresh (10 min) and with Kademlia's hour."""
    return run_scenario(scenario(IDLE)), run_scenario(scenario(IDLE, "{refresh_interval: 1h}"))


def test_an_hourly_refresh_spares_the_messages_of_refreshing_quiet_buckets(
    idle_runs: tuple[RunResult, RunResult],
) -> None:
    """Ten minutes after the joins, every peer refreshes its quiet buckets with the default; with
    `refresh_interval: 1h` none does within the 12-minute window. Same workload, so the same
    lookups: the difference is the refreshes."""
    default, hourly = (run.recorder.summary() for run in idle_runs)
    assert default["dht.lookup.count"] == hourly["dht.lookup.count"] > 0
    assert default["dht.lookup.success_rate"] == hourly["dht.lookup.success_rate"] == 1.0
    assert hourly["rpc.messages.per_peer"] < 0.5 * default["rpc.messages.per_peer"], (default, hourly)


def test_a_dht_block_keeps_the_run_deterministic(idle_runs: tuple[RunResult, RunResult]) -> None:
    again = run_scenario(scenario(IDLE, "{refresh_interval: 1h}"))
    assert again.digest == idle_runs[1].digest != idle_runs[0].digest
    assert again.recorder.summary() == idle_runs[1].recorder.summary()


# ---- real peers ---------------------------------------------------------------------------------


def test_a_peer_files_dht_settings_become_flags_and_the_nodes_config() -> None:
    peer = parse_model(
        "role: dht\ndht: {k: 8, alpha: 2, replicas: 4, refresh_interval: 1h, rpc_timeout: 250ms}\n",
        PeerFile,
        filename="peer.yaml",
    )
    argv = core_command(peer)
    assert argv == [
        "dht",
        "--dht-k", "8",
        "--dht-alpha", "2",
        "--dht-replicas", "4",
        "--dht-refresh-interval", "3600.0",
        "--dht-rpc-timeout", "0.25",
    ]  # fmt: skip
    config = _dht_config(build_parser().parse_args([*argv, "--no-subnet-limit"]))
    expected = DHTConfig(
        k=8, alpha=2, replicas=4, refresh_interval=3600.0, rpc_timeout=0.25, max_per_subnet=None
    )
    assert config == expected
    assert core_command(parse_model("role: dht\n", PeerFile, filename="peer.yaml")) == ["dht"]
    assert _dht_config(build_parser().parse_args(["dht"])) == DHTConfig(), "no flags: the library's defaults"


def test_a_deployed_scenario_starts_every_peer_with_its_dht_settings(tmp_path: Path) -> None:
    small = scenario(IDLE.replace("count: 48", "count: 2"), "{refresh_interval: 1h, k: 10}")
    deployment = _Deployment(small, tmp_path, Loopback(), DeployOptions(emulate_delays=False), None)
    for peer in deployment.peers.values():
        argv = peer._argv([])
        args = build_parser().parse_args(argv[argv.index("hivemind_core.cli") + 1 :])
        assert _dht_config(args) == DHTConfig(k=10, refresh_interval=3600.0, max_per_subnet=None)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dht-k", "0"], "argument --dht-k: must be 1 or more, got 0"),
        (["--dht-alpha", "-2"], "argument --dht-alpha: must be 1 or more, got -2"),
        (
            ["--dht-refresh-interval", "0"],
            "argument --dht-refresh-interval: must be a positive number of seconds",
        ),
        (["--dht-rpc-timeout", "-1"], "argument --dht-rpc-timeout: must be a positive number of seconds"),
        (["--dht-republish-interval", "inf"], "argument --dht-republish-interval: must be a positive number"),
    ],
)
def test_a_bad_dht_flag_is_named_while_parsing(capsys, flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["train", *flags])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--dht-k", "3", "--dht-replicas", "4"],
            "argument --dht-replicas: --dht-replicas (4) cannot exceed --dht-k (3)",
        ),
        (
            ["--dht-k", "3"],
            "argument --dht-k: --dht-replicas (5) cannot exceed --dht-k (3); "
            "--dht-replicas left out: the default",
        ),
    ],
)
def test_flags_the_library_refuses_together_are_named(capsys, flags: list[str], message: str) -> None:
    with pytest.raises(ValueError) as raised:
        _dht_config(build_parser().parse_args(["dht", *flags]))
    assert str(raised.value) == message
    assert main(["dht", *flags, "--duration", "5"]) == 2, "refused before the node starts"
    assert f"hivemind-core: error: {message}" in capsys.readouterr().err
