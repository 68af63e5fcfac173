"""Checks of the client modules' constructor arguments, with errors that name the argument."""

from __future__ import annotations

import math


def check_count(name: str, value: object) -> None:
    """``value`` must be an int >= 1."""
    if type(value) is not int or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def check_timeout(name: str, seconds: object) -> None:
    """``seconds`` must be a finite positive number (every wait of the client is bounded)."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds < math.inf:
        raise ValueError(f"{name} must be a finite positive number of seconds, got {seconds!r}")
