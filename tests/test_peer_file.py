"""A real peer described in a scenario's terms: a peer file becomes the hivemind-core command
that runs it, with the same training a scenario's trainers would run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hivemind_core.cli import _training_config, build_parser
from hivemind_sim.deploy.peer_file import SCENARIO_ONLY, PeerFile, core_command, load_peer_file
from hivemind_sim.scenario.format.loader import ScenarioError, parse_model
from hivemind_sim.scenario.format.schema import DHTSettings, PeerGroup, TrainingWorkload

PEER = """\
role: peer
experts: 3
first_expert: 14
concurrent_batches: 2
training:
  model: {hidden_dim: 16, expert: transformer}
  grid: [4, 4]
  k_best: 3
  k_min: 2
  forward_timeout: 500ms
  backward_timeout: 2s
  batch_size: 8
  optimizer: {name: sgd, lr: 0.05}
"""


def parse(text: str) -> PeerFile:
    return parse_model(text, PeerFile, filename="peer.yaml")


def test_a_peer_file_becomes_the_command_of_the_same_peer() -> None:
    peer = parse(PEER)
    assert peer.expert_uids() == ["transformer.3.2", "transformer.3.3", "transformer.0.0"], (
        "row-major, wrapping"
    )
    args = build_parser().parse_args(core_command(peer))
    assert args.command == "peer" and args.experts == peer.expert_uids()
    assert (args.expert_type, args.hidden_dim) == ("transformer", 16)
    config = _training_config(args)
    training = peer.training
    assert training is not None
    assert (config.expert, config.grid, config.hidden_dim) == ("transformer", (4, 4), 16)
    assert (config.k_best, config.k_min, config.batch_size) == (3, 2, 8)
    assert (config.forward_timeout, config.backward_timeout) == (0.5, 2.0)
    assert (config.optimizer, config.lr, config.dataset) == ("sgd", 0.05, "synthetic")
    assert config.batches_in_flight == peer.concurrent_batches == 2


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("role: dht\n", ["dht"]),
        ("role: dht\nclient_mode: true\n", ["dht", "--client-mode"]),
        ("role: dht\ntraining: {grid: [4]}\n", ["dht"]),  # a training section changes nothing for it
        (
            "role: server\nexperts: 2\ntraining: {grid: [4], model: {hidden_dim: 8}}\n",
            ["expert-server", "--experts", "ffn.0", "ffn.1", "--expert-type", "ffn", "--hidden-dim", "8"],
        ),
    ],
)
def test_every_role_has_its_command(text: str, command: list[str]) -> None:
    assert core_command(parse(text)) == command
    build_parser().parse_args(command)  # hivemind-core takes it


def test_the_file_speaks_the_scenarios_terms_and_refuses_the_simulated_networks() -> None:
    """Every peer group key is either a peer file's (the same meaning) or a scenario's alone."""
    group_keys = set(PeerGroup.model_fields)
    file_keys = set(PeerFile.model_fields) - {"first_expert", "training", "dht"}
    assert group_keys == file_keys | set(SCENARIO_ONLY), "a new peer group key needs a place here"
    assert PeerFile.model_fields["training"].annotation == TrainingWorkload | None
    assert PeerFile.model_fields["dht"].annotation == DHTSettings | None  # the scenario's `dht`


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "role: dht\nlink: {latency: 10ms}\n",
            "peer.yaml:2: link: `link` is a scenario's: it models a simulated",
        ),
        ("role: server\n", "peer.yaml:1: training: a `server` needs `training`"),
        ("role: peer\nclient_mode: true\ntraining: {}\n", "client_mode: a `peer` hosts experts"),
        ("role: server\nfirst_expert: 64\ntraining: {}\n", "first_expert: 64 is past the grid's 64 experts"),
        ("role: server\nexpert: 3\ntraining: {}\n", "peer.yaml:2: expert: unknown key `expert`"),
        ("role: seed\n", "peer.yaml:1: role:"),
    ],
)
def test_a_bad_peer_file_names_the_line_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(ScenarioError) as raised:
        parse(text)
    assert message in str(raised.value)


def test_hivemind_sim_peer_prints_or_runs_the_peer(tmp_path: Path) -> None:
    path = tmp_path / "peer.yaml"
    path.write_text(PEER)
    assert load_peer_file(path) == parse(PEER)
    shown = subprocess.run(
        [sys.executable, "-m", "hivemind_sim.cli", "peer", str(path), "--print", "--", "--port", "7000"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("hivemind-core peer --experts transformer.3.2 ")
    assert shown.stdout.strip().endswith("--batches-in-flight 2 --port 7000")
    path.write_text("role: dht\n")
    ran = subprocess.run(
        [sys.executable, "-m", "hivemind_sim.cli", "peer", str(path), "--", "--duration", "0.5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("dht peer ") and "stopped" in ran.stdout
    path.write_text("role: dht\nchurn: {}\n")
    bad = subprocess.run(
        [sys.executable, "-m", "hivemind_sim.cli", "peer", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and f"{path}:2: churn: `churn` is a scenario's" in bad.stderr
