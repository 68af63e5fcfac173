"""DHT peers as separate OS processes on loopback, and the blocking DHT facade."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hivemind_core.dht import DHT, BootstrapError
from hivemind_sim.swarms.processes import PeerProcess, dht_peer


@pytest.fixture
def three_processes() -> Iterator[list[PeerProcess]]:
    started: list[PeerProcess] = []
    try:
        started.append(dht_peer("--duration", "120"))
        started.append(dht_peer("--duration", "120", "--initial-peers", started[0].endpoint))
        started.append(
            dht_peer("--duration", "120", "--initial-peers", started[0].endpoint, started[1].endpoint)
        )
        yield started
    finally:
        for peer in started:
            peer.stop()


def test_store_and_get_through_peers_in_other_processes(three_processes) -> None:
    first, second, third = three_processes
    with (
        DHT(initial_peers=[second.endpoint]) as writer,
        DHT(initial_peers=[third.endpoint], client_mode=True) as reader,
    ):
        for i in range(20):
            assert writer.store(f"key{i}", {"i": i}, writer.now() + 60)
        for i in range(20):
            found = reader.get(f"key{i}")
            assert found is not None and found.value == {"i": i}
        nearest = reader.find_nearest(int(first.banner.split()[2], 16), k=1)
        assert nearest[0].endpoint == first.endpoint


def test_processes_stop_cleanly_on_sigterm(three_processes) -> None:
    assert three_processes[2].stop().strip().endswith("stopped")
    assert three_processes[2].process.returncode == 0


def test_identity_file_keeps_the_node_id_across_restarts(tmp_path) -> None:
    key_file = tmp_path / "peer.key"
    first = dht_peer("--identity", str(key_file))
    first.stop()
    assert key_file.stat().st_mode & 0o777 == 0o600
    second = dht_peer("--identity", str(key_file))
    second.stop()
    assert first.banner.split()[2] == second.banner.split()[2], "the node id must survive a restart"


def test_facade_reports_a_failed_bootstrap() -> None:
    with pytest.raises(BootstrapError, match="cannot join the DHT"):
        DHT(initial_peers=["127.0.0.1:1"])
