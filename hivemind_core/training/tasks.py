"""The built-in classification tasks a trainer learns: small, in memory, the same everywhere."""

from __future__ import annotations

from dataclasses import dataclass

import torch

DATASETS = ("synthetic", "digits")


@dataclass(frozen=True)
class Dataset:
    """A classification task held in memory; batches are drawn with a trainer's generator."""

    features: torch.Tensor
    labels: torch.Tensor
    classes: int

    @property
    def in_features(self) -> int:
        return self.features.shape[1]

    def batch(self, generator: torch.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.randint(0, len(self.labels), (size,), generator=generator)
        return self.features[rows], self.labels[rows]


def make_dataset(kind: str, hidden_dim: int, *, seed: int) -> Dataset:
    """``synthetic``: the label is the argmax of the first four features of a Gaussian input;
    ``digits``: scikit-learn's bundled 8x8 digits, standardized (10 classes)."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "synthetic":
        features = torch.randn(4096, hidden_dim, generator=generator)
        return Dataset(features, features[:, :4].argmax(dim=1), classes=4)
    if kind == "digits":
        try:
            from sklearn.datasets import load_digits
        except ModuleNotFoundError:
            raise RuntimeError(
                "dataset `digits` needs scikit-learn: pip install 'hivemind-sim[examples]'"
            ) from None
        digits = load_digits()
        features = torch.tensor(digits.data, dtype=torch.float32)
        features = (features - features.mean(0)) / (features.std(0) + 1e-6)
        return Dataset(features, torch.tensor(digits.target), classes=10)
    raise ValueError(f"unknown dataset {kind!r} (known: {', '.join(DATASETS)})")
