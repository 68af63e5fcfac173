"""Real peers in network namespaces (``hivemind-sim deploy --netns``), where namespaces may be made.

The checks run in ``tests/netns_checks.py``, started through ``reexec_in_namespace`` (root in
namespaces of its own, PID 1 there: everything it starts ends with it); pytest stays outside
and judges what it measured. Elsewhere they are skipped with the reason ``netns_unavailable``
gives.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from hivemind_sim.deploy import netns
from hivemind_sim.deploy.netns import NamespaceNetwork, netns_unavailable, reexec_in_namespace

CHECKS = Path(__file__).with_name("netns_checks.py")
STATUS = re.compile(r"experts answering (\d+), steps (\d+) \((\d+) failed\), loss ([\d.]+)")


@pytest.fixture(scope="module")
def namespaces() -> None:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)


def run_check(check: str, folder: Path, timeout: float) -> dict[str, Any]:
    result = folder / f"{check}.json"
    code = reexec_in_namespace([sys.executable, str(CHECKS), check, str(result)], timeout=timeout)
    assert code == 0, f"{check} failed inside its namespace (its output is above)"
    return json.loads(result.read_text())


@pytest.mark.timeout(150)
def test_three_peers_in_three_namespaces_train_through_each_other(namespaces: None, tmp_path: Path) -> None:
    result = run_check("train", tmp_path, timeout=130)
    lines = result["trainer"]
    listening = re.search(r"listening on (\S+?),", lines[0])
    assert listening, lines[0]
    endpoints = [*result["announced"], listening.group(1)]
    hosts = [ipaddress.ip_address(endpoint.rpartition(":")[0]) for endpoint in endpoints]
    assert len(set(hosts)) == 3 and all(host in netns.SUBNET and not host.is_loopback for host in hosts)
    assert result["trainer_exit"] == 0, lines
    assert lines[-2].startswith("trained:"), lines
    trained = STATUS.search(lines[-2])
    statuses = [found for found in map(STATUS.search, lines) if found and int(found.group(2)) > 0]
    assert trained and statuses, lines
    first = statuses[0]
    answering, steps, failed, loss = trained.groups()
    assert int(steps) > 0 and int(failed) < int(steps), trained.string
    assert int(answering) > 4, f"experts of both servers (4 each) answered: {trained.string}"
    assert float(loss) < float(first.group(4)), f"the loss fell: {first.string} -> {trained.string}"


@pytest.mark.timeout(90)
def test_tbf_caps_a_peers_uplink_and_downlink_until_lifted(namespaces: None, tmp_path: Path) -> None:
    result = run_check("rates", tmp_path, timeout=80)
    least = result["size"] * 8 / result["rate"]  # seconds at the cap
    seconds = result["seconds"]
    for direction in ("down", "up"):
        capped, free = seconds[f"{direction}_capped"], seconds[f"{direction}_free"]
        assert capped >= 0.9 * least, f"{direction}link: {capped:.3f} s, the cap allows {least:.3f} s"
        assert free < capped / 4, f"{direction}link uncapped: {free:.3f} s against {capped:.3f} s capped"


@pytest.mark.timeout(90)
def test_a_partition_cuts_across_sides_not_within_and_heal_restores(namespaces: None, tmp_path: Path) -> None:
    seen = run_check("partition", tmp_path, timeout=80)
    everyone = {"a->b": True, "b->a": True, "a->c": True, "c->b": True}
    assert seen["joined"] == everyone
    assert seen["cut"] == {"a->b": True, "b->a": True, "a->c": False, "c->b": False}
    assert seen["healed"] == everyone


def test_addresses_are_given_in_order_one_slash_24_each() -> None:
    network = NamespaceNetwork()
    assert [network.host(name) for name in ("a", "b", "a")] == ["10.77.1.1", "10.77.2.1", "10.77.1.1"]
    hosts = [ipaddress.ip_address(network.host(f"p{i}")) for i in range(600)]
    assert len(set(hosts)) == 600 and network.bridge_address not in map(str, hosts)
    assert all(host in netns.SUBNET and host != netns.SUBNET.network_address for host in hosts)


def test_the_network_is_built_only_inside_its_own_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(netns.INSIDE, raising=False)
    with pytest.raises(RuntimeError, match="inside reexec_in_namespace"), NamespaceNetwork():
        pass


def test_without_pyroute2_it_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyroute2", None)
    assert netns_unavailable() == (
        "network namespaces need pyroute2, which is not installed: pip install '.[deploy]'"
    )


def test_where_unshare_is_refused_it_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for tool in ("unshare", "nsenter"):
        script = tmp_path / tool
        script.write_text(f"#!/bin/sh\necho '{tool}: unshare failed: Operation not permitted' >&2\nexit 1\n")
        script.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(netns.INSIDE, raising=False)
    netns._namespace_prefix.cache_clear()
    try:
        reason = netns_unavailable()
    finally:
        netns._namespace_prefix.cache_clear()
    assert reason is not None and "\n" not in reason
    assert reason.startswith("network namespaces are not permitted here: unshare ")
    assert "(unshare failed: Operation not permitted)" in reason
    assert reason.endswith("run as root or enable unprivileged user namespaces")
    with pytest.raises(RuntimeError, match="not permitted"):
        monkeypatch.setattr(netns, "_namespace_prefix", lambda: (None, reason))
        reexec_in_namespace(["true"])


def test_without_util_linux_it_names_the_missing_tool(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv(netns.INSIDE, raising=False)
    assert netns_unavailable() == "network namespaces need util-linux's unshare, which is not on PATH"
