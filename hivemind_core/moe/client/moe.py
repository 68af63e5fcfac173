"""RemoteMixtureOfExperts: a DMoE layer whose experts live on other peers.

For a batch ``x``:

1. a linear gate scores every coordinate of every grid dimension;
2. a beam search over the DHT picks, per sample, the ``k_best`` alive experts with the best
   summed scores;
3. each chosen expert receives all its samples in one call, all calls in parallel; once every
   sample has ``k_min`` answers the layer waits at most ``timeout_after_k_min`` more. A call
   still running then is merely slower than the others (``late``): it is dropped, not held
   against its server. A server that misses the full ``forward_timeout``, or answers NaN or a
   malformed answer, is banned by the client for ``ban_time``;
4. the answers to each sample are checked against each other (``answer_check``, a
   :class:`NormCheck` by default): an expert whose answer is an outlier is rejected for the whole
   call and its server banned, like one that answered NaN;
5. samples left with fewer than ``k_min`` answers get a fresh search that skips the experts
   that just failed (up to ``max_searches`` searches), then a clear error if still short.
   Each retry calls twice as many experts per missing answer as the round before, so a
   swarm where most announced experts are dead costs a few rounds, not one per dead server
   (answers beyond ``k_best`` per sample are dropped);
6. the output is the softmax-weighted average of the accepted answers; failed and rejected
   ones are masked out of the average (the weights renormalized) and out of backward.

Backward sends each answering expert the gradients of its samples (it trains on them) and
sums the input gradients it returns. The gate's gradient flows through ordinary torch ops.

Only remote and transport failures (``REMOTE_FAILURES``) make the layer skip an expert; any
other exception is a bug and raises. What was skipped is counted in ``layer.stats``, and a
failed backward (whose gradient is lost) is also logged as a warning, once per expert per
``ban_time``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch
from torch import nn

from ...net import RemoteError
from .beam_search import Choice, MoEBeamSearcher
from .client import MoEClient, UntrustedServer
from .config import MoEConfig
from .errors import REMOTE_FAILURES, ExpertsUnavailable, MalformedResponse, describe_failures
from .lists import longs
from .stats import ExpertCall, MixtureStats, Outcome

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ("ExpertsUnavailable", "RemoteMixtureOfExperts")


@dataclass
class _Assignment:
    """One expert call: which samples it got (and, once answered, in which of their slots)."""

    choice: Choice
    samples: list[int]
    slots: list[int] = field(default_factory=list)
    output: torch.Tensor | None = None
    error: str | None = None
    seconds: float = 0.0  # how long its answer took


@dataclass
class _ForwardResult:
    outputs: torch.Tensor
    mask: torch.Tensor
    coords: torch.Tensor
    answered: list[_Assignment] = field(default_factory=list)


class RemoteMixtureOfExperts(nn.Module):
    """A mixture of the best ``k_best`` remote experts of grid ``uid_prefix`` (see
    :class:`MoEConfig` for every setting), reached through ``client``; see the module doc.

    Inputs are ``[batch, in_features]`` or ``[batch, ..., in_features]`` (the gate then sees the
    mean over the middle dimensions). Experts map a sample to an output of ``output_shape``
    (by default the input's sample shape); an answer of another shape counts as a failure of
    that expert. An empty batch gives an empty output without remote calls. ``answer_check``
    rejects junk answers by comparing the answers to each sample (None: accept every finite one).
    """

    def __init__(self, config: MoEConfig, *, client: MoEClient) -> None:
        super().__init__()
        if not isinstance(config, MoEConfig):
            raise TypeError(f"config must be a MoEConfig, got {type(config).__name__}")
        self.config = config
        self.client = client
        self.stats = MixtureStats()
        self.searcher = MoEBeamSearcher(client, config.uid_prefix, config.grid_size)
        self.proj = nn.Linear(config.in_features, sum(config.grid_size))
        self._dummy = nn.Parameter(torch.empty(0), requires_grad=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[-1] != self.config.in_features:
            shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"expected inputs of shape [batch, ..., in_features={self.config.in_features}], got {shape}"
            )
        gate_input = x if x.dim() == 2 else x.flatten(1, -2).mean(1)
        logits = self.proj(gate_input).split(self.config.grid_size, dim=-1)
        outputs, mask, coords = _MixtureCall.apply(self._dummy, x, self, [lg.detach() for lg in logits])
        scores = sum(lg.gather(1, coords[:, :, d].clamp(min=0)) for d, lg in enumerate(logits))
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
        weights = torch.nan_to_num(weights)  # a sample with no expert at all (k_min=0) gets zeros
        return (weights.reshape(*weights.shape, *[1] * (outputs.dim() - 2)) * outputs).sum(1)

    def close(self) -> None:
        """Stop the layer's background work (prefix-cache refreshes); call from training code."""
        self.client.bridge.run(self.searcher.close())

    # ---- the remote work, run on the bridge's event loop -----------------------------------

    async def _forward_all(self, x: torch.Tensor, logits: list[torch.Tensor]) -> _ForwardResult:
        batch = x.shape[0]
        if batch == 0:
            return self._assemble(x, [], [])
        answered: list[list[_Assignment]] = [[] for _ in range(batch)]
        # A retry avoids the experts that just failed. Older failures are not held against an
        # expert: dead or frozen servers are already banned by the client, and an expert that
        # failed once at random may well answer the next time.
        failed: set[str] = set()
        assignments: list[_Assignment] = []
        round_: list[_Assignment] = []
        sample_shape = self.config.output_shape if self.config.output_shape is not None else x.shape[1:]
        needy = list(range(batch))
        for attempt in range(self.config.max_searches):
            # a sample's own answered experts are skipped per sample (in _group), so ask for as
            # many more as the fullest sample already holds
            held = max(len(answered[s]) for s in needy)
            widen = 2**attempt  # the DHT may still announce many dead experts: try more at once
            self.stats.searches += 1
            picks = await self.searcher.search(
                [lg[needy] for lg in logits],
                self.config.k_best * widen + held,
                beam_size=self.config.beam_size and self.config.beam_size * widen + held,
                exclude=failed,
                fresh=attempt > 0,
            )
            round_ = self._group(needy, picks, answered, self.config.k_best, widen)
            await self._call_forward(x, round_, answered, sample_shape)
            self._vet(round_, answered)
            for assignment in round_:  # observed once judged: `ok` means accepted
                if assignment.output is not None:
                    self._observe("forward", assignment, "answered", assignment.seconds)
            for sample, choices in zip(needy, picks, strict=True):  # best-scored answers first
                rank = {choice.uid: i for i, choice in enumerate(choices)}
                answered[sample].sort(key=lambda a: rank.get(a.choice.uid, -1))
            failed = set()
            for assignment in round_:
                if assignment.output is None:
                    failed.add(assignment.choice.uid)
                else:
                    assignments.append(assignment)
            needy = [s for s in range(batch) if len(answered[s]) < self.config.k_min]
            if not needy:
                break
        if needy:
            self.stats.unavailable += 1
            errors = describe_failures(
                [(a.choice.uid, a.choice.endpoint, a.error) for a in round_ if a.error]
            )
            config = self.config
            raise ExpertsUnavailable(
                f"only {min(len(answered[s]) for s in needy)} of k_min={config.k_min} experts answered for "
                f"{len(needy)} sample(s) after {config.max_searches} searches of {self.searcher.grid!r} "
                f"(last failures: {errors})"
            )
        return self._assemble(x, answered, assignments)

    @staticmethod
    def _group(
        samples: list[int],
        picks: list[list[Choice]],
        answered: list[list[_Assignment]],
        k_best: int,
        widen: int,
    ) -> list[_Assignment]:
        """One call per chosen expert, carrying every sample that chose it and still needs it
        (``widen`` candidates for each answer a sample still misses)."""
        by_uid: dict[str, _Assignment] = {}
        for sample, choices in zip(samples, picks, strict=True):
            held = {a.choice.uid for a in answered[sample]}
            fresh = [choice for choice in choices if choice.uid not in held]
            for choice in fresh[: (k_best - len(held)) * widen]:
                by_uid.setdefault(choice.uid, _Assignment(choice, [])).samples.append(sample)
        return list(by_uid.values())

    async def _call_forward(
        self,
        x: torch.Tensor,
        round_: list[_Assignment],
        answered: list[list[_Assignment]],
        sample_shape: torch.Size,
    ) -> None:
        loop = asyncio.get_running_loop()
        calls = {
            loop.create_task(
                self.client.forward(
                    a.choice.uid,
                    a.choice.endpoint,
                    [x.index_select(0, longs(a.samples))],
                    timeout=self.config.forward_timeout,
                )
            ): a
            for a in round_
        }
        self.stats.forward_calls += len(calls)
        began = loop.time()
        deadline = began + self.config.forward_timeout
        shortened = False
        probes: dict[str, asyncio.Task[bool]] = {}  # endpoint -> is it alive? (asked at k_min)
        try:
            while calls and loop.time() < deadline:
                done, _ = await asyncio.wait(
                    calls, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
                )
                for task in [t for t in calls if t in done]:
                    assignment = calls.pop(task)
                    try:
                        assignment.output = _one_output(task.result(), assignment, sample_shape)
                    except REMOTE_FAILURES as error:  # refused, timed out, remote error, bad answer
                        self._forward_failed(
                            assignment, f"{type(error).__name__}: {error}", loop.time() - began
                        )
                        if _junk(error):
                            self._ban(assignment.choice.endpoint)
                        continue
                    assignment.seconds = loop.time() - began
                    for sample in assignment.samples:
                        answered[sample].append(assignment)
                if not shortened and all(
                    len(answered[s]) >= self.config.k_min for a in round_ for s in a.samples
                ):
                    shortened = True
                    deadline = min(deadline, loop.time() + self.config.timeout_after_k_min)
                    for a in calls.values():  # still working, or frozen? ask while we wait
                        if a.choice.endpoint not in probes:
                            probe = self._alive(a.choice.uid, a.choice.endpoint, deadline - loop.time())
                            probes[a.choice.endpoint] = loop.create_task(probe)
            # Only a real deadline gets here with calls outstanding (a cancelled caller or a bug
            # leaves through the exception instead). Past the full timeout, or when its server did
            # not answer the probe either, the server is frozen or overloaded (it never fails at
            # the transport level): skip it for a while. A server that answered the probe is alive
            # and merely slower than the first k_min: drop its call, keep choosing it.
            missed = deadline >= began + self.config.forward_timeout
            await asyncio.gather(*(probes[a.choice.endpoint] for a in calls.values() if not missed))
            for assignment in calls.values():
                if missed or not probes[assignment.choice.endpoint].result():
                    self._forward_failed(assignment, "no answer in time", loop.time() - began)
                    self._ban(assignment.choice.endpoint)
                else:
                    assignment.error = "still working when every sample had k_min answers"
                    self.stats.late += 1
                    self._observe("forward", assignment, "late", loop.time() - began)
        finally:
            for task in [*calls, *probes.values()]:
                task.cancel()
                task.add_done_callback(_retrieve)

    async def _alive(self, uid: str, endpoint: str, timeout: float) -> bool:
        """Whether the server answers a cheap request (``moe.info``) within ``timeout``: a
        frozen or dead one does not, one busy computing does (its event loop is free)."""
        try:
            await self.client.info(uid, endpoint, timeout=timeout)
        except RemoteError:  # it answered, if with an error
            return True
        except REMOTE_FAILURES:
            return False
        return True

    def _forward_failed(
        self, assignment: _Assignment, error: str, seconds: float, outcome: Outcome = "failed"
    ) -> None:
        assignment.error = error
        self.stats.forward_failures += 1
        self.stats.record_failure(assignment.choice.uid)
        self._observe("forward", assignment, outcome, seconds)
        logger.debug("expert %s failed: %s", assignment.choice.uid, error)

    def _vet(self, round_: list[_Assignment], answered: list[list[_Assignment]]) -> None:
        """Reject this round's experts whose answer to some sample is an outlier among all the
        answers that sample holds (``answer_check``); their servers are banned."""
        check = self.config.answer_check
        samples = sorted({s for a in round_ if a.output is not None for s in a.samples})
        width = max((len(answered[s]) for s in samples), default=0)
        if check is None or sum(len(answered[s]) for s in samples) < check.min_answers:
            return
        held = list({id(a): a for s in samples for a in answered[s]}.values())  # each answer once
        per_answer = []
        for a in held:
            assert a.output is not None
            per_answer.append(a.output.flatten(1).float().norm(dim=1))
        flat = torch.cat(per_answer)
        offsets = itertools.accumulate((len(a.samples) for a in held), initial=0)
        first = {id(a): offset for a, offset in zip(held, offsets, strict=False)}
        row = {id(a): {s: r for r, s in enumerate(a.samples)} for a in held}
        places, sources = [], []  # in the [samples, width] matrix, and in ``flat``
        for i, sample in enumerate(samples):
            for j, a in enumerate(answered[sample]):
                places.append(i * width + j)
                sources.append(first[id(a)] + row[id(a)][sample])
        norms = torch.full((len(samples), width), float("nan"))
        norms.view(-1)[longs(places)] = flat[longs(sources)]
        this_round = {id(a) for a in round_}
        junk: dict[int, tuple[_Assignment, str]] = {}
        for i, j in check.outliers(norms, experts=len(held)).nonzero().tolist():
            assignment, count = answered[samples[i]][j], len(answered[samples[i]])
            if id(assignment) in this_round and id(assignment) not in junk:
                junk[id(assignment)] = (
                    assignment,
                    (
                        f"answer rejected: its norm {norms[i, j].item():.3g} for sample {samples[i]} is over "
                        f"{check.factor:g} x the median {norms[i].nanmedian().item():.3g} of {count} answers"
                    ),
                )
        for assignment, reason in junk.values():
            assignment.output = None
            for sample in assignment.samples:
                answered[sample] = [a for a in answered[sample] if a is not assignment]
            self.stats.rejected += 1
            self._forward_failed(assignment, reason, assignment.seconds, "rejected")
            self._ban(assignment.choice.endpoint)

    def _ban(self, endpoint: str) -> None:
        """Ban a server that failed (once, however many of its experts did at once)."""
        if not self.client.is_banned(endpoint):
            self.client.ban(endpoint)

    def _observe(
        self, kind: Literal["forward", "backward"], assignment: _Assignment, outcome: Outcome, seconds: float
    ) -> None:
        choice = assignment.choice
        self.stats.observe(ExpertCall(kind, choice.uid, choice.endpoint, outcome, seconds))

    def _assemble(
        self, x: torch.Tensor, answered: list[list[_Assignment]], assignments: list[_Assignment]
    ) -> _ForwardResult:
        batch, dims, k_best = x.shape[0], len(self.config.grid_size), self.config.k_best
        sample_shape = self.config.output_shape if self.config.output_shape is not None else x.shape[1:]
        slot_of = [{id(a): slot for slot, a in enumerate(held[:k_best])} for held in answered]
        places: list[int] = []  # sample * k_best + slot, for every answer row kept
        owners: list[int] = []  # its assignment's index in ``final``
        sources: list[torch.Tensor] = []
        final: list[_Assignment] = []
        for assignment in assignments:
            assert assignment.output is not None
            kept_samples, kept_slots, rows = [], [], []
            for row, sample in enumerate(assignment.samples):
                slot = slot_of[sample].get(id(assignment))
                if slot is not None:
                    kept_samples.append(sample)
                    kept_slots.append(slot)
                    rows.append(row)
            if not kept_samples:
                continue
            places += [sample * k_best + slot for sample, slot in zip(kept_samples, kept_slots, strict=True)]
            owners += [len(final)] * len(rows)
            output = assignment.output
            sources.append(output if len(rows) == len(assignment.samples) else output[rows])
            final.append(_Assignment(assignment.choice, kept_samples, slots=kept_slots))
        # one copy of all answers into place, instead of one indexed assignment per expert
        outputs = x.new_zeros(batch * k_best, *sample_shape)
        mask = torch.zeros(batch * k_best, dtype=torch.bool)
        coords = torch.full((batch * k_best, dims), -1, dtype=torch.long)
        if places:
            index = longs(places)
            outputs.index_copy_(0, index, torch.cat(sources).to(outputs.dtype))
            mask[index] = True
            coords[index] = longs([a.choice.coords for a in final])[longs(owners)]
        return _ForwardResult(
            outputs.view(batch, k_best, *sample_shape),
            mask.view(batch, k_best),
            coords.view(batch, k_best, dims),
            final,
        )

    async def _backward_all(
        self, x: torch.Tensor, grad_outputs: torch.Tensor, answered: list[_Assignment]
    ) -> torch.Tensor:
        began = asyncio.get_running_loop().time()
        calls = [
            _ended(
                self.client.backward(
                    a.choice.uid,
                    a.choice.endpoint,
                    [x.index_select(0, longs(a.samples))],
                    [grad_outputs[longs(a.samples), longs(a.slots)]],
                    timeout=self.config.backward_timeout,
                )
            )
            for a in answered
        ]
        self.stats.backward_calls += len(calls)
        outcomes = await asyncio.gather(*calls)
        grad_x = torch.zeros_like(x)
        bugs = [r for r, _ in outcomes if isinstance(r, BaseException) and not isinstance(r, REMOTE_FAILURES)]
        if bugs:
            raise bugs[0]
        for assignment, (result, ended) in zip(answered, outcomes, strict=True):
            expected = (len(assignment.samples), *x.shape[1:])
            if not isinstance(result, BaseException) and (len(result) != 1 or result[0].shape != expected):
                result = MalformedResponse(
                    f"{assignment.choice.uid} returned input gradients of shapes "
                    f"{[list(g.shape) for g in result]}, expected [{list(expected)}]"
                )
            if isinstance(result, BaseException):
                self._backward_failed(assignment, result)
                if _junk(result):
                    self._ban(assignment.choice.endpoint)
            else:
                grad_x.index_add_(0, longs(assignment.samples), result[0].to(grad_x.dtype))
            outcome: Outcome = "failed" if isinstance(result, BaseException) else "answered"
            self._observe("backward", assignment, outcome, ended - began)
        return grad_x

    def _backward_failed(self, assignment: _Assignment, error: BaseException) -> None:
        """Count a lost gradient; warn about each expert at most once per ban period."""
        uid = assignment.choice.uid
        self.stats.backward_failures += 1
        self.stats.record_failure(uid)
        now = asyncio.get_running_loop().time()
        if self.stats.should_warn(uid, now, self.client.ban_time):
            logger.warning(
                "backward to expert %s at %s failed, its gradient contribution is lost: %s "
                "(%d backward failures in this layer so far; see layer.stats)",
                uid,
                assignment.choice.endpoint,
                error,
                self.stats.backward_failures,
            )
        else:
            logger.debug("backward to %s failed and is skipped: %s", uid, error)


def _one_output(
    outputs: list[torch.Tensor], assignment: _Assignment, sample_shape: torch.Size
) -> torch.Tensor:
    """An expert's answer as one [samples, *sample_shape] tensor, or MalformedResponse (the
    client has already checked its batch size)."""
    uid = assignment.choice.uid
    if len(outputs) != 1 or not outputs[0].is_floating_point():
        raise MalformedResponse(f"{uid} must return one floating-point tensor, got {len(outputs)} tensor(s)")
    if outputs[0].shape[1:] != sample_shape:
        raise MalformedResponse(
            f"{uid} returned samples of shape {list(outputs[0].shape[1:])}, expected {list(sample_shape)}"
        )
    return outputs[0]


def _junk(error: BaseException) -> bool:
    """Whether the server answered junk (NaN, the wrong shape or batch, undecodable), which bans
    it like a missed deadline. A server that is not the expert's declarer is no reason to ban
    the endpoint: its rightful server may serve other experts (see ``client.UntrustedServer``)."""
    return isinstance(error, MalformedResponse) and not isinstance(error, UntrustedServer)


async def _ended(call: Awaitable[T]) -> tuple[T | BaseException, float]:
    """The call's result or exception, and the loop time it ended at (for its latency)."""
    try:
        result: T | BaseException = await call
    except Exception as error:  # judged by the caller, with the others' outcomes
        result = error
    return result, asyncio.get_running_loop().time()


def _retrieve(task: asyncio.Task[object]) -> None:
    """Mark an abandoned call's outcome as seen (it was already given up on)."""
    if not task.cancelled():
        task.exception()


class _MixtureCall(torch.autograd.Function):
    """Runs the expert calls; outputs, answered mask and chosen coordinates per (sample, slot)."""

    @staticmethod
    def forward(
        ctx: Any,
        _dummy: torch.Tensor,
        x: torch.Tensor,
        layer: RemoteMixtureOfExperts,
        logits: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # The remote work runs on host copies (what goes on the wire is on the host anyway: one
        # copy of the batch instead of one per expert call); its results go to the input's device.
        host = x.detach().cpu()
        result = layer.client.bridge.run(layer._forward_all(host, [lg.cpu() for lg in logits]))
        ctx.layer = layer
        ctx.answered = result.answered
        ctx.save_for_backward(host)
        outputs, mask, coords = (t.to(x.device) for t in (result.outputs, result.mask, result.coords))
        ctx.mark_non_differentiable(mask, coords)
        return outputs, mask, coords

    @staticmethod
    def backward(ctx: Any, grad_outputs: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        (host,) = ctx.saved_tensors
        layer: RemoteMixtureOfExperts = ctx.layer
        grad_x = layer.client.bridge.run(layer._backward_all(host, grad_outputs.cpu(), ctx.answered))
        return None, grad_x.to(grad_outputs.device), None, None
