"""Hostile experts and clients: what they cost the honest side. Three modes, each ending in JSON.

Default: an expert server under oversized requests. A server process hosts ``ffn.[0:2]``
(hidden size ``--hid``). This process is a good client that calls ``moe.forward`` with
``--batch`` samples, one call after another, for ``--seconds`` while nobody else talks to the
server, then again while ``--hostile`` child processes each keep sending requests that claim
``--rows`` rows (with the matching number of bytes, so only the batch limit can refuse them).
JSON: the good client's success rate, p50 and p99 latency before and during, and how many
hostile requests were refused.

``--junk``: the issue-14 swarm in simulation, 8 servers of 4 experts and 3 trainers, where
3 servers answer NaN and 2 answer garbage (finite, the right shape) for 4 minutes. JSON: step
success, loss (final, and the worst 5-second mean), expert failures, bans and rejected answers
in that window. Run it on an older tree (PYTHONPATH) for the figures before a change.

``--check-cost``: ``--servers`` expert-server processes over TCP and one DMoE layer; forwards
of ``--batch`` samples with the answer check on and off, interleaved. JSON: forward p50 either
way and the check's own time per forward (it compares the answers to each sample, see
``hivemind_core/moe/client/outliers.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

from hivemind_core.dht import DHT
from hivemind_core.moe.client import MoEClient, MoEConfig, RemoteMixtureOfExperts
from hivemind_core.net import RPC, RemoteError, TcpConfig, TcpTransport
from hivemind_sim.scenario.format.loader import parse_scenario
from hivemind_sim.scenario.run.runner import run_scenario
from hivemind_sim.swarms.processes import PeerProcess, expert_server

JUNK = """\
schema_version: 1
name: junk_experts
seed: {seed}
warmup: 20s
duration: 270s
sample_interval: 5s
topology: {{kind: world_regions, jitter: 5%}}
peers:
  - group: servers
    role: server
    count: 8
    experts: 4
    regions: [eu-west, eu-central, us-east]
    link: {{uplink: 100Mbit/s, downlink: 500Mbit/s, latency: 5ms}}
    hardware: {{device: 50MFLOP/s}}
  - group: trainers
    role: trainer
    count: 3
    regions: [eu-west, eu-central, us-east]
    link: {{uplink: 50Mbit/s, downlink: 200Mbit/s, latency: 10ms}}
    hardware: {{device: 1TFLOP/s}}
events:
  - name: nan
    at: 15s
    duration: 4m
    action: misbehave
    output: nan
    select: {{peers: [servers-0, servers-1, servers-2]}}
  - name: junk
    at: 15s
    duration: 4m
    action: misbehave
    output: garbage
    select: {{peers: [servers-3, servers-4]}}
workload:
  training:
    model: {{hidden_dim: 32, expert: ffn}}
    grid: [8, 4]
    k_best: 4
    k_min: 1
    forward_timeout: 2s
    backward_timeout: 3s
    batch_size: 16
    optimizer: {{name: adam, lr: 0.003}}
"""


def hostile_main(args: argparse.Namespace) -> None:
    """One hostile process: send oversized claims until stdin closes; report refusals."""
    body = [
        "ffn.0",
        [["float32", [args.rows, args.hid], "none", bytes(4 * args.rows * args.hid), b""]],
        "none",
    ]

    async def run() -> tuple[int, int]:
        rpc = RPC(TcpTransport(TcpConfig(max_frame_size=1 << 30)))
        refused = other = 0
        reader = asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        print("ready", flush=True)
        while not reader.done():
            try:
                await rpc.call(args.endpoint, "moe.forward", body, timeout=60)
                other += 1
            except RemoteError:
                refused += 1
            except Exception:
                other += 1
        await rpc.transport.close()
        return refused, other

    refused, other = asyncio.run(run())
    print(f"done {refused} {other}", flush=True)


async def good_client(endpoint: str, args: argparse.Namespace) -> dict[str, float]:
    """Forward calls, one after another, for ``args.seconds``: success rate and latencies in ms."""
    from hivemind_core.moe.tensors import deserialize_tensors, serialize_tensors

    rpc = RPC(TcpTransport())
    x = serialize_tensors([torch.randn(args.batch, args.hid)])
    latencies, failures = [], 0
    stop = time.perf_counter() + args.seconds
    try:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            try:
                deserialize_tensors(await rpc.call(endpoint, "moe.forward", ["ffn.1", x, "none"], timeout=30))
                latencies.append(1000 * (time.perf_counter() - started))
            except Exception:
                failures += 1
    finally:
        await rpc.transport.close()
    latencies.sort()
    calls = len(latencies) + failures
    return {
        "calls": calls,
        "success_rate": round(len(latencies) / max(calls, 1), 4),
        "p50_ms": round(statistics.median(latencies), 2) if latencies else float("nan"),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2)
        if latencies
        else float("nan"),
    }


def junk_main(args: argparse.Namespace) -> None:
    """The junk-answering swarm: what training saw while 5 of 8 servers answered junk."""
    started = time.perf_counter()
    result = run_scenario(parse_scenario(JUNK.format(seed=args.seed), filename="junk_experts.yaml"))
    window = result.recorder.summary(during="junk")
    rows = [row for row in result.recorder.timeseries() if 15 <= row["time"] < 255]
    losses = [row["train.loss.mean"] for row in rows if row.get("train.loss.mean") is not None]
    figures: dict[str, Any] = {
        "window_s": 240,
        "step_success_rate": round(window["moe.step.success_rate"], 4),
        "steps": window["moe.step.count"],
        "loss_final": round(window["train.loss.final"], 4),
        "loss_worst_5s_mean": round(max(losses), 4),
        "expert_failures_per_5s": round(window["moe.expert_failures.total"] / 48, 1),
        "bans": window["moe.bans.total"],
        "rejected": window.get("moe.rejected.total"),  # absent before the answer check
        "expert_call_success_rate": round(window["moe.expert_call.success_rate"], 4),
        "digest": result.digest,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(figures))


class _TimedMixture(RemoteMixtureOfExperts):
    """The layer, timing its answer check (``_vet``) per forward."""

    vet_seconds: list[float]

    def _vet(self, round_: Any, answered: Any) -> None:
        began = time.perf_counter()
        super()._vet(round_, answered)
        self.vet_seconds.append(time.perf_counter() - began)


def check_cost_main(args: argparse.Namespace) -> None:
    """Forwards with the answer check on and off, in alternating blocks of 10."""
    options = ["--torch-threads", "1", "--duration", "900"]
    servers: list[PeerProcess] = []
    dht = client = None
    try:
        for i in range(args.servers):
            initial = [servers[0].endpoint] if servers else []
            servers.append(
                expert_server(
                    f"ffn.[{4 * i}:{4 * i + 4}]", hidden_dim=args.hid, args=options, initial_peers=initial
                )
            )
        dht = DHT(initial_peers=[server.endpoint for server in servers], client_mode=True)
        client = MoEClient.from_dht(dht)
        checked = _TimedMixture(
            in_features=args.hid,
            grid_size=(4 * args.servers,),
            uid_prefix="ffn",
            client=client,
            k_best=args.k_best,
        )
        checked.vet_seconds = []
        unchecked = RemoteMixtureOfExperts(
            MoEConfig(
                in_features=args.hid,
                grid_size=(4 * args.servers,),
                uid_prefix="ffn",
                k_best=args.k_best,
                answer_check=None,
            ),
            client=client,
        )
        unchecked.proj = checked.proj
        x = torch.randn(args.batch, args.hid)
        times: dict[str, list[float]] = {"on": [], "off": []}
        with torch.no_grad():
            for layer in (checked, unchecked):  # warm up: connections, prefix cache
                layer(x)
            checked.vet_seconds.clear()
            for block in range(2 * args.blocks):
                name, layer = ("on", checked) if block % 2 == 0 else ("off", unchecked)
                for _ in range(10):
                    began = time.perf_counter()
                    layer(x)
                    times[name].append(time.perf_counter() - began)
        vet_ms = 1000 * sum(checked.vet_seconds) / len(times["on"])
        figures = {
            "servers": args.servers,
            "hid": args.hid,
            "batch": args.batch,
            "k_best": args.k_best,
            "forwards_each": len(times["on"]),
            "forward_p50_ms_check_on": round(1000 * statistics.median(times["on"]), 3),
            "forward_p50_ms_check_off": round(1000 * statistics.median(times["off"]), 3),
            "check_ms_per_forward": round(vet_ms, 4),
            "check_share_of_forward": round(vet_ms / (1000 * statistics.median(times["on"])), 4),
            "rejected": checked.stats.rejected,
        }
    finally:
        if dht is not None:
            if client is not None:
                dht.bridge.run(client.close())
            dht.shutdown()
        for server in servers:
            server.stop()
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hid", type=int, default=16)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows each hostile request claims")
    parser.add_argument("--batch", type=int, default=16, help="the good client's batch")
    parser.add_argument("--hostile", type=int, default=2, help="hostile client processes")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--hostile-client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--junk", action="store_true", help="the NaN and garbage swarm, simulated")
    parser.add_argument("--seed", type=int, default=0, help="--junk: the scenario's seed")
    parser.add_argument("--check-cost", action="store_true", help="the answer check's cost per forward")
    parser.add_argument(
        "--servers", type=int, default=2, help="--check-cost: server processes (4 experts each)"
    )
    parser.add_argument("--k-best", type=int, default=4, help="--check-cost: experts per sample")
    parser.add_argument("--blocks", type=int, default=10, help="--check-cost: blocks of 10 forwards each way")
    args = parser.parse_args()
    if args.hostile_client:
        hostile_main(args)
        return
    if args.junk:
        junk_main(args)
        return
    if args.check_cost:
        check_cost_main(args)
        return

    server = expert_server(
        "ffn.[0:2]", hidden_dim=args.hid, args=["--torch-threads", "1", "--duration", "900"]
    )
    hostile: list[subprocess.Popen[str]] = []
    try:
        before = asyncio.run(good_client(server.endpoint, args))
        for _ in range(args.hostile):
            hostile.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--hostile-client",
                        f"--endpoint={server.endpoint}",
                        f"--rows={args.rows}",
                        f"--hid={args.hid}",
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for process in hostile:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        during = asyncio.run(good_client(server.endpoint, args))
        refused = other = 0
        for process in hostile:
            output, _ = process.communicate("stop\n", timeout=120)
            _, r, o = output.split()
            refused, other = refused + int(r), other + int(o)
    finally:
        for process in hostile:
            if process.poll() is None:
                process.terminate()
                process.communicate(timeout=60)
        server.stop()
    print(
        json.dumps(
            {
                "hid": args.hid,
                "rows_claimed": args.rows,
                "hostile_clients": args.hostile,
                "good_before": before,
                "good_during": during,
                "hostile_refused": refused,
                "hostile_other": other,
            }
        )
    )


if __name__ == "__main__":
    main()
