"""`hivemind-sim deploy --local`: a scenario's peers as real processes, with real signals.

The deployment test runs a small scenario end to end (real `hivemind-core` processes on
loopback, a crash by SIGKILL and a freeze by SIGSTOP) and checks what it measured and wrote;
the others check the scaling and one peer process's signals on their own.
"""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hivemind_sim.cli import main as sim_main
from hivemind_sim.deploy.placement import plan_layout
from hivemind_sim.deploy.processes import PeerDown, PeerProcess, core_argv
from hivemind_sim.deploy.scale import scale_scenario
from hivemind_sim.scenario.format.loader import load_scenario, parse_scenario
from hivemind_sim.scenario.run.peers import ScenarioPeers  # noqa: F401  # the simulator's placement

SMALL = textwrap.dedent(
    """\
    schema_version: 1
    name: deploy-small
    seed: 3
    warmup: 1s
    duration: 16s
    sample_interval: 1s
    topology: {kind: world_regions}
    peers:
      - {group: dht, role: dht, count: 2, link: {latency: 5ms}}
      - {group: servers, role: server, count: 2, experts: 4, link: {latency: 5ms}}
      - {group: peers, role: peer, count: 1, experts: 4, link: {latency: 5ms}}
    events:
      - {name: crash-one, at: 2s, duration: 3s, action: crash, select: {group: servers, count: 1}}
      - {name: freeze-one, at: 4s, duration: 4s, action: freeze, select: {group: dht, count: 1}}
      - {name: bad-expert, at: 5s, duration: 2s, action: misbehave, output: nan, select: {group: servers}}
    workload:
      dht: {stores_per_second: 2, gets_per_second: 4, lookups_per_second: 2, keys: 20}
      training:
        model: {hidden_dim: 8, expert: ffn}
        grid: [3, 4]
        k_best: 2
        k_min: 1
        forward_timeout: 1s
        backward_timeout: 2s
        batch_size: 8
        optimizer: {name: adam, lr: 0.01}
    assertions:
      - dht.get.success_rate >= 0.5
      - moe.step.success_rate >= 0.5
      - peers.alive.min >= 4
    """
)


def test_a_small_scenario_deploys_as_real_processes_and_reports_like_a_run(tmp_path: Path) -> None:
    out, metrics = _deploy(tmp_path, SMALL, "--local")
    for name in ("report.md", "timeseries.csv", "events.csv", "scenario.yaml", "alive_peers.png"):
        assert (out / name).exists(), name
    summary = metrics["summary"]
    # the trainer trained through the servers' experts and reported every step
    assert summary["moe.step.count"] >= 5
    assert summary["moe.expert_call.count"] > summary["moe.step.count"]
    assert summary["train.loss.first"] == summary["train.loss.first"]  # a number, not NaN
    # the DHT workload ran on the real peers and lookups were judged against the live peers
    assert summary["dht.store.count"] >= 5 and summary["dht.get.count"] >= 5
    assert 0 <= summary["dht.lookup.overlap.mean"] <= 1
    assert summary["dht.lookup.hops.mean"] >= 1
    # the topology's delays were added to every message: a round trip crosses 4 links of 5 ms
    assert summary["dht.lookup.p50"] >= 0.020 and summary["moe.expert_call.p90"] >= 0.020
    # the crash was a SIGKILL: one peer fewer while it lasted, back afterwards
    assert metrics["during"]["crash-one"]["peers.alive.min"] == 4
    assert summary["peers.alive.final"] == 5
    assert summary["peers.errors.total"] == 0
    crashed_logs = [(out / "peers" / f"servers-{i}.log").read_text() for i in range(2)]
    assert sum("--- start 2" in log for log in crashed_logs) == 1  # restarted with its identity
    assert sum("--- exit -9" in log for log in crashed_logs) == 1  # killed, not stopped
    # what a deployment cannot do is said, not silently dropped; the rest is a run's report
    assert any("bad-expert" in note and "skipped" in note for note in metrics["deployment"])
    assert not any("loss and jitter" in note for note in metrics["deployment"])  # SMALL has none
    assert [w["name"] for w in metrics["windows"]] == ["crash-one", "freeze-one"]
    assert metrics["digest"] == ""
    assert "## Deployment" in (out / "report.md").read_text()


def _deploy(tmp_path: Path, scenario: str, where: str) -> tuple[Path, dict]:
    """Deploy ``scenario`` (YAML text) with ``hivemind-sim deploy``; its report folder and metrics."""
    scenario_file = tmp_path / "scenario.yaml"
    scenario_file.write_text(scenario)
    out = tmp_path / "report"
    status = sim_main(["deploy", str(scenario_file), where, "--out", str(out), "--quiet"])
    assert status == 0, (out / "report.md").read_text()
    return out, json.loads((out / "metrics.json").read_text())


def test_scaling_keeps_every_group_and_scales_what_counts_peers() -> None:
    scenario = load_scenario("scenarios/quickstart.yaml")
    scaled, notes = scale_scenario(scenario, 6)
    assert scaled.total_peers == 6
    assert {g.group: g.count for g in scaled.peers} == {"peers": 2, "servers": 1, "dht": 3}
    peers = next(g for g in scaled.peers if g.group == "peers")
    assert peers.churn is not None and peers.churn.min_alive == 1  # 3 of 6 -> 1 of 2
    alive = next(a for a in scaled.assertions if a.metric == "peers.alive.min")
    assert alive.threshold == 4  # 16 of 24 -> 4 of 6
    assert any("24 peers scaled to 6" in note for note in notes)
    assert scale_scenario(scenario, 100) == (scenario, [])
    with pytest.raises(ValueError, match="--max-peers 2 is fewer than the scenario's 3 peer groups"):
        scale_scenario(scenario, 2)


def test_real_peers_sit_where_the_simulator_places_them() -> None:
    scenario = parse_scenario(SMALL)

    class Loop:
        name = "local"

        def host(self, peer: str) -> str:
            return "127.0.0.1"

    layout = plan_layout(scenario, Loop())
    assert layout.names == ["dht-0", "dht-1", "servers-0", "servers-1", "peers-0"]
    hosted = [uid for name in ("servers-0", "servers-1", "peers-0") for uid in layout.hosted[name]]
    assert sorted(hosted) == sorted(f"ffn.{i}.{j}" for i in range(3) for j in range(4))  # the whole grid
    assert len(set(layout.ports.values())) == 5  # one port each on the shared host
    a, b = "dht-0", "servers-1"
    regions = layout.placements[a].region, layout.placements[b].region
    assert layout.latency[a, b] == layout.latency[b, a] >= 0.010  # both access links at least
    delays = layout.delays_from(a)
    assert delays["endpoints"][layout.endpoint(b)] == layout.latency[a, b]
    assert layout.endpoint(a) not in delays["endpoints"]
    assert regions[0] is not None


@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_a_frozen_peer_answers_nothing_until_it_is_thawed(tmp_path: Path) -> None:
    records: list[dict] = []
    exits: list[int] = []
    peer = PeerProcess(
        "dht-0",
        lambda initial: core_argv("dht", "--operator", *initial),
        log_path=tmp_path / "dht-0.log",
        on_record=lambda name, record: records.append(record),
        on_exit=lambda name, code: exits.append(code),
    )
    await peer.start([], timeout=60)
    assert peer.up and peer.endpoint is not None
    assert (await peer.ask({"op": "get", "key": "nothing"}))["ok"] is False
    peer.freeze()
    await _until_state(peer, "T")  # stopped by the signal
    reply = asyncio.ensure_future(peer.ask({"op": "store", "key": "k", "size": 3, "ttl": 60}))
    done, _ = await asyncio.wait([reply], timeout=0.5)
    assert not done  # a stopped process reads nothing
    peer.thaw()
    assert (await asyncio.wait_for(reply, 30))["ok"] is True
    peer.kill()
    await peer.wait(10)
    assert not peer.up and exits == []  # a kill the deployer asked for is no peer error
    with pytest.raises(PeerDown):
        await peer.ask({"op": "get", "key": "k"})


async def _until_state(peer: PeerProcess, state: str) -> None:
    """Wait (bounded) until the kernel reports the peer's process in ``state``."""
    assert peer.process is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stat = Path(f"/proc/{peer.process.pid}/stat").read_text()
        if stat.rpartition(")")[2].split()[0] == state:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{peer.name} never reached state {state}")


BAD_EXPERT = (
    "{name: bad-expert, at: 5s, duration: 2s, action: misbehave, output: nan, select: {group: servers}}"
)
NETNS = SMALL.replace("name: deploy-small", "name: deploy-netns").replace(
    BAD_EXPERT, "{name: cut, at: 9s, duration: 4s, action: partition, sides: [{group: servers}]}"
)
assert "name: cut" in NETNS


def test_deploy_netns_puts_each_peer_in_a_namespace_and_partitions_real_links(tmp_path: Path) -> None:
    from hivemind_sim.deploy.netns import netns_unavailable

    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"--netns: {reason}")
    out, metrics = _deploy(tmp_path, NETNS, "--netns")
    # every peer listened on, and announced, an address of its own namespace, not loopback
    for name in ("dht-0", "servers-1", "peers-0"):
        log = (out / "peers" / f"{name}.log").read_text()
        assert "listening on 10.77." in log and "127.0.0.1" not in log, log
    # the partition cut the servers' links: the trainer's calls to their experts failed then
    during = metrics["during"]["cut"]
    assert during["moe.expert_failures.total"] > 0
    assert not any("cut" in note and "skipped" in note for note in metrics["deployment"])
    assert metrics["summary"]["moe.step.count"] >= 5
    assert metrics["during"]["crash-one"]["peers.alive.min"] == 4


def test_bringing_back_a_peer_that_is_up_leaves_it_running(tmp_path: Path) -> None:
    """A crash's end and a churn return may both bring a peer back: the second finds it up."""
    from hivemind_sim.deploy.local import DeployOptions, Loopback, _Deployment

    scenario = parse_scenario(SMALL).model_copy(update={"events": ()})
    deployment = _Deployment(scenario, tmp_path, Loopback(), DeployOptions(emulate_delays=False), None)
    peer = deployment.peers["dht-0"]

    async def bring_back_twice() -> None:
        await peer.start([], timeout=60)
        pid = peer.process.pid if peer.process else None
        await asyncio.gather(deployment._come_back("dht-0"), deployment._come_back("dht-0"))
        assert peer.up and peer.process is not None and peer.process.pid == pid and peer.starts == 1
        deployment._leave("dht-0", graceful=False)
        assert peer.leaving
        await asyncio.gather(deployment._come_back("dht-0"), deployment._come_back("dht-0"))
        assert peer.up and peer.starts == 2  # started again once, not twice
        peer.terminate()
        await peer.wait(10)

    asyncio.run(bring_back_twice())


@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_a_peer_stops_when_the_process_driving_it_goes(tmp_path: Path) -> None:
    """Its stdin closes when the deployer ends (even killed): the peer stops, no orphan."""
    exits: list[int] = []
    peer = PeerProcess(
        "dht-0",
        lambda initial: core_argv("dht", "--operator"),
        log_path=tmp_path / "dht-0.log",
        on_record=lambda name, record: None,
        on_exit=lambda name, code: exits.append(code),
    )
    await peer.start([], timeout=60)
    assert peer.process is not None and peer.process.stdin is not None
    peer.process.stdin.close()
    await asyncio.wait_for(peer.process.wait(), 30)
    await peer.wait(1)
    assert exits == [0]  # a clean stop, as on SIGTERM
    assert "stopped" in (tmp_path / "dht-0.log").read_text()


CHURN = textwrap.dedent(
    """\
    schema_version: 1
    name: deploy-churn
    seed: 5
    warmup: 1s
    duration: 12s
    sample_interval: 1s
    topology: {kind: world_regions}
    peers:
      - group: dht
        role: dht
        count: 5
        link: {latency: 5ms}
        churn:
          session: {distribution: exponential, mean: 3s}
          downtime: {distribution: exponential, mean: 1s}
          graceful: 50%
          min_alive: 2
    workload:
      dht: {stores_per_second: 2, gets_per_second: 4, lookups_per_second: 2, keys: 20}
    """
)


def test_churn_takes_real_peers_down_and_back_with_their_identity(tmp_path: Path) -> None:
    out, metrics = _deploy(tmp_path, CHURN, "--local")
    summary = metrics["summary"]
    logs = [(out / "peers" / f"dht-{i}.log").read_text() for i in range(5)]
    assert summary["peers.alive.min"] >= 2  # min_alive held
    assert summary["peers.alive.min"] < 5 and summary["peers.errors.total"] == 0
    assert sum(log.count("--- start") for log in logs) > 5  # peers came back
    assert any("--- exit -9" in log for log in logs)  # crashes were SIGKILLs...
    assert any(
        "--- exit 0" in log.split("--- start 2")[0] for log in logs if "--- start 2" in log
    )  # ...and leaves SIGTERMs
    for log in logs:  # a peer that came back kept its identity
        ids = {line.split()[2] for line in log.splitlines() if line.startswith("dht peer ")}
        assert len(ids) == 1, ids
    assert summary["dht.get.count"] >= 5 and summary["dht.get.success_rate"] > 0


def test_what_a_deployment_cannot_model_is_said_in_its_notes(tmp_path: Path) -> None:
    from hivemind_sim.deploy.local import DeployOptions, Loopback, _Deployment

    lossy = parse_scenario(SMALL.replace("link: {latency: 5ms}", "link: {latency: 5ms, loss: 1%}", 1))
    deployment = _Deployment(lossy, tmp_path, Loopback(), DeployOptions(), None)
    assert any("loss and jitter are not applied" in note for note in deployment.notes)
    assert any("not rate-limited on loopback" in note for note in deployment.notes)


def test_deploy_netns_says_in_one_line_why_it_cannot_run_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import hivemind_sim.deploy.netns as netns

    why = "network namespaces are not permitted here: unshare failed (Operation not permitted)"
    monkeypatch.setattr(netns, "netns_unavailable", lambda: why)
    scenario_file = tmp_path / "small.yaml"
    scenario_file.write_text(SMALL)
    status = sim_main(["deploy", str(scenario_file), "--netns", "--out", str(tmp_path / "out")])
    assert status == 2
    assert capsys.readouterr().err.strip() == f"hivemind-sim: --netns: {why}"
    assert not (tmp_path / "out").exists()  # nothing started, nothing written


def test_deploy_names_the_flag_when_the_cap_is_below_one_peer_per_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario_file = tmp_path / "small.yaml"
    scenario_file.write_text(SMALL)
    status = sim_main(["deploy", str(scenario_file), "--local", "--max-peers", "2"])
    assert status == 2
    assert "--max-peers 2 is fewer than the scenario's 3 peer groups" in capsys.readouterr().err


def test_fidelity_simulates_and_deploys_each_seed_and_reports_both(tmp_path: Path) -> None:
    scenario_file = tmp_path / "dht.yaml"
    scenario_file.write_text(
        CHURN.replace("name: deploy-churn", "name: fidelity-small").split("    churn:")[0]
        + "workload:\n  dht: {stores_per_second: 2, gets_per_second: 4, lookups_per_second: 4, keys: 20}\n"
    )
    out = tmp_path / "fidelity"
    status = sim_main(
        ["fidelity", str(scenario_file), "--seeds", "2", "--set", "duration=6s", "--out", str(out), "--quiet"]
    )
    assert status in (0, 1)  # judged either way on so short a window; what matters is what ran
    report = json.loads((out / "fidelity.json").read_text())
    assert report["seeds"] == [5, 6]
    for world in ("simulated", "deployed"):
        for seed in (5, 6):
            metrics = json.loads((out / world / str(seed) / "metrics.json").read_text())
            assert metrics["seed"] == seed and metrics["summary"]["dht.lookup.count"] > 0
            assert ("deployment" in metrics) == (world == "deployed")
    assert "dht.lookup.p50" in (out / "fidelity.md").read_text()


def test_a_peer_that_sends_records_it_should_not_is_still_read(tmp_path: Path) -> None:
    """Malformed records are logged and skipped: the deployer keeps reading that peer's output."""
    script = tmp_path / "liar.py"
    script.write_text(
        "import sys\n"
        "for line in ['@hm not json', '@hm [1, 2]', '@hm {\"event\": \"moe.step\"}', '@hm {\"ready\": 3}',\n"
        '             \'@hm {"ready": {"endpoint": "127.0.0.1:1", "node_id": "ff"}}\']:\n'
        "    print(line, flush=True)\n"
        "sys.stdin.readline()\n"
    )
    seen: list[dict] = []
    peer = PeerProcess(
        "liar",
        lambda initial: [sys.executable, str(script)],
        log_path=tmp_path / "liar.log",
        on_record=lambda name, record: seen.append(record) if record["latency"] else None,
        on_exit=lambda name, code: None,
    )

    async def start_and_stop() -> None:
        await peer.start([], timeout=30)  # the ready record after the bad ones still arrives
        assert peer.node_id == 0xFF
        peer.terminate()
        await peer.wait(10)

    asyncio.run(start_and_stop())
    assert seen == []
