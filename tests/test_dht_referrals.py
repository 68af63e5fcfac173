"""A peer that answers finds with contacts nobody listens at must not cost a lookup one RPC
timeout per contact it invents (issue 14: over TCP, made-up contacts took a well-behaved client
from 100% to 25% success). Runs ``traverse`` over the in-memory network of test_dht_traverse."""

from __future__ import annotations

from typing import Any

import pytest
from test_dht_traverse import K, Network, nearest_ids

from hivemind_core.dht.routing import Contact
from hivemind_core.dht.traverse import DISTRUST_AFTER

pytestmark = pytest.mark.asyncio(loop_factories=["sim"])

RPC_TIMEOUT = 3.0


class LyingNetwork(Network):
    """``liar`` answers every find with K made-up contacts nearer the target than anyone; asking
    one of them takes ``RPC_TIMEOUT`` and fails (a dial to an address nobody holds)."""

    def __init__(self, *, seed: int) -> None:
        super().__init__(seed=seed)
        self.liar: int | None = None
        self.phantoms: set[int] = set()

    async def ask(self, contact: Contact, targets: list[int]) -> dict[int, tuple[list[Contact], Any]] | None:
        answer = await super().ask(contact, targets)
        if contact.node_id == self.liar and answer is not None:
            return {t: (self.invent(t), None) for t in targets}
        return answer

    def invent(self, target: int) -> list[Contact]:
        made_up = [target ^ (self.rng.getrandbits(40) + 1) for _ in range(K)]
        self.phantoms.update(made_up)
        self.dead.update(made_up)
        self.delay.update(dict.fromkeys(made_up, RPC_TIMEOUT))
        return [Contact(i, f"127.0.0.3:{n + 1}", b"") for n, i in enumerate(made_up)]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_made_up_contacts_are_not_all_dialled(seed: int) -> None:
    net = LyingNetwork(seed=seed)
    querier = net.ids[0]
    target = net.random_target()
    net.liar = net.tables[querier].nearest(target, 1)[0].node_id  # the liar is the first one asked
    reported: list[int] = []
    result = (await net.lookup(querier, [target], on_bad_referrer=lambda c: reported.append(c.node_id)))[
        target
    ]
    asked_phantoms = {node_id for _, node_id, _ in net.calls if node_id in net.phantoms}
    invented = len(net.phantoms)
    assert invented >= K, "the liar was asked and lied"
    assert len(asked_phantoms) <= DISTRUST_AFTER + 3, (
        f"{len(asked_phantoms)} of {invented} made-up contacts were dialled (each costs an RPC timeout)"
    )
    assert reported == [net.liar], "the node hears who named only contacts that failed"
    assert nearest_ids(result) == net.truth(target, exclude=querier), "it still finds the true nearest"


async def test_a_contact_named_by_a_distrusted_peer_and_an_honest_one_is_asked() -> None:
    """Distrust drops what only the liar vouches for: a true contact it also names is kept."""
    net = LyingNetwork(seed=4)
    querier = net.ids[0]
    target = net.random_target()
    net.liar = net.tables[querier].nearest(target, 1)[0].node_id
    truth = net.truth(target, exclude=querier)
    original = net.invent

    def invent_with_truth(t: int) -> list[Contact]:
        return original(t)[: K - 5] + [net.contacts[i] for i in truth[:5]]

    net.invent = invent_with_truth  # type: ignore[method-assign]
    result = (await net.lookup(querier, [target]))[target]
    found = set(nearest_ids(result))
    assert set(truth[:5]) - {net.liar} <= found
