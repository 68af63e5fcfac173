"""How an expert server batches, announces, checkpoints and limits: :class:`ExpertServer`'s settings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one expert server, checked when made (errors name the field)."""

    batch_wait: float = 0.002
    """Seconds a batch that is not full waits for more requests (while requests overlap)."""
    announce_period: float = 10.0
    """Seconds between two announcements of the experts in the DHT."""
    announce_ttl: float = 30.0
    """Seconds an announcement lives: a server that stops announcing is forgotten after it."""
    checkpoint_dir: str | Path | None = None
    """Where each expert's parameters and optimizer state are saved on shutdown and loaded on
    start (stored as a Path; None: no checkpoints)."""
    max_elements: int = 1 << 26
    """Most tensor elements one request may carry, all its tensors together."""
    fault_rate: float = 0.0
    """Share of forward and backward requests failed on purpose (fault injection for tests and
    scenarios)."""

    def __post_init__(self) -> None:
        if isinstance(self.batch_wait, bool) or not isinstance(self.batch_wait, int | float):
            raise ValueError(f"batch_wait must be a finite number of seconds >= 0, got {self.batch_wait!r}")
        if not 0 <= self.batch_wait < math.inf:
            raise ValueError(f"batch_wait must be a finite number of seconds >= 0, got {self.batch_wait!r}")
        for name in ("announce_period", "announce_ttl"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ValueError(f"{name} must be a finite positive number of seconds, got {value!r}")
        if type(self.max_elements) is not int or self.max_elements < 1:
            raise ValueError(f"max_elements must be an int >= 1, got {self.max_elements!r}")
        rate = self.fault_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate <= 1:
            raise ValueError(f"fault_rate must be in [0, 1], got {rate!r}")
        if self.checkpoint_dir is not None:
            if not isinstance(self.checkpoint_dir, str | Path):
                raise ValueError(f"checkpoint_dir must be a path or None, got {self.checkpoint_dir!r}")
            object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))
