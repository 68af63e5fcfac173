"""Train a DMoE classifier on scikit-learn's bundled digits, over real TCP, with failing experts.

Two ``hivemind-core expert-server`` processes host a 4x4 grid of feed-forward experts; this
process trains Linear -> RemoteMixtureOfExperts -> Linear on 8x8 digit images (the dataset
ships inside scikit-learn, so nothing is downloaded). The run is repeated with the servers
failing 10% and 50% of expert requests at random (``--fault-rate``): failed experts are
dropped from the average, fresh searches replace them, and training carries on.

    .venv/bin/python examples/digits_dmoe.py                  # writes runs/digits_dmoe/ (git-ignored)
    .venv/bin/python examples/digits_dmoe.py --epochs 3 --out /tmp/digits
    .venv/bin/python examples/digits_dmoe.py --out reports/reference/digits_dmoe   # refresh the reference

It needs scikit-learn and matplotlib: ``pip install -e '.[examples]'``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import matplotlib
import torch
from torch import nn

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from hivemind_core.dht import DHT
from hivemind_core.moe.client import ExpertsUnavailable, MoEClient, MoEConfig, RemoteMixtureOfExperts
from hivemind_sim.swarms.processes import expert_server

HIDDEN = 64
GRID = (4, 4)


@dataclass
class Curve:
    fault_rate: float
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    skipped_steps: int = 0


def load_digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits as sklearn_digits

    data = sklearn_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(x))
    return x[order[:split]], y[order[:split]], x[order[split:]], y[order[split:]]


class ExpertServers:
    """Two expert-server processes sharing the grid; ended by PID on exit."""

    def __init__(self, fault_rate: float) -> None:
        options = [
            "--lr",
            "3e-3",
            "--fault-rate",
            str(fault_rate),
            "--torch-threads",
            "1",
            "--duration",
            "1800",
        ]
        first = expert_server("ffn.[0:2].[0:4]", hidden_dim=HIDDEN, args=options)
        second = expert_server(
            "ffn.[2:4].[0:4]", hidden_dim=HIDDEN, args=options, initial_peers=[first.endpoint]
        )
        self.processes = [first, second]
        self.endpoints = [first.endpoint, second.endpoint]

    def __enter__(self) -> ExpertServers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in self.processes:
            process.stop()


def train(fault_rate: float, *, epochs: int, seed: int = 0, batch: int = 64) -> Curve:
    x_train, y_train, x_test, y_test = load_digits(seed)
    curve = Curve(fault_rate)
    with ExpertServers(fault_rate) as servers, DHT(initial_peers=servers.endpoints, client_mode=True) as dht:
        torch.manual_seed(seed)
        client = MoEClient.from_dht(dht)
        model = nn.Sequential(
            nn.Linear(64, HIDDEN),
            RemoteMixtureOfExperts(
                MoEConfig(
                    in_features=HIDDEN,
                    grid_size=GRID,
                    uid_prefix="ffn",
                    k_best=4,
                    k_min=1,
                    forward_timeout=5.0,
                    timeout_after_k_min=0.5,
                    max_searches=5,
                ),
                client=client,
            ),
            nn.Linear(HIDDEN, 10),
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        generator = torch.Generator().manual_seed(seed)
        step = 0
        for _ in range(epochs):
            order = torch.randperm(len(x_train), generator=generator)
            losses = []
            for start in range(0, len(order), batch):
                rows = order[start : start + batch]
                try:
                    loss = nn.functional.cross_entropy(model(x_train[rows]), y_train[rows])
                except ExpertsUnavailable as error:  # rare: every search for some sample came up short
                    print(f"skipping a step: {error}", flush=True)
                    curve.skipped_steps += 1
                    continue
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
                losses.append(loss.item())
                step += 1
            with torch.no_grad():
                accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
            curve.steps.append(step)
            curve.train_loss.append(sum(losses) / len(losses))
            curve.test_accuracy.append(accuracy)
            print(
                f"fault rate {fault_rate:.0%}: step {step}, loss {curve.train_loss[-1]:.3f}, "
                f"test accuracy {accuracy:.3f}",
                flush=True,
            )
        stats = model[1].stats
        print(
            f"fault rate {fault_rate:.0%}: {stats.forward_failures} of {stats.forward_calls} expert forward "
            f"calls and {stats.backward_failures} of {stats.backward_calls} backward calls failed",
            flush=True,
        )
        dht.bridge.run(client.close())  # stop background prefix refreshes before the DHT goes
    return curve


def plot(curves: list[Curve], path: Path) -> None:
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(11, 4))
    for curve in curves:
        label = f"{curve.fault_rate:.0%} of expert calls fail"
        loss_axis.plot(curve.steps, curve.train_loss, marker="o", label=label)
        accuracy_axis.plot(curve.steps, curve.test_accuracy, marker="o", label=label)
    loss_axis.set(title="training loss (per epoch)", xlabel="training step", ylabel="cross-entropy")
    accuracy_axis.set(title="test accuracy", xlabel="training step", ylabel="accuracy", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle("DMoE on digits over TCP: 16 remote experts on 2 servers, k_best=4")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


DEFAULT_OUT = Path("runs/digits_dmoe")
"""Where a run writes unless told otherwise: ignored by git, so that the committed reference in
reports/reference/digits_dmoe/ changes only when asked to (``--out reports/reference/digits_dmoe``)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=12, help="passes over the training set per run")
    parser.add_argument(
        "--fault-rates", type=float, nargs="+", default=[0.0, 0.1, 0.5], help="one run per failure rate"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the data split and the model")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder for curves.png and summary.json"
    )
    return parser


def write_report(curves: list[Curve], *, epochs: int, out: Path) -> dict[str, dict[str, float | int]]:
    """Write curves.png and summary.json into ``out``, say where, and return the summary."""
    out.mkdir(parents=True, exist_ok=True)
    plot(curves, out / "curves.png")
    summary = {
        f"{c.fault_rate:.0%}": {
            "final_test_accuracy": round(c.test_accuracy[-1], 4),
            "final_train_loss": round(c.train_loss[-1], 4),
            "skipped_steps": c.skipped_steps,
        }
        for c in curves
    }
    (out / "summary.json").write_text(
        json.dumps({"epochs": epochs, "runs": summary, "curves": [asdict(c) for c in curves]}, indent=1)
    )
    print(f"wrote {out / 'curves.png'} and {out / 'summary.json'}", flush=True)
    return summary


def main() -> None:
    args = build_parser().parse_args()
    curves = [train(rate, epochs=args.epochs, seed=args.seed) for rate in args.fault_rates]
    summary = write_report(curves, epochs=args.epochs, out=args.out)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
