"""A hypothesis state machine over a ``SwarmDriver`` that leaves a replayable file when it fails.

Subclass ``SwarmMachine``, start the driver in an ``@initialize`` rule (``self.start(scenario)``,
so the scenario itself, its seed and size, can be drawn) and act through ``self.driver``. When
a rule or an invariant raises, ``teardown`` finishes the run, writes the schedule as a scenario
YAML (``replay.write``), and adds the file, the seed, the digest and the YAML itself to the
error's notes, and the ``Replay`` as its ``hivemind_replay`` attribute. Hypothesis reruns the
shrunk example last, so the file left is the shrunk schedule.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar

from hypothesis.errors import HypothesisException
from hypothesis.stateful import RuleBasedStateMachine

from ..scenario.format import schema
from . import replay
from .driver import SwarmDriver


class SwarmMachine(RuleBasedStateMachine):
    """Rules drive ``self.driver``; see the module docstring for what a failure leaves."""

    horizon: ClassVar[float] = 3600.0
    """The longest measured time an example may drive."""
    replay_directory: ClassVar[Path | None] = None
    """Where failing schedules go; None: ``replay.replay_dir()``."""

    def __init__(self) -> None:
        super().__init__()
        self._driver: SwarmDriver | None = None

    def start(self, scenario: schema.Scenario) -> SwarmDriver:
        """Join ``scenario``'s peers (no churn, no continuous workload) and drive them from now on."""
        self._driver = SwarmDriver(scenario, horizon=self.horizon)
        return self._driver

    @property
    def driver(self) -> SwarmDriver:
        if self._driver is None:
            raise RuntimeError("call self.start(scenario) in an @initialize rule first")
        return self._driver

    def teardown(self) -> None:
        error = sys.exc_info()[1]  # teardown runs in hypothesis' `finally`: the failure, if any
        if self._driver is None:
            return
        try:
            if isinstance(error, Exception) and not isinstance(error, HypothesisException):
                self._leave_replay(error)
        finally:
            self._driver.close()

    def _leave_replay(self, error: Exception) -> None:
        failure = f"{type(error).__name__}: {error}".splitlines()[0]
        saved = replay.write(
            self.driver,
            stem=f"{type(self).__name__}-{self.driver.scenario().seed}",
            comment=f"{type(self).__name__} failed: {failure}",
            directory=self.replay_directory,
        )
        error.hivemind_replay = saved  # type: ignore[attr-defined]
        error.add_note(
            f"scenario seed {self.driver.base.seed}; trace digest {saved.digest}\n"
            f"replay: {saved.command()}\n{saved.path.read_text(encoding='utf-8')}"
        )
