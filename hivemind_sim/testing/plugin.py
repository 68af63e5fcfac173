"""The pytest plugin (entry point ``pytest11: hivemind_sim``): fixtures for simulated swarms.

* ``sim_world``: a fresh virtual-time ``Simulation`` (seed 0), closed after the test;
* ``swarm``: a factory, ``swarm(scenario)`` or ``swarm(peers=8, seed=0)``, returning a joined
  ``SwarmDriver`` that is closed after the test;
* ``--hivemind-replays DIR``: where failing state machines write their schedules (default
  ``.hypothesis/replays`` under the rootdir).

Only pytest is imported here: the plugin loads in every pytest session of an environment that
has hivemind-sim installed, and must not fail where the simulator's extras are missing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--hivemind-replays",
        metavar="DIR",
        default=None,
        help="where failing swarm state machines write their schedules as scenario YAML "
        "(default: .hypothesis/replays under the rootdir)",
    )


def pytest_configure(config: pytest.Config) -> None:
    from .replay import REPLAY_DIR_ENV  # here: the simulator loads only when used

    chosen = config.getoption("--hivemind-replays")
    if chosen is not None or REPLAY_DIR_ENV not in os.environ:
        folder = Path(chosen) if chosen is not None else config.rootpath / ".hypothesis" / "replays"
        os.environ[REPLAY_DIR_ENV] = str(folder.resolve())


@pytest.fixture
def sim_world() -> Iterator[Any]:
    """A fresh simulated world (``hivemind_sim.Simulation``, seed 0), closed after the test."""
    from ..world.simulation import Simulation

    with Simulation(seed=0) as sim:
        yield sim


@pytest.fixture
def swarm() -> Iterator[Callable[..., Any]]:
    """``swarm(scenario=None, *, peers=8, seed=0, horizon=3600.0)``: a joined ``SwarmDriver``
    over ``scenario``, or over a swarm of ``peers`` plain DHT peers; closed after the test."""
    from .driver import SwarmDriver

    drivers: list[SwarmDriver] = []

    def make(scenario: Any = None, *, peers: int = 8, seed: int = 0, horizon: float = 3600.0) -> SwarmDriver:
        driver = SwarmDriver(scenario if scenario is not None else dht_swarm(peers, seed), horizon=horizon)
        drivers.append(driver)
        return driver

    yield make
    for driver in drivers:
        driver.close()


def dht_swarm(peers: int, seed: int = 0) -> Any:
    """A scenario of ``peers`` plain DHT peers with 10 ms links, joined in a 30 s warmup."""
    from ..scenario.format.schema import Scenario

    return Scenario.model_validate(
        {
            "name": "swarm",
            "seed": seed,
            "warmup": "30s",
            "duration": "1h",
            "peers": [{"group": "dht", "role": "dht", "count": peers, "link": {"latency": "10ms"}}],
        }
    )
