"""Mutation check: the DMoE state machine catches a mixture layer that ignores ``k_min``.

The broken layer (monkeypatched for this test only) takes whatever answers came, even none, and
reports success. ``DMoEMachine`` must catch it with the invariant that says so, and the shrunk
example's scenario YAML, written by the machine, must replay (with the same mutation in place)
to the digest the machine saw. Finding and shrinking the failure takes minutes of CPU, so this
runs with ``-m slow`` (``tox -e slow``, ``tox -e deep``), like tests/test_mutations.py.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test
from test_stateful_dmoe import DMoEMachine

from hivemind_core.moe.client import MoEConfig, RemoteMixtureOfExperts
from hivemind_sim.testing import invariants, replay

pytestmark = pytest.mark.slow

HUNT = settings(
    max_examples=100,
    stateful_step_count=8,
    phases=(Phase.generate, Phase.shrink),  # no `explain`: it reruns the failure many times over
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
"""Enough to find the mutation within a few examples; the hunt stops at the first failure and
shrinks it."""


def test_a_mixture_that_ignores_k_min_is_caught_and_its_schedule_replays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init = RemoteMixtureOfExperts.__init__

    def ignoring_k_min(self: RemoteMixtureOfExperts, config: MoEConfig, **options: Any) -> None:
        init(self, config, **options)
        self.config = dataclasses.replace(config, k_min=0)  # any number of answers is enough

    monkeypatch.setattr(RemoteMixtureOfExperts, "__init__", ignoring_k_min)
    monkeypatch.setattr(DMoEMachine, "replay_directory", tmp_path)
    with pytest.raises(
        invariants.InvariantViolation, match=r"answer\(s\) for a sample, under k_min"
    ) as failure:
        run_state_machine_as_test(DMoEMachine, settings=HUNT)
    saved = failure.value.hivemind_replay
    assert saved.digest is not None
    assert "action: forward" in saved.path.read_text(encoding="utf-8")
    assert replay.run(saved.path) == saved.digest
