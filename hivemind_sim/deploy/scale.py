"""Scaling a scenario down to the real processes one machine holds.

A simulated peer costs a few kilobytes; a real one is a Python process with its own
interpreter (and torch, for peers that host experts or train), so a deployment on one machine
holds far fewer. Every group keeps at least one peer and its share of the total, and what a
group's size bounds (churn's ``min_alive`` and ``max_alive``, an event's ``count``, assertions on
how many peers are alive) shrinks with it. The notes say what changed, for the report.
"""

from __future__ import annotations

import math
import os

from ..scenario.format import schema

PROCESS_MEMORY = 400 * 2**20
"""What one peer process may take (torch, experts, buffers), for the default cap."""


def default_max_peers() -> int:
    """As many peers as this machine runs without starving them: 6 per core, and within memory."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 4 * 2**30
    return max(2, min(6 * cores, memory // 2 // PROCESS_MEMORY))


def scale_scenario(scenario: schema.Scenario, max_peers: int) -> tuple[schema.Scenario, list[str]]:
    """``scenario`` with at most ``max_peers`` peers (never fewer than one per group), and what
    was scaled, in words."""
    total = scenario.total_peers
    if total <= max_peers:
        return scenario, []
    if max_peers < len(scenario.peers):
        raise ValueError(
            f"--max-peers {max_peers} is fewer than the scenario's {len(scenario.peers)} peer groups "
            "(each keeps at least one peer)"
        )
    counts = _shares(scenario, max_peers)
    groups, notes = [], []
    for group, count in zip(scenario.peers, counts, strict=True):
        update: dict[str, object] = {"count": count}
        if count != group.count:
            notes.append(f"group `{group.group}`: {group.count} peers → {count}")
            churn = group.churn
            if churn is not None:
                scaled = _scaled_bounds(churn, count / group.count)
                if scaled != churn:
                    update["churn"] = scaled
                    notes.append(
                        f"group `{group.group}`: churn min_alive/max_alive {churn.min_alive}/"
                        f"{churn.max_alive} → {scaled.min_alive}/{scaled.max_alive}"
                    )
        groups.append(group.model_copy(update=update))
    events = []
    factor = max_peers / total
    for index, event in enumerate(scenario.events):
        select = getattr(event, "select", None)
        if select is not None and select.count is not None:
            count = max(1, round(select.count * factor))
            if count != select.count:
                notes.append(f"event {index}: selects {select.count} peers → {count}")
                event = event.model_copy(update={"select": select.model_copy(update={"count": count})})
        events.append(event)
    factors = {f"peers.alive.{g.group}": c / g.count for g, c in zip(scenario.peers, counts, strict=True)}
    factors["peers.alive"] = sum(counts) / total
    assertions = []
    for assertion in scenario.assertions:
        gauge, _, stat = assertion.metric.rpartition(".")
        if gauge in factors and stat in ("min", "mean", "final"):
            threshold = round(assertion.threshold * factors[gauge], 2)
            notes.append(
                f"assertion `{assertion.metric} {assertion.op} {assertion.threshold:g}` scaled with its "
                f"peers: `{assertion.op} {threshold:g}`"
            )
            assertion = assertion.model_copy(update={"threshold": threshold})
        assertions.append(assertion)
    notes.insert(0, f"{total} peers scaled to {sum(counts)} (--max-peers {max_peers})")
    update = {"peers": tuple(groups), "events": tuple(events), "assertions": tuple(assertions)}
    return scenario.model_copy(update=update), notes


def _shares(scenario: schema.Scenario, max_peers: int) -> list[int]:
    """Largest-remainder shares of ``max_peers``, at least one per group."""
    total = scenario.total_peers
    exact = [group.count * max_peers / total for group in scenario.peers]
    counts = [max(1, math.floor(share)) for share in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - math.floor(exact[i]), reverse=True)
    for index in by_remainder:
        if sum(counts) >= max_peers:
            break
        counts[index] += 1
    while sum(counts) > max_peers:  # the minimum of one each pushed it over: take from the largest
        largest = max(range(len(counts)), key=lambda i: counts[i])
        counts[largest] -= 1
    return counts


def _scaled_bounds(churn: schema.Churn, factor: float) -> schema.Churn:
    min_alive = math.floor(churn.min_alive * factor)
    max_alive = None if churn.max_alive is None else max(1, math.ceil(churn.max_alive * factor))
    return churn.model_copy(update={"min_alive": min_alive, "max_alive": max_alive})
