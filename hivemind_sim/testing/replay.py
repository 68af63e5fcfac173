"""A driven run as a scenario file: write it, run it again, compare digests.

A property test that fails leaves its (shrunk) schedule as a scenario YAML that
``hivemind-sim run FILE`` replays to the digest the test saw, so a failure found by chance is
a file anyone can rerun, read and trim by hand.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..scenario.format import schema
from ..scenario.format.loader import dump_resolved, load_scenario
from ..scenario.run.runner import run_scenario
from .driver import SwarmDriver

REPLAY_DIR_ENV = "HIVEMIND_REPLAY_DIR"
"""Where failing schedules are written (default ``.hypothesis/replays`` under the working directory)."""


@dataclass(frozen=True)
class Replay:
    """A driven run written as a scenario file, and the trace digest its run gave."""

    path: Path
    digest: str | None
    """None when the run could not be finished (its own failure stopped it)."""

    def command(self) -> str:
        return f"hivemind-sim run {self.path}"


def to_yaml(scenario: schema.Scenario, *, comment: str = "") -> str:
    """The scenario as a file that loads back equal (every default filled in), ``comment`` on top."""
    header = "".join(f"# {line}\n" for line in comment.splitlines())
    return header + dump_resolved(scenario)


def replay_dir() -> Path:
    return Path(os.environ.get(REPLAY_DIR_ENV) or Path(".hypothesis") / "replays")


def write(driver: SwarmDriver, *, stem: str, comment: str = "", directory: Path | None = None) -> Replay:
    """Finish ``driver``'s run if it can be (a failed run cannot) and write its scenario as
    ``<directory>/<stem>.yaml``, the digest in its header."""
    digest: str | None
    try:
        digest = driver.finish()
    except Exception as error:  # the run itself failed: the file replays up to where it stopped
        digest = None
        comment = f"{comment}\nthe run could not be finished: {type(error).__name__}: {error}".strip()
    scenario = driver.scenario()
    lines = [
        comment,
        f"seed {scenario.seed}; replay: hivemind-sim run THIS_FILE",
        f"trace digest: {digest}" if digest else "no digest: the run did not finish",
    ]
    folder = directory if directory is not None else replay_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{_safe(stem)}.yaml"
    path.write_text(to_yaml(scenario, comment="\n".join(line for line in lines if line)), encoding="utf-8")
    return Replay(path, digest)


def run(path: Path | str) -> str:
    """Run a scenario file as ``hivemind-sim run`` does and return its trace digest."""
    return run_scenario(load_scenario(path)).digest


def _safe(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)[:120] or "replay"
