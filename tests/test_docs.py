"""The README stays true: its example runs, and CI runs exactly its test command."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
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
    assert main_job.endswith("hivemind-sim run scenarios/quickstart.yaml")
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


def documented_scenario_commands() -> list[str]:
    """Every `hivemind-sim run` or `sweep` command shown to users: the README's Scenarios
    section, docs/scenarios.md, and the comments that open the shipped scenarios."""
    section = README.split("\n## Scenarios\n", 1)[1].split("\n## ", 1)[0]
    texts = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    texts += re.findall(r"```bash\n(.*?)```", (ROOT / "docs" / "scenarios.md").read_text(), flags=re.DOTALL)
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        header = [line[1:].strip() for line in path.read_text().splitlines() if line.startswith("#")]
        texts.append("\n".join(header))
    commands = []
    for text in texts:
        for line in text.replace("\\\n", " ").splitlines():
            words = line.split()
            if len(words) > 1 and words[0].endswith("hivemind-sim") and words[1] in ("run", "sweep"):
                commands.append(line.strip())
    return commands


def test_documented_scenario_commands_name_valid_overrides() -> None:
    """Each documented `run` or `sweep` loads with its `--set` values (every point of a sweep):
    running them all would take too long here."""
    from hivemind_sim.scenario.format.loader import load_scenario
    from hivemind_sim.scenario.run.sweep_plan import plan_sweep

    commands = documented_scenario_commands()
    assert len(commands) >= 6, commands
    for command in commands:
        words = shlex.split(command, comments=True)
        path = ROOT / words[2]
        sets = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
        if words[1] == "run":
            load_scenario(path, sets)
        else:
            assert plan_sweep(path, sets, seeds=1), command


def using_it_blocks() -> list[tuple[str, str]]:
    """The (language, code) blocks of the README's "Using it" section, in order."""
    section = README.split("\n## Using it\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(bash|python)\n(.*?)```", section, flags=re.DOTALL)


def test_readme_snippets_run_as_pasted(tmp_path) -> None:
    """Every command and Python snippet of "Using it" runs, in order, as a reader pastes them:
    background peers are started for real (on a free port instead of the README's fixed one, and
    in a scratch folder for their files), and each snippet prints something."""
    blocks = using_it_blocks()
    assert [language for language, _ in blocks].count("python") >= 4
    endpoints: dict[str, str] = {}  # the README's 127.0.0.1:7001 -> where that peer really listens
    peers: list[subprocess.Popen[str]] = []

    def real(text: str) -> str:
        for written, actual in endpoints.items():
            text = text.replace(written, actual)
        return text

    try:
        for language, code in blocks:
            if language == "python":
                run = subprocess.run(
                    [sys.executable, "-c", real(code)],
                    cwd=tmp_path,
                    capture_output=True,
                    text=True,
                    timeout=90,
                )
                assert run.returncode == 0, f"{code}\n{run.stderr}"
                assert run.stdout.strip(), f"this README snippet prints nothing:\n{code}"
                continue
            for line in code.splitlines():
                command = line.split("#", 1)[0].strip()
                if not command.startswith(".venv/bin/hivemind-core "):
                    continue
                argv = [
                    sys.executable,
                    "-m",
                    "hivemind_core.cli",
                    *shlex.split(real(command.rstrip("&")))[1:],
                ]
                if not command.endswith("&"):
                    run = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
                    assert run.returncode == 0, f"{command}\n{run.stdout}{run.stderr}"
                    continue
                port = argv[argv.index("--port") + 1]
                argv[argv.index("--port") + 1] = "0"
                peers.append(subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, text=True))
                first_line = peers[-1].stdout.readline()  # the peer says where it listens once it does
                listening = re.search(r"listening on (\S+)", first_line)
                assert listening, f"{command} printed {first_line!r}"
                endpoints[f"127.0.0.1:{port}"] = listening.group(1)
    finally:
        for peer in peers:
            peer.terminate()
        for peer in peers:
            peer.communicate(timeout=30)
    assert len(peers) == 3 and all(peer.returncode == 0 for peer in peers)
    assert (tmp_path / "peer.key").exists(), "the DHT example saves its identity in peer.key"


def test_files_the_readme_makes_are_ignored_and_docs_link_inside_the_repository() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for path in re.findall(r"--identity (\S+)", README):
        assert path in ignored, f"{path} (written by a README command) is not in .gitignore"
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "../shared" not in text, f"{doc.name} points outside the repository"
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" not in target and not target.startswith("mailto:"):
                assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"


def test_the_scenario_docs_name_every_world_region() -> None:
    from hivemind_sim import Topology

    doc = (ROOT / "docs" / "scenarios.md").read_text()
    for region in Topology.world_regions().nodes:
        assert f"`{region}`" in doc, f"docs/scenarios.md does not name world region {region}"
