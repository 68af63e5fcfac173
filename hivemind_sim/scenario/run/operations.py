"""Scripted operations: a store, get, lookup or DMoE forward that each selected peer does once.

They replay a property test's schedule as a scenario: each records the same metric events as
the workload (`dht.store`, `dht.get`, `dht.lookup`; `moe.forward` for a forward) and returns
one :class:`Outcome` per peer, so tests can check invariants on what happened.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hivemind_core.dht import DHTNode, StoreItem
from hivemind_core.moe.client import MoEClient, RemoteMixtureOfExperts
from hivemind_core.net import TransportError

from ..format import schema
from .peers import ScenarioPeers
from .training import STEP_FAILURES, mixture_for


@dataclass(frozen=True)
class Outcome:
    """How one peer's scripted operation ended (times are simulated seconds, not window time)."""

    peer: str
    action: str
    ok: bool
    started: float
    ended: float
    value: object | None = None
    """What a store wrote, a get returned, the ids a lookup found, a forward's output tensor."""
    detail: dict[str, object] = field(default_factory=dict)
    """More to check: a lookup's oracle; a forward's answering uids, gate weights, outputs, k_min."""


class Operations:
    """Runs scripted operations on a scenario's peers and records their metrics."""

    def __init__(self, peers: ScenarioPeers, *, start: float) -> None:
        self.peers = peers
        self.sim = peers.sim
        self.start = start  # the measured window's start: metrics count from it
        self._mixtures: dict[str, tuple[DHTNode, RemoteMixtureOfExperts, dict[str, object]]] = {}

    async def run(self, index: int, event: schema.Event, name: str) -> Outcome:
        """Peer ``name`` does operation ``event`` (number ``index`` of the timeline)."""
        began = self.sim.now
        node = self.peers.swarm.nodes.get(name)
        if node is None:  # it went down in the moment since it was selected
            return Outcome(name, event.action, False, began, began, None, {"down": True})
        if isinstance(event, schema.StoreEvent):
            ok, value, detail = await self._store(name, node, event, _value(index, name, event.value_size))
        elif isinstance(event, schema.GetEvent):
            ok, value, detail = await self._get(name, node, event.key)
        elif isinstance(event, schema.LookupEvent):
            target = event.target
            if target is None:
                target = self.sim.random(f"event/{index}/target/{name}").getrandbits(160)
            ok, value, detail = await self._lookup(name, node, target)
        elif isinstance(event, schema.ForwardEvent):
            ok, value, detail = await self._forward(index, name, node)
        else:
            raise AssertionError(f"not an operation: {event.action}")
        now = self.sim.now
        metric = "moe.forward" if isinstance(event, schema.ForwardEvent) else f"dht.{event.action}"
        fields = {k: v for k, v in detail.items() if k in ("hops", "top1", "overlap", "answered")}
        self.peers.recorder.event(metric, now - self.start, ok=ok, latency=now - began, **fields)
        return Outcome(name, event.action, ok, began, now, value, detail)

    # A request's own failure (the requester went down mid-operation: TransportError) is a failed
    # operation; anything else it raises is the requesting peer's failure (see failures.py).

    async def _store(
        self, name: str, node: DHTNode, event: schema.StoreEvent, value: bytes
    ) -> tuple[bool, object, dict[str, object]]:
        ok = False
        with self.peers.failures.guard(name, "a scripted DHT store"), contextlib.suppress(TransportError):
            stored = await node.store_many([StoreItem(event.key, value, node.now() + event.ttl)])
            ok = bool(stored and stored[0])
        return ok, value, {}

    async def _get(self, name: str, node: DHTNode, key: str) -> tuple[bool, object, dict[str, object]]:
        found = None
        with self.peers.failures.guard(name, "a scripted DHT get"), contextlib.suppress(TransportError):
            found = await node.get(key)
        value = None if found is None else found.value
        detail: dict[str, object] = {} if found is None else {"expiration_time": found.expiration_time}
        return found is not None, value, detail

    async def _lookup(self, name: str, node: DHTNode, target: int) -> tuple[bool, object, dict[str, object]]:
        result = None
        with self.peers.failures.guard(name, "a scripted DHT lookup"), contextlib.suppress(TransportError):
            result = (await node.lookup([target]))[target]
        if result is None:
            return False, None, {"target": target}
        truth = self.peers.swarm.nearest_live(target, node.config.k, exclude=node.node_id)
        found = [contact.node_id for contact in result.nearest]
        detail: dict[str, object] = {
            "target": target,
            "truth": truth,
            "hops": float(result.rounds),
            "top1": float(bool(found) and bool(truth) and found[0] == truth[0]),
            "overlap": len(set(found) & set(truth)) / max(1, len(truth)),
        }
        return result.converged, found, detail

    async def _forward(self, index: int, name: str, node: DHTNode) -> tuple[bool, object, dict[str, object]]:
        """One forward and backward through the peer's scripted mixture, on the trainer's layers
        and gate (its optimizer does not step), in a baton thread as the trainer's steps run."""
        peers = self.peers
        trainer, training = peers.trainers[name], peers.scenario.workload.training
        assert training is not None and peers.dataset is not None
        mixture, seen = await self._mixture(name, node, training)
        seen.clear()
        generator = torch.Generator().manual_seed(
            zlib.crc32(f"{peers.scenario.seed}/{index}/{name}".encode())
        )
        x, y = peers.dataset.batch(generator, training.batch_size)

        failed: list[str] = []  # why the forward or backward failed, if it did

        def forward_backward() -> torch.Tensor | None:
            # replicas of the trainer's layers as they are now: its optimizer updates them in
            # place while this forward's backward still needs them (see training._Batch)
            first, gate, last = (
                copy.deepcopy(layer)
                for layer in (trainer.model.first, trainer.model.gate, trainer.model.last)
            )
            mixture.proj = gate
            try:
                hidden = torch.relu(first(x))
                output = mixture(hidden)
                loss = nn.functional.cross_entropy(last(output + hidden), y)
                params = [*first.parameters(), *gate.parameters(), *last.parameters()]
                torch.autograd.grad(loss, params, allow_unused=True)
                return output.detach()
            except STEP_FAILURES as error:
                failed.append(f"{type(error).__name__}: {error}")
                return None

        output = None
        with peers.failures.guard(name, "a scripted DMoE forward"):
            output = await peers.baton.call(forward_backward)
        detail: dict[str, object] = {"k_min": training.k_min, "k_best": training.k_best, **seen}
        if failed:
            detail["error"] = failed[0]
        answered = seen.get("uids")
        if isinstance(answered, list):
            detail["answered"] = sum(map(len, answered)) / max(1, len(answered))
        return output is not None, output, detail

    async def _mixture(
        self, name: str, node: DHTNode, training: schema.TrainingWorkload
    ) -> tuple[RemoteMixtureOfExperts, dict[str, object]]:
        """The mixture ``name``'s scripted forwards use while its node lives: one client, so its
        bans and its cache of the grid carry over from one forward to the next, as a trainer's do."""
        held = self._mixtures.get(name)
        if held is not None and held[0] is node:
            return held[1], held[2]
        if held is not None:
            await held[1].searcher.close()
        mixture = mixture_for(training, MoEClient(rpc=node.rpc, dht=node, bridge=self.peers.baton))
        seen = _watch(mixture, training.model.expert)
        self._mixtures[name] = (node, mixture, seen)
        return mixture, seen

    async def close(self) -> None:
        """Stop the scripted mixtures' background work (their prefix-cache refreshes)."""
        for _, mixture, _ in self._mixtures.values():
            await mixture.searcher.close()
        self._mixtures.clear()


def _value(index: int, name: str, size: int) -> bytes:
    """What a scripted store writes: ``size`` bytes told apart by event and peer."""
    seed = hashlib.blake2b(f"{index}/{name}".encode(), digest_size=16).digest()
    return (seed * (size // len(seed) + 1))[:size]


def _watch(mixture: RemoteMixtureOfExperts, prefix: str) -> dict[str, object]:
    """What the mixture's forward chose, filled in when it runs: per sample the uids that
    answered, their gate weights (as the layer weighs them) and outputs, and the answered mask.

    It wraps the layer's remote-work method on this one instance: the core layer is untouched.
    """
    seen: dict[str, object] = {}
    forward_all = mixture._forward_all

    async def watched(x: torch.Tensor, logits: list[torch.Tensor]) -> Any:
        result = await forward_all(x, logits)
        coords, mask = result.coords, result.mask
        scores = sum(lg.gather(1, coords[:, :, d].clamp(min=0)) for d, lg in enumerate(logits))
        weights = torch.nan_to_num(torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1))
        seen.update(
            uids=[
                [_uid(prefix, coords[i, j]) for j in range(mask.shape[1]) if mask[i, j]]
                for i in range(mask.shape[0])
            ],
            weights=weights,
            outputs=result.outputs.detach(),
            mask=mask,
        )
        return result

    mixture._forward_all = watched  # type: ignore[method-assign]
    return seen


def _uid(prefix: str, coords: torch.Tensor) -> str:
    return ".".join([prefix, *(str(int(c)) for c in coords)])
