"""The swarm driver: a driven schedule written as a scenario file replays to the same digest."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule, run_state_machine_as_test

from hivemind_sim.scenario.format import schema
from hivemind_sim.scenario.format.loader import load_scenario
from hivemind_sim.scenario.run.runner import run_scenario
from hivemind_sim.testing import invariants, replay
from hivemind_sim.testing.driver import SwarmDriver
from hivemind_sim.testing.stateful import SwarmMachine

pytest_plugins = ["pytester"]


def swarm(peers: int = 8, **extra: object) -> schema.Scenario:
    return schema.Scenario.model_validate(
        {
            "name": "driven",
            "seed": 3,
            "warmup": "30s",
            "duration": "1h",
            "peers": [{"group": "dht", "role": "dht", "count": peers, "link": {"latency": "10ms"}}],
            **extra,
        }
    )


def drive(driver: SwarmDriver) -> None:
    """Every kind of DHT event, overlapping faults, and operations while they last."""
    assert driver.store("dht-0", "alpha").ok
    driver.crash(["dht-1"], duration=5)
    driver.advance(0.3)
    driver.freeze(["dht-2", "dht-3"], duration=7)
    assert driver.get("dht-4", "alpha").ok
    driver.partition([["dht-4", "dht-5"]], duration=3)
    driver.lookup("dht-6")
    driver.degrade(["dht-7"], latency="80ms", loss="20%", duration=10)
    driver.hostile(["dht-5"], "junk_contacts", duration=20)
    driver.hostile(["dht-6"], "store_flood", rate="50/s", duration=4)
    driver.advance(12)
    driver.leave(["dht-1"])
    driver.restart(["dht-0"])
    driver.store("dht-2", "beta", ttl=60)
    driver.heal()
    driver.lookup("dht-3", target=12345)


def test_a_driven_run_replays_from_its_scenario_file_to_the_same_digest(tmp_path: Path) -> None:
    with SwarmDriver(swarm()) as driver:
        drive(driver)
        digest = driver.finish()
        saved = replay.write(driver, stem="driven", directory=tmp_path)
        applied = driver.events()
    assert saved.digest == digest
    scenario = load_scenario(saved.path)
    assert len(scenario.events) == len(applied) == 14
    assert scenario.events == tuple(applied)
    assert run_scenario(scenario).digest == digest
    assert "trace digest: " + digest in saved.path.read_text()


def test_the_same_schedule_gives_the_same_digest_and_another_seed_another() -> None:
    digests = []
    for seed in (3, 3, 4):
        with SwarmDriver(swarm().model_copy(update={"seed": seed})) as driver:
            drive(driver)
            digests.append(driver.finish())
    assert digests[0] == digests[1] != digests[2]


def test_a_peer_two_partition_sides_select_stays_on_the_first() -> None:
    """Sides may overlap (selectors drawn at random do): the first side keeps a shared peer,
    the run goes on, and everyone no side selects forms one more side."""
    with SwarmDriver(swarm(peers=5)) as driver:
        driver.partition([["dht-0", "dht-1"], ["dht-1", "dht-2"]], duration=5)
        cut = driver.sim.network.cut
        assert not cut("dht-0", "dht-1") and cut("dht-1", "dht-2") and cut("dht-0", "dht-2")
        assert not cut("dht-3", "dht-4") and cut("dht-3", "dht-0") and cut("dht-3", "dht-2")
        driver.advance(6)
        assert not cut("dht-1", "dht-2")
        invariants.all_of(driver)


def test_outcomes_and_state_are_there_to_check() -> None:
    with SwarmDriver(swarm(peers=6)) as driver:
        assert driver.now == 0.0 and driver.live() == driver.names() == [f"dht-{i}" for i in range(6)]
        stored = driver.store("dht-0", "alpha", ttl=60)
        assert stored.ok and stored.ended >= stored.started
        assert invariants.holders(driver, "alpha")
        driver.crash(["dht-1"])
        assert "dht-1" not in driver.live()
        lookup = driver.lookup("dht-2")
        invariants.within_budget(lookup, driver.swarm.config)
        invariants.all_of(driver)
        with pytest.raises(KeyError):
            driver.node("dht-1")
        driver.advance(61)
        got = driver.get("dht-3", "alpha")
        assert not got.ok  # expired
        assert driver.now >= 61


def test_the_driver_refuses_what_would_not_replay_and_what_cannot_happen() -> None:
    churning = swarm().model_dump(mode="json")
    exponential = {"distribution": "exponential"}
    churning["peers"][0]["churn"] = {
        "session": {**exponential, "mean": "10m"},
        "downtime": {**exponential, "mean": "1m"},
    }
    with pytest.raises(ValueError, match="cannot be driven: group dht has churn"):
        SwarmDriver(schema.Scenario.model_validate(churning))
    with SwarmDriver(swarm(peers=4), horizon=60) as driver:
        with pytest.raises(ValueError, match="cannot go back"):
            driver.advance(-1)
        with pytest.raises(ValueError, match="horizon is 60"):
            driver.advance(61)
        driver.finish()
        with pytest.raises(RuntimeError, match="finished"):
            driver.crash(["dht-0"])
        assert driver.scenario().duration == driver.now > 0


class _FailsAfterACrash(SwarmMachine):
    """Fails on purpose once a peer was crashed and a lookup ran: shrinks to those two steps."""

    @initialize()
    def join(self) -> None:
        self.start(swarm(peers=5))
        self.crashed = False

    @rule(index=st.integers(0, 4))
    def crash(self, index: int) -> None:
        self.driver.crash([f"dht-{index}"], duration=10)
        self.crashed = True

    @rule()
    def lookup(self) -> None:
        self.driver.lookup(self.driver.live()[0])
        invariants.check(not self.crashed, "a lookup after a crash (on purpose)")


def test_a_failing_machine_leaves_its_shrunk_schedule_as_a_file_that_replays(tmp_path: Path) -> None:
    _FailsAfterACrash.replay_directory = tmp_path
    try:
        with pytest.raises(invariants.InvariantViolation) as caught:
            run_state_machine_as_test(_FailsAfterACrash, settings=settings(max_examples=50, database=None))
    finally:
        _FailsAfterACrash.replay_directory = None
    saved = caught.value.hivemind_replay
    assert saved.path.parent == tmp_path and saved.digest
    notes = "\n".join(caught.value.__notes__)
    assert f"replay: hivemind-sim run {saved.path}" in notes and "seed 3" in notes
    scenario = load_scenario(saved.path)
    assert [event.action for event in scenario.events] == ["crash", "lookup"]  # shrunk
    assert replay.run(saved.path) == saved.digest


# ---- the pytest plugin and the documented example --------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
SIM_EXTRA = ("simpy", "networkx", "rich", "matplotlib", "pydantic", "yaml")


def test_the_plugin_is_registered_and_loads_without_the_simulator() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"hivemind_sim": "hivemind_sim.testing.plugin"}
    block = "".join(f"sys.modules[{name!r}] = None\n" for name in SIM_EXTRA)
    code = f"import sys\n{block}import hivemind_sim.testing.plugin\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_documented_example_runs_with_the_plugin(pytester: pytest.Pytester) -> None:
    text = (ROOT / "docs" / "property-testing.md").read_text()
    [example] = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    pytester.makepyfile(test_documented=example)
    replays = pytester.path / "replays"
    plugin = ["-p", "no:hivemind_sim", "-p", "hivemind_sim.testing.plugin"]  # installed or not
    result = pytester.runpytest_subprocess(*plugin, "-p", "no:cacheprovider", f"--hivemind-replays={replays}")
    result.assert_outcomes(passed=2)
