"""Expert declarations are bound to the peer that made them: signed by its key, ignored when
unsigned or when their endpoint cannot be dialed, and called only if the server at the
endpoint proves it holds the declaring key. A bad declaration from the network is a failed
expert at worst, never a crash of the trainer."""

from __future__ import annotations

import dataclasses
import random

import msgpack
import pytest
import torch

from hivemind_core.dht import Identity, SignatureValidator, identity, serialize_key, validation
from hivemind_core.dht.storage import DHTRecord
from hivemind_core.moe.client import (
    MalformedResponse,
    MoEBeamSearcher,
    MoEConfig,
    RemoteExpert,
    RemoteMixtureOfExperts,
    UntrustedServer,
)
from hivemind_core.moe.declare import Declaration, declare_experts, find_declarations, find_experts
from hivemind_core.moe.server import ExpertBackend
from hivemind_core.moe.uid import expand_pattern
from hivemind_core.net import RemoteError

pytestmark = pytest.mark.asyncio

HID = 8
GRID = (4, 8)


def hosted(pattern: str) -> list[ExpertBackend]:
    return [ExpertBackend.create(uid, "ffn", HID, seed=i) for i, uid in enumerate(expand_pattern(pattern))]


def gate_towards(layer: RemoteMixtureOfExperts, coords: tuple[int, int]) -> None:
    """Make every sample's gate prefer ``coords`` most, then the rest of the grid equally."""
    with torch.no_grad():
        layer.proj.weight.zero_()
        layer.proj.bias.zero_()
        layer.proj.bias[coords[0]] = 5.0
        layer.proj.bias[GRID[0] + coords[1]] = 5.0


def undialable(world) -> str:
    """An endpoint the transport refuses: not host:port over TCP, unprintable in simulation."""
    return "junk" if world.kind == "tcp" else "peer\n0"


@pytest.mark.asyncio(loop_factories=["tcp"])
async def test_a_junk_endpoint_stored_through_the_dht_fails_no_trainer(world) -> None:
    """Item 1 of issue 14: ``["ffn.3.5", "junk"]`` stored by anyone made forward raise ValueError."""
    server = await world.expert_server(hosted("ffn.[0:2].[0:8]"))
    attacker = await world.dht([server.endpoint])
    expires = attacker.now() + 30
    marker = attacker.identity.ownership_marker
    for prefix, coordinate in (("ffn.", 3), ("ffn.3.", 5)):  # unsigned, as before, and signed
        assert await attacker.store(prefix, ["ffn.3.5", "junk"], expires, subkey=coordinate)
        assert await attacker.store(prefix, ["ffn.3.5", "junk"], expires, subkey=(coordinate, marker))
    client = await world.moe_client([server.endpoint])
    layer = RemoteMixtureOfExperts(
        MoEConfig(in_features=HID, grid_size=GRID, uid_prefix="ffn", k_best=2), client=client
    )
    gate_towards(layer, (3, 5))
    x = torch.randn(4, HID)
    output = await world.run_trainer(lambda: layer(x))
    assert output.shape == (4, HID) and torch.isfinite(output).all()
    assert layer.stats.forward_failures == 0, "the junk declaration is dropped before any call"
    # a junk endpoint handed to the client directly is that expert's failure, not a ValueError
    with pytest.raises(UntrustedServer, match="cannot be dialed"):
        await client.forward("ffn.3.5", "junk", [x], timeout=5)
    assert client.bans == 0


async def test_unsigned_undialable_and_foreign_declarations_are_not_believed(world) -> None:
    server = await world.expert_server(hosted("ffn.[0:2].[0:8]"))
    attacker = await world.dht([server.endpoint])
    expires = attacker.now() + 30
    marker = attacker.identity.ownership_marker
    # unsigned entries (the old format) in the attacker's rows
    assert await attacker.store("ffn.", ["ffn.3.0", server.endpoint], expires, subkey=3)
    assert await attacker.store("ffn.3.", ["ffn.3.0", server.endpoint], expires, subkey=0)
    assert await attacker.store("ffn.3.0", server.endpoint, expires)
    # signed, at an endpoint nobody could dial
    for prefix, coordinate in (("ffn.", 2), ("ffn.2.", 1)):
        assert await attacker.store(
            prefix, ["ffn.2.1", undialable(world)], expires, subkey=(coordinate, marker)
        )
    # nobody can write under the server's key: the DHT refuses to sign it
    with pytest.raises(ValueError, match="only the owner may write"):
        await attacker.store(
            "ffn.", ["ffn.0.0", attacker.endpoint], expires, subkey=(0, server.dht.identity.ownership_marker)
        )
    # signed by the attacker, at the real server's endpoint: believed until the server is asked
    assert await declare_experts(attacker, ["ffn.1.7"], server.endpoint, expires)

    client = await world.moe_client([server.endpoint])
    found = await find_declarations(client.dht, ["ffn.3.0", "ffn.0.0", "ffn.1.7"])
    assert found["ffn.3.0"] is None
    assert found["ffn.0.0"] is not None and found["ffn.0.0"].owner == server.dht.identity.public_key
    assert await find_experts(client.dht, ["ffn.0.0"]) == {"ffn.0.0": server.endpoint}

    searcher = MoEBeamSearcher(client, "ffn", GRID)
    rows = torch.tensor([[0.0, 0.0, 9.0, 9.0]]), torch.zeros(1, 8)
    picks = await searcher.search(list(rows), 8)
    assert {c.uid for c in picks[0]} <= {f"ffn.{i}.{j}" for i in (0, 1) for j in range(8)}, picks

    layer = RemoteMixtureOfExperts(
        MoEConfig(in_features=HID, grid_size=GRID, uid_prefix="ffn", k_best=1), client=client
    )
    gate_towards(layer, (1, 7))
    x = torch.randn(3, HID)
    await world.run_trainer(lambda: layer(x))
    # ffn.1.7 is served at that endpoint, but its declaration names the attacker's key: refused
    assert layer.stats.expert_failures.get("ffn.1.7") == 1, layer.stats.expert_failures
    assert not client.is_banned(server.endpoint), "the server really there must not be banned for it"
    assert server.forward_pools["ffn.1.7"].requests == 0, "no input reached the server for the forged expert"
    # the server's own declaration of ffn.1.7 is what the next search picks
    picks = await layer.searcher.search([torch.tensor([[0.0, 9.0, 0, 0]]), torch.eye(8)[7:8] * 9], 1)
    assert [(c.uid, c.endpoint) for c in picks[0]] == [("ffn.1.7", server.endpoint)]
    await world.run_trainer(lambda: layer(x))
    assert server.forward_pools["ffn.1.7"].requests == 1
    await client.close()


async def test_a_server_must_prove_it_holds_the_declaring_key(world) -> None:
    declarer = await world.expert_server(hosted("ffn.0.[0:2]"))
    impostor = await world.expert_server(hosted("ffn.0.[0:3]"), [declarer.endpoint])  # serves it too
    client = await world.moe_client([declarer.endpoint])
    key, expires = declarer.dht.identity.public_key, declarer.dht.now() + 30
    x = torch.randn(2, HID)
    rightful = RemoteExpert.declared(Declaration("ffn.0.1", declarer.endpoint, key, expires), client)
    assert (await world.run_trainer(lambda: rightful(x))).shape == (2, HID)
    # the same declaration pointing at another server's address (a replaced or hijacked endpoint)
    moved = RemoteExpert.declared(Declaration("ffn.0.1", impostor.endpoint, key, expires), client)
    for _ in range(2):  # refused at once the second time: the refusal is remembered
        with pytest.raises(UntrustedServer, match=r"not the peer that declared ffn\.0\.1"):
            await world.run_trainer(lambda: moved(x))
    assert impostor.forward_pools["ffn.0.1"].requests == 0
    assert not client.is_banned(impostor.endpoint)
    # the impostor's own experts, declared under its own key, are still called
    own = (await find_declarations(client.dht, ["ffn.0.2"]))["ffn.0.2"]
    assert own is not None and own.owner == impostor.dht.identity.public_key
    expert = RemoteExpert.declared(own, client)
    assert (await world.run_trainer(lambda: expert(x))).shape == (2, HID)


async def test_identity_challenges_with_bad_nonces_get_errors_and_the_server_keeps_serving(world) -> None:
    server = await world.expert_server(hosted("ffn.0.[0:1]"))
    client = await world.moe_client([server.endpoint])
    for nonce in (b"short", "not bytes", None, b"x" * 64):
        with pytest.raises(RemoteError, match=r"moe\.identity takes a nonce of 16 bytes"):
            await client.rpc.call(server.endpoint, "moe.identity", nonce, timeout=5)
    found = (await find_declarations(client.dht, ["ffn.0.0"]))["ffn.0.0"]
    assert found is not None
    expert = RemoteExpert.declared(found, client)
    assert (await client.forward(expert.uid, expert.endpoint, [torch.randn(1, HID)], timeout=5))[0].shape == (
        1,
        HID,
    )


async def test_each_signed_record_is_verified_once_per_process_and_a_changed_one_again(monkeypatch) -> None:
    """Declarations are read from every replica on every refresh, by every peer: a process checks
    each signature once, whichever of its peers meets it first, and anything that differs from
    what it checked is checked afresh."""
    owner = Identity.generate(random.Random(1))
    signer = SignatureValidator(owner)
    readers = [SignatureValidator(Identity.generate(random.Random(seed))) for seed in (2, 3)]
    record = DHTRecord(serialize_key("ffn."), serialize_key((3, owner.ownership_marker)), b"\xa1x", 30.0)
    checks = []
    monkeypatch.setattr(validation, "verify", lambda *args: checks.append(args) or identity.verify(*args))
    monkeypatch.setattr(validation, "VERIFIED", validation.VerifiedSignatures(validation.MAX_VERIFIED))
    signed = dataclasses.replace(record, value=signer.sign(record))
    for reader in readers * 3:
        assert reader.validate(signed) is None
    assert not checks, "a signature made in this process is known to every peer in it"
    monkeypatch.setattr(validation, "VERIFIED", validation.VerifiedSignatures(validation.MAX_VERIFIED))
    for reader in readers * 3:  # as if signed in another process
        assert reader.validate(signed) is None
    assert len(checks) == 1
    assert signer.validate(signed) is None and len(checks) == 1
    _, signature = msgpack.unpackb(signed.value)
    for changed in (
        dataclasses.replace(signed, value=msgpack.packb([b"\xa1y", signature])),
        dataclasses.replace(signed, expiration_time=31.0),
    ):
        for reader in readers:
            assert reader.validate(changed) == "signature does not match the record's owner"
    assert len(checks) == 5, "a bad signature is never remembered"


async def test_a_server_that_answers_the_challenge_with_junk_is_not_believed(world) -> None:
    honest = Identity.generate(random.Random(4))
    answers = iter([[honest.public_key, b"\x00" * 64], "junk", [honest.public_key[:5], b""]])

    async def lying_identity(_peer: str, nonce: bytes) -> object:
        return next(answers)  # a valid-looking key with a signature over nothing, then junk

    liar = await world.rpc({"moe.identity": lying_identity})
    client = await world.moe_client([])
    client.expect_owner("ffn.0", liar.endpoint, honest.public_key)
    for _ in range(3):
        with pytest.raises(MalformedResponse, match="did not prove which key it holds"):
            await client.forward("ffn.0", liar.endpoint, [torch.randn(1, HID)], timeout=5)
    assert not client.refused(liar.endpoint, honest.public_key), "nothing was proven either way"
