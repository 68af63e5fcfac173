"""Expert server throughput: client processes call random experts of one server over TCP.

A server process hosts ``--experts`` ffn experts (hid -> 4*hid -> hid, GELU, LayerNorm, Adam).
Each client process sends ``--batches-per-client`` batches of ``--batch`` samples to random
experts through ``RemoteExpert`` (with ``--mode fwdbwd`` it backpropagates the output's sum,
so the server also trains). The same block is then timed in-process on one thread. Final
line: JSON with remote_samples_per_s, local_samples_per_s and remote_over_local.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time

import torch

from hivemind_core.moe.layers import FeedforwardBlock
from hivemind_core.moe.server.backend import adam
from hivemind_sim.swarms.processes import expert_server


def client_main(args: argparse.Namespace) -> None:
    """One client process: warm up, say ready, wait for go, run, report samples done."""
    from hivemind_core.bridge import LoopThread
    from hivemind_core.moe.client import MoEClient, RemoteExpert
    from hivemind_core.net import RPC, TcpTransport

    torch.set_num_threads(1)
    bridge = LoopThread()
    rpc = bridge.run(_make_rpc(RPC, TcpTransport))
    client = MoEClient(rpc=rpc, dht=None, bridge=bridge)
    experts = [
        RemoteExpert(f"ffn.{i}", args.endpoint, client, forward_timeout=60, backward_timeout=60)
        for i in range(args.experts)
    ]
    rng = random.Random(args.seed)
    batch = torch.randn(args.batch, args.hid)

    def one_batch() -> None:
        expert = experts[rng.randrange(len(experts))]
        if args.mode == "fwd":
            with torch.no_grad():
                expert(batch)
        else:
            expert(batch.requires_grad_()).sum().backward()

    one_batch()
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(args.batches_per_client):
        one_batch()
    print(f"done {args.batches_per_client * args.batch}", flush=True)
    bridge.run(rpc.transport.close())
    bridge.close()


async def _make_rpc(rpc_class, transport_class):  # type: ignore[no-untyped-def]
    return rpc_class(transport_class())


def local_throughput(args: argparse.Namespace) -> float:
    torch.set_num_threads(1)
    block = FeedforwardBlock(args.hid)
    optimizer = adam(block.parameters(), lr=1e-3)  # the experts' own optimizer, for a fair comparison
    batch = torch.randn(args.batch, args.hid)
    batches = args.clients * args.batches_per_client

    def one_batch() -> None:
        if args.mode == "fwd":
            with torch.no_grad():
                block(batch)
        else:
            x = batch.clone().requires_grad_()
            block(x).sum().backward()
            optimizer.step()
            optimizer.zero_grad()

    one_batch()
    started = time.perf_counter()
    for _ in range(batches):
        one_batch()
    return batches * args.batch / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--hid", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batches-per-client", type=int, default=32)
    parser.add_argument("--mode", choices=["fwd", "fwdbwd"], default="fwdbwd")
    parser.add_argument("--device", default="cpu", help="the server's torch device (cpu or cuda)")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args)
        return

    server = expert_server(
        f"ffn.[0:{args.experts}]", hidden_dim=args.hid, args=["--device", args.device, "--duration", "900"]
    )
    clients: list[subprocess.Popen[str]] = []
    try:
        endpoint = server.endpoint
        for i in range(args.clients):
            clients.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--client",
                        "--endpoint",
                        endpoint,
                        "--seed",
                        str(i),
                        *[
                            f"--{k.replace('_', '-')}={v}"
                            for k, v in vars(args).items()
                            if k in ("experts", "hid", "batch", "batches_per_client", "mode")
                        ],
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for client in clients:
            assert client.stdout is not None and client.stdout.readline().strip() == "ready"
        started = time.perf_counter()
        for client in clients:
            assert client.stdin is not None
            client.stdin.write("go\n")
            client.stdin.flush()
        samples = sum(int(client.stdout.readline().split()[1]) for client in clients)  # type: ignore[union-attr]
        wall = time.perf_counter() - started
    finally:
        for client in clients:
            if client.poll() is None:
                client.terminate()
            client.communicate(timeout=60)
        server.stop()
    remote = samples / wall
    local = local_throughput(args)
    print(
        json.dumps(
            {
                "experts": args.experts,
                "hid": args.hid,
                "batch": args.batch,
                "clients": args.clients,
                "batches_per_client": args.batches_per_client,
                "mode": args.mode,
                "device": args.device,
                "remote_samples_per_s": round(remote, 1),
                "local_samples_per_s": round(local, 1),
                "remote_over_local": round(remote / local, 3),
                "wall_s": round(wall, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
