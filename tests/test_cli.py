"""The console scripts work as a user would run them."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest


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
        assert transport.config.max_incoming == 10 and transport.config.max_incoming_per_host is None
    default = _listening_transport(build_parser().parse_args(["serve"]))
    assert default.config.max_incoming_per_host == 64
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dht", "--max-connections-per-host", "-3"])
    assert "argument --max-connections-per-host: must be 0 or more, got -3" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ping", "127.0.0.1:1", "--count", "0"], "argument --count: must be 1 or more, got 0"),
        (["ping", "127.0.0.1:1", "--size", "-1"], "argument --size: must be 0 or more, got -1"),
        (["ping", "127.0.0.1:1", "--timeout", "0"], "argument --timeout: must be a positive number"),
        (["ping", "nonsense"], "argument endpoint: invalid endpoint 'nonsense'"),
        (["serve", "--port", "70000"], "argument --port: must be a port number from 0 to 65535, got 70000"),
        (["serve", "--duration", "-1"], "argument --duration: must be a positive number of seconds"),
        (["serve", "--grace", "-1"], "argument --grace: must be 0 or more seconds, got -1"),
        (["dht", "--initial-peers", "nonsense"], "argument --initial-peers: invalid endpoint 'nonsense'"),
        (["expert-server", "--experts", "ffn"], "argument --experts: invalid expert pattern 'ffn'"),
        (["expert-server", "--experts", "f.[0:2]", "--hidden-dim", "0"], "argument --hidden-dim: must be 1"),
        (["expert-server", "--experts", "f.[0:2]", "--fault-rate", "2"], "argument --fault-rate: must be a"),
        (["expert-server", "--experts", "f.[0:2]", "--lr", "-1"], "argument --lr: must be a finite number"),
        (["expert-server", "--experts", "f.[0:2]", "--max-batch-size", "0"], "argument --max-batch-size:"),
        (["expert-server", "--experts", "f.[0:2]", "--announce-period", "0"], "argument --announce-period:"),
        (["expert-server", "--experts", "f.[0:2]", "--torch-threads", "-1"], "argument --torch-threads:"),
        (["expert-server", "--experts", "f.[0:2]", "--expert-type", "x"], "argument --expert-type: invalid"),
        # words where numbers belong: the error says what was expected, never a parser's name
        (["ping", "127.0.0.1:1", "--count", "two"], "argument --count: expected a whole number, got 'two'"),
        (["ping", "127.0.0.1:1", "--size", "big"], "argument --size: expected a whole number, got 'big'"),
        (["serve", "--port", "http"], "argument --port: expected a whole number, got 'http'"),
        (["serve", "--grace", "soon"], "argument --grace: expected a number, got 'soon'"),
        (["dht", "--dht-k", "2.5"], "argument --dht-k: expected a whole number, got '2.5'"),
        (["dht", "--dht-rpc-timeout", "3s"], "argument --dht-rpc-timeout: expected a number, got '3s'"),
        (["expert-server", "--experts", "f.[0:2]", "--fault-rate", "x"], "argument --fault-rate: expected a"),
        (["expert-server", "--experts", "f.[0:2]", "--lr", "fast"], "argument --lr: expected a number"),
        (
            ["expert-server", "--experts", "ffn.[0:100000].[0:100000]"],
            "argument --experts: 'ffn.[0:100000].[0:100000]' names 10,000,000,000 experts; "
            "one server hosts at most 4,096",
        ),
    ],
)
def test_core_bad_values_name_the_flag_the_user_typed(capsys, argv: list[str], message: str) -> None:
    """Checked while parsing, before anything starts or any internal field name can leak out."""
    from hivemind_core.cli import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_core_errors_found_at_start_name_the_flag(capsys, tmp_path) -> None:
    from hivemind_core.cli import main

    cases = [
        (
            ["expert-server", "--experts", "ffn.[0:4000]", "more.[0:4000]"],
            "argument --experts: the patterns name 8,000 experts in all; one server hosts at most 4,096",
        ),
        (
            ["expert-server", "--experts", "ffn.[0:2]", "--device", "nodevice"],
            "argument --device: torch cannot",
        ),
        (["dht", "--identity", str(tmp_path / "missing" / "peer.key")], "argument --identity: cannot read"),
    ]
    (tmp_path / "garbage.key").write_bytes(b"not a key")
    cases.append((["dht", "--identity", str(tmp_path / "garbage.key")], "is not a key file written by"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases.append(
            (
                ["serve", "--port", str(port)],
                f"cannot listen on --host 127.0.0.1 --port {port}: Address already",
            )
        )
        for argv, message in cases:
            assert main([*argv, "--duration", "5"]) == 2, argv
            assert message in capsys.readouterr().err, argv


def test_sim_help_pages_show_each_default_once(capsys) -> None:
    from hivemind_sim.cli import build_parser

    expected = {
        "run": [
            "root seed (default: the file's)",
            "(default: runs/<name>/<seed>/, or the first free runs/<name>/<seed>-N/ when that holds another "
            "run's report)",
            "--overwrite replace the report in the folder even when it is another run's",
        ],
        "sweep": ["each with its own seed (default: 1)", "(default: CPUs)"],
        "validate": ["e.g. peers.0.count=8 or duration=2m"],
        "compare": ["also write compare.md and plots here"],
    }
    for command, snippets in expected.items():
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        page = " ".join(capsys.readouterr().out.split())
        for snippet in snippets:
            assert snippet in page, (command, snippet)
        for unset in ("(default: None)", "(default: False)", "(default: [])"):
            assert unset not in page, (command, unset)
        assert ") (default:" not in page, f"{command}: a default said twice"


def test_core_help_pages_show_defaults(capsys) -> None:
    from hivemind_core.cli import EXPERT_TYPES, build_parser

    expected = {
        "serve": ["--grace GRACE seconds to finish requests on stop (default: 1.0)"],
        "dht": ["(default: 1024)", "(default: 127.0.0.1)"],
        "expert-server": ["(default: 512)", "(default: 0.001)", "(default: 10.0)", "(default: cpu)"],
        "ping": ["number of round trips (default: 5)", "(default: 5.0)"],
    }
    for command, snippets in expected.items():
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        page = " ".join(capsys.readouterr().out.split())  # wrapped at the terminal width
        for snippet in snippets:
            assert snippet in page, (command, snippet)
        assert "(default: None)" not in page and "(default: False)" not in page
    from hivemind_core.moe.layers import EXPERT_TYPES as BUILT_IN

    assert sorted(EXPERT_TYPES) == sorted(BUILT_IN), "the CLI's --expert-type choices are the built-in types"


LITTLE = """\
schema_version: 1
name: little
seed: 2
warmup: 5s
duration: 6s
sample_interval: 3s
peers:
  - {group: dht, role: dht, count: 3, link: {uplink: 20Mbit/s, downlink: 100Mbit/s, latency: 10ms}}
workload:
  dht: {stores_per_second: 2, gets_per_second: 5, keys: 20}
assertions:
  - peers.alive.min >= 1
"""


def test_sim_run_that_stopped_early_exits_3_says_why_and_keeps_its_report(
    tmp_path, monkeypatch, capsys
) -> None:
    """The runner records an internal error as `stopped` instead of raising: exit 3, not the 1 of
    a failed assertion, with the report of what was measured until then."""
    import json

    from hivemind_sim.cli import main
    from hivemind_sim.scenario.run import runner

    run_scenario = runner.run_scenario
    why = "the runner failed at 4.0 s: RuntimeError: boom"

    def stopping(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = run_scenario(*args, **kwargs)
        result.stopped = why
        return result

    monkeypatch.setattr(runner, "run_scenario", stopping)
    (tmp_path / "little.yaml").write_text(LITTLE)
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "little.yaml"), "--out", str(out), "--quiet"]) == 3
    assert f"hivemind-sim: the run stopped early: {why}\n" in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text())["stopped"] == why
    assert f"**This run stopped early**: {why}." in (out / "report.md").read_text()

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_scenario", interrupted)
    assert main(["run", str(tmp_path / "little.yaml"), "--out", str(tmp_path / "ctrl-c"), "--quiet"]) == 130
    assert capsys.readouterr().err.endswith("hivemind-sim: interrupted\n"), "one line, no traceback"


def test_sim_help_pages_list_the_exit_statuses(capsys) -> None:
    from hivemind_sim.cli import build_parser

    for command in ([], ["run"], ["sweep"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args([*command, "--help"])
        page = " ".join(capsys.readouterr().out.split())
        for status in (
            "Exit status: 0 every assertion holds;",
            "1 an assertion failed or could not be judged;",
            "2 an invalid file or command line;",
            "3 a run stopped early on an internal error (its report says why);",
            "130 interrupted (Ctrl-C)",
        ):
            assert status in page, (command, status)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sweep", "--help"])
    page = " ".join(capsys.readouterr().out.split())
    assert "Ctrl-C starts no new run and waits for those in flight; a second Ctrl-C abandons them." in page


def test_metrics_without_the_extra_name_the_flag_and_the_package(monkeypatch) -> None:
    import argparse

    from hivemind_core.cli import _serve_metrics

    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "hivemind_core.prometheus", raising=False)
    args = argparse.Namespace(metrics_port=0, host="127.0.0.1")
    with pytest.raises(ValueError, match=r"argument --metrics-port: .* needs the prometheus-client package"):
        _serve_metrics(args, None, None)


def test_a_peer_logs_with_the_time_at_the_level_asked() -> None:
    """Run as a program, a peer's log lines carry their time; --log-level sets how much."""
    command = [sys.executable, "-m", "hivemind_core.cli", "--log-level", "debug", "dht", "--duration", "0.5"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d DEBUG asyncio: ", run.stderr, re.MULTILINE), run.stderr
    quiet = subprocess.run(
        [*command[:4], "warning", *command[5:]], capture_output=True, text=True, timeout=60
    )
    assert quiet.returncode == 0 and "DEBUG" not in quiet.stderr
