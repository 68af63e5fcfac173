"""DMoE throughput against a local mixture of the same experts in one process.

``--servers`` expert-server processes each host ``--experts-per-server`` ffn experts of one
grid; this process runs Linear -> RemoteMixtureOfExperts(k_best) -> Linear over TCP, finding
experts through the DHT. The same model with the experts as local modules (a gate, top-k per
sample, each expert called once on its samples, the softmax-weighted average; the experts' own
fused Adam) is then timed in this process. Inference steps are forward only; training steps
are forward, backward through the experts and optimizer steps. This process runs with
``--threads`` torch threads, each server with ``--server-threads``.

Final line: JSON with samples per second of each kind, remote and local, and their ratios
``fwd_over_local`` and ``fwdbwd_over_local``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from torch import nn

from hivemind_core.dht import DHT
from hivemind_core.moe.client import MoEClient, MoEConfig, RemoteMixtureOfExperts
from hivemind_core.moe.layers import FeedforwardBlock
from hivemind_core.moe.server.backend import adam
from hivemind_sim.swarms.processes import PeerProcess, expert_server


class LocalMixture(nn.Module):
    """The DMoE layer's computation with every expert in this process."""

    def __init__(self, hid: int, experts: int, k_best: int) -> None:
        super().__init__()
        self.k_best = k_best
        self.proj = nn.Linear(hid, experts)
        self.experts = nn.ModuleList(FeedforwardBlock(hid) for _ in range(experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores, chosen = self.proj(x).topk(self.k_best, dim=1)
        outputs = x.new_zeros(x.shape[0], self.k_best, x.shape[1])
        for e, expert in enumerate(self.experts):
            rows, slots = (chosen == e).nonzero(as_tuple=True)
            if rows.numel():
                outputs = outputs.index_put((rows, slots), expert(x[rows]))
        return (torch.softmax(scores, dim=1)[..., None] * outputs).sum(1)


def timed(step: Callable[[], None], steps: int, batch: int) -> float:
    """Samples per second of ``step`` after three warm-up steps (connections, prefix cache)."""
    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - started)


def rates(
    model: nn.Module, optimizers: list[torch.optim.Optimizer], args: argparse.Namespace
) -> dict[str, float]:
    x = torch.randn(args.batch, args.hid)
    y = torch.randint(0, 10, (args.batch,))

    def infer_step() -> None:
        with torch.no_grad():
            model(x)

    def train_step() -> None:
        nn.functional.cross_entropy(model(x), y).backward()
        for optimizer in optimizers:
            optimizer.step()
            optimizer.zero_grad()

    return {
        "fwd": timed(infer_step, args.steps, args.batch),
        "fwdbwd": timed(train_step, args.steps, args.batch),
    }


def remote_rates(args: argparse.Namespace) -> dict[str, float]:
    total = args.servers * args.experts_per_server
    servers: list[PeerProcess] = []
    dht = client = None
    options = ["--device", args.device, "--torch-threads", str(args.server_threads), "--duration", "900"]
    try:
        for i in range(args.servers):
            first, last = i * args.experts_per_server, (i + 1) * args.experts_per_server
            initial = [servers[0].endpoint] if servers else []
            servers.append(
                expert_server(
                    f"ffn.[{first}:{last}]", hidden_dim=args.hid, args=options, initial_peers=initial
                )
            )
        dht = DHT(initial_peers=[server.endpoint for server in servers], client_mode=True)
        client = MoEClient.from_dht(dht)
        model = nn.Sequential(
            nn.Linear(args.hid, args.hid),
            RemoteMixtureOfExperts(
                MoEConfig(
                    in_features=args.hid, grid_size=(total,), uid_prefix="ffn", k_best=args.k_best, k_min=1
                ),
                client=client,
            ),
            nn.Linear(args.hid, 10),
        )
        return rates(model, [torch.optim.Adam(model.parameters())], args)
    finally:
        if dht is not None:
            if client is not None:
                dht.bridge.run(client.close())  # stop background prefix refreshes first
            dht.shutdown()
        for server in servers:
            server.stop()


def local_rates(args: argparse.Namespace) -> dict[str, float]:
    mixture = LocalMixture(args.hid, args.servers * args.experts_per_server, args.k_best)
    model = nn.Sequential(nn.Linear(args.hid, args.hid), mixture, nn.Linear(args.hid, 10))
    experts = {id(p) for p in mixture.experts.parameters()}
    rest = torch.optim.Adam([p for p in model.parameters() if id(p) not in experts])
    return rates(model, [rest, *(adam(expert.parameters(), lr=1e-3) for expert in mixture.experts)], args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--experts-per-server", type=int, default=4)
    parser.add_argument("--hid", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k-best", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30, help="timed steps of each kind")
    parser.add_argument("--device", default="cpu", help="the servers' torch device (cpu or cuda)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of this process (0: torch's default)"
    )
    parser.add_argument(
        "--server-threads", type=int, default=1, help="torch threads per server process (0: torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    remote = remote_rates(args)
    local = local_rates(args)
    print(
        json.dumps(
            {
                "servers": args.servers,
                "experts_per_server": args.experts_per_server,
                "hid": args.hid,
                "batch": args.batch,
                "k_best": args.k_best,
                "device": args.device,
                "threads": torch.get_num_threads(),
                "server_threads": args.server_threads,
                "fwd_samples_per_s": round(remote["fwd"], 1),
                "fwdbwd_samples_per_s": round(remote["fwdbwd"], 1),
                "local_fwd_samples_per_s": round(local["fwd"], 1),
                "local_fwdbwd_samples_per_s": round(local["fwdbwd"], 1),
                "fwd_over_local": round(remote["fwd"] / local["fwd"], 3),
                "fwdbwd_over_local": round(remote["fwdbwd"] / local["fwdbwd"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
