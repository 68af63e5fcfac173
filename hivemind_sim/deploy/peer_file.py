"""A real peer described as a scenario describes a peer group, and the command that runs it.

A peer file holds the keys of one scenario peer group that describe a peer rather than the
simulated network it sits in (`role`, `experts`, `concurrent_batches`, `client_mode`), and the
scenario's `workload.training` and `dht` (the DHT node's settings), validated by the scenario
schema's own models: a group in a scenario and a real peer are written the same way. Where a
scenario decides for the whole swarm, a single peer says it itself: which share of the grid it
hosts (`first_expert`), and whether it is behind NAT (`client_mode` is a yes or no, not a
fraction). Network settings (addresses, initial peers, identity) are the command line's, not
the file's.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Self

from pydantic import Field, model_validator

from hivemind_core.cli import dht_flag
from hivemind_core.moe.uid import grid_share

from ..scenario.format.loader import ScenarioError, parse_model, read_text
from ..scenario.format.schema import DHTSettings, FrozenModel, Role, ScenarioProblems, TrainingWorkload

SCENARIO_ONLY = {
    "group": "it names a group of simulated peers",
    "count": "it says how many simulated peers a group has",
    "regions": "it places simulated peers on the topology",
    "join_at": "it schedules a simulated flash crowd",
    "link": "it models a simulated access link",
    "hardware": "it models a simulated device's speed",
    "churn": "it draws simulated sessions",
}
"""Peer group keys that describe the simulated network or swarm, not a peer."""


class PeerFile(FrozenModel):
    """One real peer; see the module docstring."""

    role: Role
    """`dht`: a plain DHT peer; `server`: hosts experts; `trainer`: trains through a DMoE layer;
    `peer`: hosts experts and trains (as in a scenario's peer group)."""
    experts: int = Field(default=1, ge=1)
    """Grid experts it hosts (roles server and peer), as in a scenario's peer group."""
    first_expert: int = Field(default=0, ge=0)
    """The first of them, counted row-major through the grid (`ffn.0.0` is 0, `ffn.0.1` is 1...):
    a scenario hands out consecutive shares of the grid, a real peer names its own."""
    concurrent_batches: int = Field(default=1, ge=1)
    """Training batches kept in flight (roles trainer and peer), as in a scenario's peer group."""
    client_mode: bool = False
    """Behind NAT: accepts no incoming connections (roles dht and trainer)."""
    training: TrainingWorkload | None = None
    """The scenario's `workload.training`: the model, the grid, and how to train through it."""
    dht: DHTSettings | None = None
    """The scenario's `dht`: its DHT node's settings (`k`, `alpha`, `replicas`, `refresh_interval`,
    `republish_interval`, `rpc_timeout`); null, or a key left out: the library's default."""

    @model_validator(mode="before")
    @classmethod
    def _no_network_keys(cls, data: object) -> object:
        if isinstance(data, dict):
            problems = [
                ((key,), f"`{key}` is a scenario's: {why}; a real peer has its machine's")
                for key, why in SCENARIO_ONLY.items()
                if key in data
            ]
            if problems:
                raise ScenarioProblems(problems)
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = []
        if self.role != "dht" and self.training is None:
            problems.append((("training",), f"a `{self.role}` needs `training` (the model and its grid)"))
        if self.client_mode and self.role in ("server", "peer"):
            problems.append((("client_mode",), f"a `{self.role}` hosts experts, so others must reach it"))
        if self.training is not None and self.role in ("server", "peer"):
            size = math.prod(self.training.grid)
            if self.first_expert >= size:
                problems.append((("first_expert",), f"{self.first_expert} is past the grid's {size} experts"))
        if problems:
            raise ScenarioProblems(problems)
        return self

    def expert_uids(self) -> list[str]:
        """The UIDs it hosts: ``experts`` consecutive ones from ``first_expert``, wrapping round."""
        if self.training is None or self.role not in ("server", "peer"):
            return []
        return grid_share(self.training.model.expert, self.training.grid, self.first_expert, self.experts)


def load_peer_file(path: str | Path) -> PeerFile:
    """Read and validate a peer file; raises ``ScenarioError`` naming each problem's line."""
    return parse_model(read_text(Path(path)), PeerFile, filename=str(path))


COMMANDS = {"dht": "dht", "server": "expert-server", "trainer": "train", "peer": "peer"}


def core_command(peer: PeerFile) -> list[str]:
    """The ``hivemind-core`` arguments that run ``peer`` (network flags to be added)."""
    argv = [COMMANDS[peer.role]]
    training = peer.training
    if training is not None and peer.role in ("server", "peer"):
        argv += ["--experts", *peer.expert_uids(), "--expert-type", training.model.expert]
    if training is not None and peer.role != "dht":  # a DHT peer has no model
        argv += ["--hidden-dim", str(training.model.hidden_dim)]
    if training is not None and peer.role in ("trainer", "peer"):
        grid = "x".join(map(str, training.grid))
        argv += [
            "--grid", f"{training.model.expert}.{grid}",
            "--k-best", str(training.k_best),
            "--k-min", str(training.k_min),
            "--forward-timeout", f"{training.forward_timeout:g}",
            "--backward-timeout", f"{training.backward_timeout:g}",
            "--batch-size", str(training.batch_size),
            "--optimizer", training.optimizer.name,
            "--trainer-lr", repr(training.optimizer.lr),
            "--dataset", training.dataset,
            "--batches-in-flight", str(peer.concurrent_batches),
        ]  # fmt: skip
    for field, value in (peer.dht.given() if peer.dht is not None else {}).items():
        argv += [dht_flag(field), repr(value)]  # repr: a duration's exact seconds
    if peer.client_mode:
        argv.append("--client-mode")
    return argv


__all__ = ["COMMANDS", "PeerFile", "ScenarioError", "core_command", "load_peer_file"]
