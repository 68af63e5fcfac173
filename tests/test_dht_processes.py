"""DHT peers as separate OS processes on loopback, and the blocking DHT facade."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from hivemind_core.dht import DHT, BootstrapError


class PeerProcess:
    """A ``hivemind-core dht`` process; ended by its PID when the test is done."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hivemind_core.cli", "dht", "--duration", "120", *args],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.banner = self.process.stdout.readline().strip()
        assert self.banner.startswith("dht peer "), self.banner
        self.node_id = self.banner.split()[2]
        self.endpoint = self.banner.split()[-1]

    def stop(self) -> str:
        self.process.terminate()
        out, _ = self.process.communicate(timeout=30)
        return out


@pytest.fixture
def three_processes() -> Iterator[list[PeerProcess]]:
    started: list[PeerProcess] = []
    try:
        started.append(PeerProcess())
        started.append(PeerProcess("--initial-peers", started[0].endpoint))
        started.append(PeerProcess("--initial-peers", started[0].endpoint, started[1].endpoint))
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
        nearest = reader.find_nearest(int(first.node_id, 16), k=1)
        assert nearest[0].endpoint == first.endpoint


def test_processes_stop_cleanly_on_sigterm(three_processes) -> None:
    assert three_processes[2].stop().strip().endswith("stopped")
    assert three_processes[2].process.returncode == 0


def test_identity_file_keeps_the_node_id_across_restarts(tmp_path) -> None:
    key_file = tmp_path / "peer.key"
    first = PeerProcess("--identity", str(key_file))
    first.stop()
    assert key_file.stat().st_mode & 0o777 == 0o600
    second = PeerProcess("--identity", str(key_file))
    second.stop()
    assert first.node_id == second.node_id


def test_facade_reports_a_failed_bootstrap() -> None:
    with pytest.raises(BootstrapError, match="cannot join the DHT"):
        DHT(initial_peers=["127.0.0.1:1"])
