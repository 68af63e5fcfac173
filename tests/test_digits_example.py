"""The digits example trains over real TCP even while half of all expert calls fail."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "digits_dmoe.py"


def test_digits_example_converges_with_half_the_expert_calls_failing() -> None:
    spec = importlib.util.spec_from_file_location("digits_dmoe", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # dataclasses look their module up there
    spec.loader.exec_module(example)
    curve = example.train(0.5, epochs=4, seed=1)
    # which calls fail is random, so accuracy wobbles between epochs (0.84-0.87 at epoch 3 in
    # repeated runs); chance is 0.10 and the full 12-epoch run reaches 0.96
    assert curve.train_loss[-1] < 0.5 * curve.train_loss[0]
    assert max(curve.test_accuracy) >= 0.85 and curve.test_accuracy[-1] >= 0.8, curve.test_accuracy
    assert curve.skipped_steps == 0
