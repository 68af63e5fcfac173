"""The console scripts work as a user would run them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from hivemind_sim.cli import main as sim_main


def test_sim_demo_prints_a_report_and_digest(capsys) -> None:
    assert sim_main(["demo", "--peers", "30", "--rpcs", "4"]) == 0
    out = capsys.readouterr().out
    assert "Simulated swarm of 30 peers" in out
    assert "trace digest:" in out


def test_sim_demo_json_and_bad_arguments(capsys) -> None:
    assert sim_main(["demo", "--peers", "20", "--rpcs", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["peers"] == 20 and len(report["digest"]) == 64
    assert sim_main(["demo", "--peers", "1"]) == 2
    assert "a swarm needs at least 2 peers" in capsys.readouterr().err


def test_core_serve_and_ping_as_real_processes() -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "hivemind_core.cli", "serve", "--duration", "60"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = server.stdout.readline()
        assert first_line.startswith("listening on 127.0.0.1:"), first_line
        endpoint = first_line.split()[-1]
        ping = subprocess.run(
            [sys.executable, "-m", "hivemind_core.cli", "ping", endpoint, "--count", "3", "--size", "4096"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ping.returncode == 0, ping.stderr
        assert "3 sent, 3 answered, 0 failed" in ping.stdout
    finally:
        server.terminate()
        remaining, _ = server.communicate(timeout=30)
    assert server.returncode == 0
    assert "stopped" in remaining


def test_core_ping_reports_an_unreachable_peer() -> None:
    ping = subprocess.run(
        [sys.executable, "-m", "hivemind_core.cli", "ping", "127.0.0.1:1", "--count", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ping.returncode == 1
    assert "cannot connect to 127.0.0.1:1" in ping.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "hivemind_core.cli", "ping", "nonsense"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "invalid endpoint 'nonsense'" in bad.stderr


def test_core_cli_loads_torch_only_for_the_expert_server() -> None:
    """ping, serve and dht start fast: neither importing the CLI nor running ping imports torch."""
    script = """
import contextlib, sys
from hivemind_core.cli import main
with contextlib.suppress(SystemExit):
    main(["ping", "--help"])
assert main(["ping", "127.0.0.1:1", "--count", "1", "--timeout", "5"]) == 1
heavy = sorted(name for name in ("torch", "numpy") if name in sys.modules)
assert not heavy, f"hivemind-core ping imported {heavy}"
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: hivemind-core ping" in result.stdout


def test_connection_caps_reach_the_transport_and_bad_values_name_the_flag(capsys) -> None:
    from hivemind_core.cli import _listening_transport, build_parser

    for command in ("serve", "dht"):
        args = build_parser().parse_args(
            [command, "--max-connections", "10", "--max-connections-per-host", "0"]
        )
        transport = _listening_transport(args)
        assert transport.max_incoming == 10 and transport.max_incoming_per_host is None
    default = _listening_transport(build_parser().parse_args(["serve"]))
    assert default.max_incoming_per_host == 64
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dht", "--max-connections-per-host", "-3"])
    assert "argument --max-connections-per-host: must be 0 or more, got -3" in capsys.readouterr().err
