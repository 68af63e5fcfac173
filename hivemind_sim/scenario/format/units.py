"""Quantities with units: `50ms`, `10Mbit/s`, `1.5TFLOP/s`, `64KiB`, `30%`.

A scenario file writes quantities as strings with units, or as plain numbers in the base unit.
Each ``parse_*`` function turns one into a float in its base unit (seconds, bits per second,
FLOP/s, bytes, fractions of one) or raises ``ValueError`` with an example of the expected form;
the annotated types (``Duration``, ``Bandwidth``...) apply them inside pydantic models and write
the value back with its unit when a model is dumped. ``format_*`` give the human form, rounded
for reports or exact (``exact=True``: parsing the text gives back the same float).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from functools import partial
from typing import Annotated

from pydantic import (
    BeforeValidator,
    PlainSerializer,
)

_NUMBER = r"[+-]?(?:\d+(?:_\d+)*\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
_QUANTITY = re.compile(rf"\s*({_NUMBER})\s*([^\s\d.+-][^\s]*)?\s*")

_DECIMAL = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40}

DURATION_UNITS: Mapping[str, float] = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
BANDWIDTH_UNITS: Mapping[str, float] = {
    **{f"{p}bit/s": f for p, f in (_DECIMAL | _BINARY).items()},
    **{f"{p}B/s": 8 * f for p, f in (_DECIMAL | _BINARY).items()},
    **{f"{p}bps": f for p, f in _DECIMAL.items()},
}
COMPUTE_UNITS: Mapping[str, float] = {
    **{f"{p}FLOP/s": f for p, f in _DECIMAL.items()},
    **{f"{p}FLOPS": f for p, f in _DECIMAL.items()},
}
SIZE_UNITS: Mapping[str, float] = {f"{p}B": f for p, f in (_DECIMAL | _BINARY).items()}


def _split(text: str) -> tuple[float, str] | None:
    match = _QUANTITY.fullmatch(text)
    if match is None:
        return None
    return float(match.group(1).replace("_", "")), match.group(2) or ""


def _suggest_unit(unit: str, units: Mapping[str, float]) -> str:
    """`; did you mean `Mbit/s`?` for `mbit/s`: units are case-sensitive (m is milli or minutes)."""
    same = [u for u in units if u.lower() == unit.lower()]
    close = same or difflib.get_close_matches(unit, list(units), n=1, cutoff=0.7)
    return f"; did you mean `{close[0]}`?" if close else ""


def _parse(
    value: object,
    *,
    units: Mapping[str, float],
    kind: str,
    examples: str,
    positive: bool = False,
) -> float:
    """A finite number >= 0 (> 0 when ``positive``) in base units, from a number or `<number><unit>`."""
    what = f"a positive {kind}" if positive else f"a {kind}"
    expected = f"expected {what} like {examples}"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{expected}, got `{value!r}`")
    if isinstance(value, str):
        split = _split(value)
        if split is None:
            raise ValueError(f"{expected}, got `{value}`")
        number, unit = split
        factor = 1.0 if unit == "" else units.get(unit)
        if factor is None:
            raise ValueError(f"{expected}, got `{value}` (unknown unit `{unit}`{_suggest_unit(unit, units)})")
        result = number * factor
    else:
        result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{expected}, got `{value}` (not finite)")
    if result < 0 or (positive and result == 0):
        raise ValueError(f"{expected}, got `{value}` (must be {'>' if positive else '>='} 0)")
    return result


def _unit_list(units: Mapping[str, float]) -> str:
    """`ns, us or µs, ms, s or sec, ...`: every unit accepted, synonyms together, from the table itself."""
    synonyms: dict[float, list[str]] = {}
    for unit, factor in units.items():
        synonyms.setdefault(factor, []).append(unit)
    return ", ".join(" or ".join(names) for names in synonyms.values())


def parse_duration(value: object, *, positive: bool = False) -> float:
    """Seconds from `50ms`, `2s`, `10m` (minutes), `2h`, `1d` or a number of seconds."""
    return _parse(
        value,
        units=DURATION_UNITS,
        kind="duration",
        examples=f"`50ms`, `2h` (units: {_unit_list(DURATION_UNITS)})",
        positive=positive,
    )


def parse_bandwidth(value: object) -> float:
    """Bits per second from `10Mbit/s`, `1Gbit/s`, `2MB/s` (B = 8 bit), `100Mbps` or a number."""
    return _parse(
        value,
        units=BANDWIDTH_UNITS,
        kind="bandwidth",
        examples="`10Mbit/s`, `2MB/s` (bit/s or B/s with k, M, G, T, Ki, Mi, Gi, Ti)",
        positive=True,
    )


def parse_compute(value: object) -> float:
    """FLOP/s from `1.5TFLOP/s`, `200GFLOP/s`, `10TFLOPS` or a number."""
    return _parse(
        value, units=COMPUTE_UNITS, kind="compute speed", examples="`1.5TFLOP/s`, `200GFLOP/s`", positive=True
    )


def parse_size(value: object) -> int:
    """A whole number of bytes from `64B`, `64KiB`, `1MB` (10^6 bytes), `1MiB` or a number."""
    result = _parse(value, units=SIZE_UNITS, kind="size", examples="`64B`, `64KiB`, `1MB`")
    whole = round(result)
    if abs(result - whole) > 1e-9 * max(1.0, result):
        raise ValueError(f"expected a whole number of bytes, got `{value}` ({result} bytes)")
    return whole


def parse_fraction(value: object) -> float:
    """A fraction in [0, 1] from `0.3`, `30%` or `0.1%`."""
    expected = "expected a fraction like `0.3` or `30%`"
    if isinstance(value, str) and value.strip().endswith("%"):
        split = _split(value.strip()[:-1])
        if split is None or split[1]:
            raise ValueError(f"{expected}, got `{value}`")
        result = split[0] / 100
    elif isinstance(value, str):
        split = _split(value)
        if split is None or split[1]:
            raise ValueError(f"{expected}, got `{value}`")
        result = split[0]
    elif isinstance(value, int | float) and not isinstance(value, bool):
        result = float(value)
    else:
        raise ValueError(f"{expected}, got `{value!r}`")
    if not 0 <= result <= 1:
        raise ValueError(f"{expected}, got `{value}` (must be between 0 and 100%)")
    return result


# ---- formatting -------------------------------------------------------------------------------


def _digits(number: float, significant: int) -> str:
    text = f"{number:.{significant}g}"
    return f"{number:.0f}" if "e" in text else text


def _exact(value: float, units: Mapping[str, float], parse: Callable[[str], float]) -> str | None:
    """The shortest `<number> <unit>` that parses back to exactly ``value`` (larger units win ties)."""
    best: str | None = None
    for unit, factor in sorted(units.items(), key=lambda item: -item[1]):
        number = value / factor
        if value and number < 1:
            continue
        for significant in range(1, 18):
            text = f"{number:.{significant}g}"
            if "e" not in text and parse(f"{text} {unit}") == value:
                if best is None or len(text) < best.index(" "):
                    best = f"{text} {unit}"
                break
    return best


def _format(
    value: float,
    *,
    steps: list[tuple[float, str]],
    exact: bool,
    parse: Callable[[str], float],
    significant: int = 4,
) -> str:
    """``steps``: (factor, unit) from the smallest; the largest unit whose factor is <= value wins."""
    if value == 0:
        return f"0 {next(unit for factor, unit in steps if factor == 1)}"
    if exact:
        text = _exact(value, {unit: factor for factor, unit in steps}, parse)
        return text if text is not None else repr(value)
    factor, unit = steps[0]
    for candidate in steps:
        if abs(value) >= candidate[0]:
            factor, unit = candidate
    return f"{_digits(value / factor, significant)} {unit}"


_DURATION_STEPS = [(1e-6, "us"), (1e-3, "ms"), (1.0, "s"), (60.0, "min"), (3600.0, "h"), (86400.0, "d")]
_BANDWIDTH_STEPS = [(1.0, "bit/s"), (1e3, "kbit/s"), (1e6, "Mbit/s"), (1e9, "Gbit/s"), (1e12, "Tbit/s")]
_COMPUTE_STEPS = [(1.0, "FLOP/s"), (1e3, "kFLOP/s"), (1e6, "MFLOP/s"), (1e9, "GFLOP/s"), (1e12, "TFLOP/s")]
_SIZE_STEPS = [(1.0, "B"), (2.0**10, "KiB"), (2.0**20, "MiB"), (2.0**30, "GiB"), (2.0**40, "TiB")]


def format_duration(seconds: float, *, exact: bool = False) -> str:
    """`0.05` -> `50 ms`, `7200` -> `2 h` (4 significant digits unless ``exact``)."""
    return _format(seconds, steps=_DURATION_STEPS, exact=exact, parse=parse_duration)


def format_bandwidth(bits_per_second: float, *, exact: bool = False) -> str:
    """`2e7` -> `20 Mbit/s`."""
    return _format(bits_per_second, steps=_BANDWIDTH_STEPS, exact=exact, parse=parse_bandwidth)


def format_compute(flops: float, *, exact: bool = False) -> str:
    """`1.5e12` -> `1.5 TFLOP/s`."""
    return _format(flops, steps=_COMPUTE_STEPS, exact=exact, parse=parse_compute)


def format_size(size: float, *, exact: bool = False) -> str:
    """`65536` -> `64 KiB`; exact sizes are whole bytes, written in the largest unit that divides them."""
    if exact:
        whole = [(f"{int(size // f)} {u}", f) for u, f in SIZE_UNITS.items() if size % f == 0]
        return min(whole, key=lambda w: (len(w[0]), -w[1]))[0]
    return _format(size, steps=_SIZE_STEPS, exact=False, parse=parse_size)


def format_fraction(fraction: float, *, exact: bool = False) -> str:
    """`0.3` -> `30%`."""
    if exact:
        for significant in range(1, 18):
            text = f"{fraction * 100:.{significant}g}"
            if "e" not in text and parse_fraction(f"{text}%") == fraction:
                return f"{text}%"
        return repr(fraction)
    return f"{_digits(fraction * 100, 4)}%"


# ---- bare numbers far from what a key means ------------------------------------------------------
# A plain number is read in the base unit, as documented. Where that reading is far outside what
# the key means (a link latency of 10 s, a 200 bit/s downlink), the writer almost surely left out
# the unit they meant, and the run would fail long after `validate` said `valid`: refuse it, saying
# how to write either reading. A number written with its unit always passes.


def bare_number(value: object) -> float | None:
    """The number when ``value`` is written without a unit (`10`, `"10"`), else None."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    split = _split(value) if isinstance(value, str) else None
    return split[0] if split is not None and not split[1] else None


def bare_slip(value: object, read_as: str, why: str, meant: tuple[str, ...], base: str) -> ValueError:
    """`10` is read as 10 s, ...: write `10ms` (what was likely meant) or `10s` (to keep the reading)."""
    written = str(value).strip()
    likely = " or ".join(f"`{written}{unit}`" for unit in meant)
    return ValueError(
        f"`{written}` is read as {read_as}, {why}: write {likely} if you meant that,"
        f" or `{written}{base}` to keep {read_as}"
    )


MAX_BARE_LATENCY = 1.0
"""A one-way link latency of a second or more is slower than a geostationary satellite's: a bare
number that large is milliseconds without `ms`."""


def parse_latency(value: object) -> float:
    """Seconds, as ``parse_duration``; a bare number of 1 or more is refused."""
    seconds = parse_duration(value)
    if (bare_number(value) or 0) >= MAX_BARE_LATENCY:
        raise bare_slip(value, format_duration(seconds), "far longer than a link's latency", ("ms",), "s")
    return seconds


MIN_BARE_BANDWIDTH = 1e4
"""Below 10 kbit/s a DHT message of a few hundred bytes takes seconds: a bare number that small
is a Mbit/s (or kbit/s) value without its unit."""


def _small_bare_refused(
    parse: Callable[[object], float],
    minimum: float,
    fmt: Callable[[float], str],
    why: str,
    meant: tuple[str, ...],
    base: str,
) -> Callable[[object], float]:
    """``parse``, refusing a bare number whose value in the base unit is under ``minimum``."""

    def parse_checked(value: object) -> float:
        number = parse(value)
        if bare_number(value) is not None and number < minimum:
            raise bare_slip(value, fmt(number), why, meant, base)
        return number

    return parse_checked


parse_link_bandwidth = _small_bare_refused(
    parse_bandwidth,
    MIN_BARE_BANDWIDTH,
    format_bandwidth,
    "far too slow for a link",
    ("Mbit/s", "kbit/s"),
    "bit/s",
)
"""Bits per second, as ``parse_bandwidth``; a bare number under 10 kbit/s is refused."""


MIN_BARE_COMPUTE = 1e6
"""No device computes under 1 MFLOP/s: a bare number that small is GFLOP/s or TFLOP/s without its unit."""


parse_device_compute = _small_bare_refused(
    parse_compute,
    MIN_BARE_COMPUTE,
    format_compute,
    "far slower than any device",
    ("TFLOP/s", "GFLOP/s"),
    "FLOP/s",
)
"""FLOP/s, as ``parse_compute``; a bare number under 1 MFLOP/s is refused."""


# ---- pydantic types: parsed on the way in, written with their unit on the way out ----------------


def _unit_serializer(fmt: Callable[..., str]) -> PlainSerializer:
    return PlainSerializer(partial(fmt, exact=True), return_type=str, when_used="json")


Duration = Annotated[float, BeforeValidator(parse_duration), _unit_serializer(format_duration)]
"""Seconds, >= 0: `50ms`, `2h`, or a number of seconds."""
PositiveDuration = Annotated[
    float, BeforeValidator(partial(parse_duration, positive=True)), _unit_serializer(format_duration)
]
"""Seconds, > 0."""
Latency = Annotated[float, BeforeValidator(parse_latency), _unit_serializer(format_duration)]
"""A link's one-way latency in seconds, >= 0: `10ms` (a bare number must be under 1)."""
Bandwidth = Annotated[float, BeforeValidator(parse_link_bandwidth), _unit_serializer(format_bandwidth)]
"""Bits per second, > 0: `10Mbit/s`, `2MB/s` (a bare number must be at least 10 kbit/s)."""
Compute = Annotated[float, BeforeValidator(parse_device_compute), _unit_serializer(format_compute)]
"""FLOP/s, > 0: `1.5TFLOP/s` (a bare number must be at least 1 MFLOP/s)."""
Fraction = Annotated[float, BeforeValidator(parse_fraction), _unit_serializer(format_fraction)]
"""A fraction in [0, 1]: `0.3` or `30%`."""
Size = Annotated[int, BeforeValidator(parse_size), _unit_serializer(format_size)]
"""Bytes, a whole number: `64KiB`, `1MB`."""
