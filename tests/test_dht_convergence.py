"""After faults end, DHT lookups find the true nearest live peers again.

The stateful convergence check (``tests/test_stateful_dht.py``, ``ConvergenceMachine``) caught
lookups missing live peers a full refresh period after the last fault. The DHT was not at
fault: two overlapping degrades of one peer left its link degraded for good (each undo set back
the link it saw when it began, so the later one to end restored the other's damage), and a
contact behind a lossy link fails RPCs. These runs replay that in virtual time.
"""

from __future__ import annotations

import pytest

from hivemind_sim.scenario.format import schema
from hivemind_sim.testing import invariants
from hivemind_sim.testing.driver import SwarmDriver

TARGETS = (0, 2**159, 2**160 - 1, 0x5555 << 144, 0xAAAA << 144, 0x1234 << 144)


def swarm(peers: int, seed: int) -> schema.Scenario:
    return schema.Scenario.model_validate(
        {
            "name": "convergence",
            "seed": seed,
            "warmup": "30s",
            "duration": "1h",
            "peers": [{"group": "dht", "role": "dht", "count": peers, "link": {"latency": "10ms"}}],
        }
    )


@pytest.mark.parametrize("second_lasts", [1.0, 6.0], ids=["later-ends-first", "later-ends-last"])
def test_overlapping_degrades_leave_the_link_whole_in_whichever_order_they_end(second_lasts: float) -> None:
    with SwarmDriver(swarm(3, seed=1)) as driver:
        own = driver.sim.network.link("dht-0")
        driver.degrade(["dht-0"], duration=4, latency="50ms", loss="50%")
        driver.advance(1)
        driver.degrade(["dht-0"], duration=second_lasts, latency="20ms", loss="10%")
        both = driver.sim.network.link("dht-0")
        assert both.loss == pytest.approx(0.55) and both.latency == pytest.approx(own.latency + 0.07)
        driver.advance(min(second_lasts, 3.0) + 0.01)  # one of them is over, the other is not
        survivor = driver.sim.network.link("dht-0")
        assert survivor.loss == pytest.approx(0.5 if second_lasts < 3.0 else 0.1)
        driver.advance(6)
        assert driver.sim.network.link("dht-0") == own


def test_lookups_find_the_true_nearest_a_refresh_period_after_overlapping_degrades() -> None:
    """The shrunk finding (seed 636, six peers): a degraded peer's lookups a refresh period
    after its degrades ended missed two of its five live neighbours."""
    with SwarmDriver(swarm(6, seed=636)) as driver:
        driver.degrade(["dht-0"], duration=2, latency="50ms", loss="50%")
        driver.degrade(["dht-0"], duration=2, latency="50ms", loss="10%")
        config = driver.swarm.config
        driver.advance(2 + config.unresponsive_time + config.refresh_interval)
        for target in TARGETS:
            outcome = driver.lookup("dht-0", target)
            invariants.within_budget(outcome, config)
            invariants.lookup_exact(outcome)


@pytest.mark.parametrize("order", ["later-ends-first", "later-ends-last"])
def test_a_peer_whose_overlapping_lies_ended_answers_honestly(order: str) -> None:
    """Two lying behaviours wrapping the same handlers: whichever ends first, neither outlives
    its duration (the later one's undo used to put back the earlier one's lying handlers)."""
    with SwarmDriver(swarm(8, seed=2)) as driver:
        driver.hostile(["dht-0"], "phantom_values", duration=4)
        driver.advance(1)
        driver.hostile(["dht-0"], "phantom_values", duration=1 if order == "later-ends-first" else 10)
        driver.advance(12 + driver.swarm.config.unresponsive_time)
        stored = driver.store("dht-1", "alpha", ttl=600)
        assert stored.ok
        for reader in driver.names()[1:]:
            found = driver.get(reader, "alpha")
            assert found.ok and found.value == stored.value, f"{reader} read {found.value!r}"


@pytest.mark.parametrize("side", [["dht-0"], ["dht-0", "dht-1"]], ids=["one-peer-alone", "two-peers-apart"])
def test_both_sides_of_a_healed_partition_find_each_other_again(side: list[str]) -> None:
    """Each side forgets the other as its RPCs fail (a lone peer, with no initial peers, its
    whole table); after the heal, lookups on both sides find every live peer again within a
    refresh period (the forgotten contacts are tried again)."""
    with SwarmDriver(swarm(6, seed=3128)) as driver:
        driver.partition([side], duration=40)
        for name, target in zip(driver.names(), TARGETS, strict=True):
            driver.lookup(name, target)  # both sides find out the others do not answer
        assert side[0] not in {contact.node_id for contact in driver.node("dht-5").routing_table}
        config = driver.swarm.config
        driver.advance(40 + config.unresponsive_time + config.refresh_interval)
        for name, target in zip(driver.names(), TARGETS, strict=True):
            outcome = driver.lookup(name, target)
            invariants.within_budget(outcome, config)
            invariants.lookup_exact(outcome)
