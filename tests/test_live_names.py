"""LiveNames: what ScenarioPeers.alive(names) returns, kept up to date instead of rebuilt."""

from __future__ import annotations

import random

from hivemind_sim.scenario.run.live import LiveNames


def test_it_follows_starts_and_stops_in_the_order_of_its_names() -> None:
    names = [f"peer-{i}" for i in range(50)]
    up = {"peer-3", "peer-7", "outsider"}
    live = LiveNames(names, up)
    rng = random.Random(0)
    for _ in range(2_000):
        name = rng.choice([*names, "outsider"])
        if name in up:
            up.discard(name)
            live.stopped(name)
        else:
            up.add(name)
            live.started(name)
        assert list(live) == [n for n in names if n in up]  # what a pass over every name gave
        assert len(live) == len(list(live))


def test_random_choice_draws_what_it_drew_from_the_rebuilt_list() -> None:
    """Same draws, same digests: the runner draws requesters from it with random.choice."""
    names = [f"peer-{i}" for i in range(100)]
    live = LiveNames(names, names[::3])
    a, b = random.Random(5), random.Random(5)
    assert [a.choice(live) for _ in range(50)] == [b.choice(names[::3]) for _ in range(50)]


def test_starting_twice_or_stopping_a_stopped_peer_changes_nothing() -> None:
    live = LiveNames(["a", "b"], ["a"])
    live.started("a")
    live.stopped("b")
    assert list(live) == ["a"] and live[0:5] == ["a"]
