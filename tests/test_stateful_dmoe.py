"""Stateful property test of the DMoE layer: random schedules of crashed, frozen, restarted,
partitioned and misbehaving expert servers, with a trainer's forward and backward checked
against the issue's invariants after each one.

- A forward succeeds whenever at least ``k_min`` of the grid's experts live and answer honestly
  (their server untouched by any fault for a ban time before the call and during it).
- A successful forward gives every sample ``k_min`` to ``k_best`` answers, and its output is
  the gate-weighted average of exactly those answers (weights summing to one), finite.
- Every forward ends within its time budget, even with every expert dead, frozen or hostile.

Each example is one virtual-time run (``SwarmDriver``); a failure leaves its shrunk schedule as
a scenario YAML that ``hivemind-sim run`` replays to the same digest (``SwarmMachine``).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule

from hivemind_core.moe.client import MoEClient, MoEConfig
from hivemind_core.moe.client.beam_search import MoEBeamSearcher
from hivemind_sim.scenario.format import schema
from hivemind_sim.strategies import MISBEHAVIOURS
from hivemind_sim.testing import invariants
from hivemind_sim.testing.stateful import SwarmMachine

FORWARD_TIMEOUT = 1.0
BACKWARD_TIMEOUT = 1.0
MAX_SEARCHES: int = MoEConfig.max_searches  # the default
SEARCH_TIMEOUT: float = inspect.signature(MoEBeamSearcher).parameters["lookup_timeout"].default
BAN_TIME: float = inspect.signature(MoEClient).parameters["ban_time"].default
QUIET = BAN_TIME + 5.0
"""An expert counts as honest for a forward only if no fault touched its server for this long
before the call (a failure bans its server for ``BAN_TIME``; a restarted one re-declares)."""

server_index = st.integers(min_value=0, max_value=15)
fault_duration = st.sampled_from([2.0, 10.0, 40.0])


def dmoe_swarm(seed: int, servers: int, experts: int, k_best: int, k_min: int) -> schema.Scenario:
    """Expert servers hosting a 1-D grid exactly, one trainer that only runs scripted forwards,
    and a plain DHT peer, 10 ms from their routers."""
    link = {"latency": "10ms"}
    return schema.Scenario.model_validate(
        {
            "name": "stateful-dmoe",
            "seed": seed,
            "warmup": "30s",
            "duration": "1h",
            "peers": [
                {"group": "servers", "role": "server", "count": servers, "experts": experts, "link": link},
                {"group": "trainers", "role": "trainer", "count": 1, "link": link},
                {"group": "dht", "role": "dht", "count": 1, "link": link},
            ],
            "workload": {
                "training": {
                    "model": {"hidden_dim": 4},
                    "grid": [servers * experts],
                    "k_best": k_best,
                    "k_min": k_min,
                    "batch_size": 4,
                    "forward_timeout": FORWARD_TIMEOUT,
                    "backward_timeout": BACKWARD_TIMEOUT,
                    "batches_in_flight": 0,
                }
            },
        }
    )


def forward_budget(grid_dims: int) -> float:
    """The longest one forward and backward may take: each of the layer's searches fetches every
    grid dimension within ``SEARCH_TIMEOUT`` and waits at most ``FORWARD_TIMEOUT`` for answers;
    the backward waits at most ``BACKWARD_TIMEOUT``."""
    return MAX_SEARCHES * (grid_dims * SEARCH_TIMEOUT + FORWARD_TIMEOUT) + BACKWARD_TIMEOUT


def check_mixture(outcome: Any) -> None:
    """A successful forward: every sample has ``k_min``..``k_best`` answers, weighted by a gate
    that sums to one over exactly those answers, and the output is that weighted average."""
    peer, detail = outcome.peer, outcome.detail
    output = outcome.value
    invariants.check(isinstance(output, torch.Tensor), f"{peer}: a successful forward returned no tensor")
    invariants.check(
        bool(torch.isfinite(output).all()), f"{peer}: a successful forward's output is not finite"
    )
    mask, weights, outputs = detail["mask"], detail["weights"], detail["outputs"]
    k_min, k_best = detail["k_min"], detail["k_best"]
    answered = mask.sum(dim=1)
    invariants.check(
        bool((answered >= k_min).all()),
        f"{peer}: a forward succeeded with {int(answered.min())} answer(s) for a sample, under k_min={k_min}",
    )
    invariants.check(bool((answered <= k_best).all()), f"{peer}: a sample got more than k_best answers")
    invariants.check(
        bool((weights[~mask] == 0).all()), f"{peer}: an expert that did not answer has a gate weight"
    )
    invariants.check(
        torch.allclose(weights.sum(dim=1), torch.ones(len(weights)), atol=1e-5),
        f"{peer}: the gate weights of a sample's answers do not sum to one",
    )
    answers = outputs[mask]
    invariants.check(bool(torch.isfinite(answers).all()), f"{peer}: a forward kept a non-finite answer")
    expected = (weights.reshape(*weights.shape, *[1] * (outputs.dim() - 2)) * outputs).sum(dim=1)
    invariants.check(
        torch.allclose(output, expected, rtol=1e-4, atol=1e-5 * max(1.0, float(expected.abs().max()))),
        f"{peer}: a forward's output is not the gate-weighted average of its answers",
    )


class DMoEMachine(SwarmMachine):
    """The model: when each server was last touched by a fault, and which partitions ran when."""

    horizon = 86400.0

    def __init__(self) -> None:
        super().__init__()
        self.touched: dict[str, float] = {}  # server -> window time until which a fault acts on it

    @initialize(
        seed=st.integers(0, 2**16),
        servers=st.integers(2, 4),
        experts=st.integers(1, 2),
        k_best=st.integers(2, 3),
        k_min=st.integers(1, 3),
    )
    def join(self, seed: int, servers: int, experts: int, k_best: int, k_min: int) -> None:
        k_best = min(k_best, servers * experts)
        self.start(dmoe_swarm(seed, servers, experts, k_best, min(k_min, k_best)))

    # ---- helpers ------------------------------------------------------------------------------------

    @property
    def servers(self) -> list[str]:
        return self.driver.names("servers")

    def pick(self, indices: list[int]) -> list[str]:
        servers = self.servers
        return sorted({servers[index % len(servers)] for index in indices})

    def touch(self, names: list[str], duration: float | None) -> None:
        """A fault acts on ``names`` from now for ``duration`` (None: for the rest of the run)."""
        until = math.inf if duration is None else self.driver.now + duration
        for name in names:
            self.touched[name] = max(self.touched.get(name, -math.inf), until)

    def honest_experts(self, since: float) -> list[str]:
        """Experts whose server no fault touched from ``since`` on (and that is up)."""
        live = set(self.driver.live("servers"))
        return [
            uid
            for name in self.servers
            if name in live and self.touched.get(name, -math.inf) < since
            for uid in self.driver.peers.servers[name].backends
        ]

    # ---- faults on expert servers -------------------------------------------------------------------

    @rule(indices=st.lists(server_index, min_size=1, max_size=4), duration=st.none() | fault_duration)
    def crash(self, indices: list[int], duration: float | None) -> None:
        names = [name for name in self.pick(indices) if name in self.driver.live()]
        if names:
            self.driver.crash(names, duration=duration)
            self.touch(names, duration)

    @rule(indices=st.lists(server_index, min_size=1, max_size=4), duration=fault_duration)
    def freeze(self, indices: list[int], duration: float) -> None:
        names = [name for name in self.pick(indices) if name in self.driver.live()]
        if names:
            self.driver.freeze(names, duration=duration)
            self.touch(names, duration)

    @rule(index=server_index)
    def restart(self, index: int) -> None:
        names = [name for name in self.pick([index]) if name in self.driver.live()]
        if names:
            self.driver.restart(names)
            self.touch(names, 0.0)

    @rule(
        indices=st.lists(server_index, min_size=1, max_size=4),
        output=st.sampled_from(MISBEHAVIOURS),
        duration=fault_duration,
    )
    def misbehave(self, indices: list[int], output: str, duration: float) -> None:
        names = [name for name in self.pick(indices) if name in self.driver.live()]
        if names:
            self.driver.misbehave(
                names, output, duration=duration, **({"delay": 3.0} if output == "slow" else {})
            )
            self.touch(names, duration)

    @rule(indices=st.lists(server_index, min_size=1, max_size=4), duration=fault_duration)
    def partition(self, indices: list[int], duration: float) -> None:
        """Cut some servers off from the trainer and the rest of the swarm."""
        names = self.pick(indices)
        self.driver.partition([names], duration=duration)
        self.touch(names, duration)

    @rule(seconds=st.sampled_from([0.5, 5.0, 20.0, 60.0]))
    def advance(self, seconds: float) -> None:
        self.driver.advance(seconds)

    # ---- the trainer's forward ------------------------------------------------------------------------

    @rule()
    def settle_then_forward(self) -> None:
        """Let every fault that ends run out, and the bans it caused expire, then forward: where
        ``k_min`` experts survived, it must succeed."""
        ends = [until for until in self.touched.values() if until < math.inf]
        self.driver.advance(max([self.driver.now, *ends]) - self.driver.now + QUIET)
        self.forward()

    @rule()
    def forward(self) -> None:
        trainer = self.driver.names("trainers")[0]
        before = self.driver.now
        outcome = self.driver.forward(trainer)
        invariants.check(outcome is not None, f"{trainer}: the trainer is down (nothing here takes it down)")
        took = outcome.ended - outcome.started
        limit = forward_budget(len(self.driver.base.workload.training.grid))
        invariants.check(
            took <= limit + 0.1,
            f"{trainer}: a forward took {took:.3f} simulated s, over its {limit:g} s budget",
        )
        honest = self.honest_experts(since=before - QUIET)
        k_min = outcome.detail["k_min"]
        event("forward: enough honest experts" if len(honest) >= k_min else "forward: too few honest experts")
        event(f"forward: {'succeeded' if outcome.ok else 'failed'}")
        if len(honest) >= k_min:
            invariants.check(
                outcome.ok,
                f"{trainer}: a forward failed although {len(honest)} expert(s) ({', '.join(honest)}) lived"
                f" and answered honestly, k_min={k_min}: {outcome.detail.get('error')}",
            )
        if outcome.ok:
            check_mixture(outcome)


TestDMoE = DMoEMachine.TestCase
TestDMoE.settings = settings(stateful_step_count=max(1, settings.default.stateful_step_count // 4))
"""A quarter of the profile's steps (12 by default, 25 deep): each forward can wait out timeouts and
bans, so shorter schedules keep an example to seconds; the deep profile still runs longer ones."""
