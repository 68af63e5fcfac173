"""DMoE training throughput: a model whose middle layer is RemoteMixtureOfExperts.

``--servers`` expert-server processes each host ``--experts-per-server`` ffn experts of one
grid; this process trains Linear -> RemoteMixtureOfExperts(k_best) -> Linear over TCP, finding
experts through the DHT. Final line: JSON with fwd_samples_per_s (inference steps) and
fwdbwd_samples_per_s (training steps: forward, backward through the experts, optimizer step).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from hivemind_core.dht import DHT
from hivemind_core.moe.client import MoEClient, RemoteMixtureOfExperts
from hivemind_sim.swarms.processes import PeerProcess, expert_server


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
        "--server-threads", type=int, default=1, help="torch threads per server process (0: torch's default)"
    )
    args = parser.parse_args()
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
                in_features=args.hid,
                grid_size=(total,),
                uid_prefix="ffn",
                client=client,
                k_best=args.k_best,
                k_min=1,
            ),
            nn.Linear(args.hid, 10),
        )
        optimizer = torch.optim.Adam(model.parameters())
        x = torch.randn(args.batch, args.hid)
        y = torch.randint(0, 10, (args.batch,))

        def train_step() -> None:
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        def infer_step() -> None:
            with torch.no_grad():
                model(x)

        rates = {}
        for name, step in (("fwd", infer_step), ("fwdbwd", train_step)):
            for _ in range(3):  # warm up: connections, prefix cache
                step()
            started = time.perf_counter()
            for _ in range(args.steps):
                step()
            rates[name] = args.steps * args.batch / (time.perf_counter() - started)
    finally:
        if dht is not None:
            if client is not None:
                dht.bridge.run(client.close())  # stop background prefix refreshes first
            dht.shutdown()
        for server in servers:
            server.stop()
    print(
        json.dumps(
            {
                "servers": args.servers,
                "experts_per_server": args.experts_per_server,
                "hid": args.hid,
                "batch": args.batch,
                "k_best": args.k_best,
                "device": args.device,
                "fwd_samples_per_s": round(rates["fwd"], 1),
                "fwdbwd_samples_per_s": round(rates["fwdbwd"], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
