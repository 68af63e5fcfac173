"""The digits example trains over real TCP even while half of all expert calls fail, and writes
its report where it says, never over the committed reference unless asked."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "digits_dmoe.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("digits_dmoe", EXAMPLE)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # dataclasses look their module up there
    spec.loader.exec_module(example)
    return example


def test_digits_example_converges_with_half_the_expert_calls_failing() -> None:
    curve = load_example().train(0.5, epochs=4, seed=1)
    # which calls fail is random, so accuracy wobbles between epochs (0.84-0.87 at epoch 3 in
    # repeated runs); chance is 0.10 and the full 12-epoch run reaches 0.96
    assert curve.train_loss[-1] < 0.5 * curve.train_loss[0]
    assert max(curve.test_accuracy) >= 0.85 and curve.test_accuracy[-1] >= 0.8, curve.test_accuracy
    assert curve.skipped_steps == 0


def test_digits_example_writes_to_an_ignored_folder_by_default_and_says_where(tmp_path, capsys) -> None:
    example = load_example()
    default = example.build_parser().parse_args([]).out
    assert not default.is_absolute() and "reference" not in default.parts, default
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert f"{default.parts[0]}/" in ignored, f"{default} is not git-ignored"
    assert example.build_parser().parse_args(["--out", str(tmp_path)]).out == tmp_path

    curve = example.Curve(0.1, steps=[10, 20], train_loss=[2.0, 0.5], test_accuracy=[0.5, 0.9])
    summary = example.write_report([curve], epochs=2, out=tmp_path / "report")
    assert summary == {"10%": {"final_test_accuracy": 0.9, "final_train_loss": 0.5, "skipped_steps": 0}}
    written = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert written["runs"] == summary and written["epochs"] == 2
    assert (tmp_path / "report" / "curves.png").stat().st_size > 0
    assert f"wrote {tmp_path / 'report' / 'curves.png'}" in capsys.readouterr().out
