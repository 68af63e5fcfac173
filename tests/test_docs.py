"""The README stays true: its example runs, and CI runs exactly its test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second() -> None:
    first_block = code_blocks("bash")[0]
    commands = [line for line in first_block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    main_job, tests = commands
    assert main_job.endswith("hivemind-sim demo")
    assert tests.endswith("python -m pytest")
    ci_commands = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line and not line.startswith("#") and not line.startswith(("set ", "cd "))
    ]
    assert ci_commands == [tests]


def test_readme_simulation_example_runs(capsys) -> None:
    example = next(block for block in code_blocks("python") if "Simulation(" in block)
    exec(compile(example, "README.md", "exec"), {})
    assert capsys.readouterr().out.startswith("b'hello' at t=0.240s virtual")
