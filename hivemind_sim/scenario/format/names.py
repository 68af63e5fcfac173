"""What a scenario's metrics are called, in one place: the names the runner records, the
statistics a summary gives of each, their units, and the words that reports and plots show.

A summary key is `<metric>.<stat>`: `dht.get.p99`, `moe.step.laptops.p50` (one trainer group's
steps), `dht.lookup.hops.mean` (a number an event carries), `rpc.bytes.per_peer`,
`peers.alive.servers.min`, optionally followed by ` during <event>`.
"""

from __future__ import annotations

EVENTS = {  # operations, each with a success flag and most with a latency
    "dht.get": "DHT get",
    "dht.store": "DHT store",
    "dht.lookup": "DHT lookup",
    "moe.step": "training step",
    "moe.expert_call": "expert call",
    "moe.forward": "scripted DMoE forward",
}
EVENT_FIELDS = {  # the mean of a number an event carries besides its latency (`dht.lookup.hops.mean`)
    "hops": "hops, mean",
    "top1": "found the nearest live peer (share of lookups)",
    "overlap": "share of the k nearest live peers found, mean",
}
SHARE_FIELDS = frozenset({"dht.lookup.top1", "dht.lookup.overlap"})  # event fields that are fractions
COUNTERS = {
    "moe.bans": "bans",
    "moe.expert_failures": "expert failures",
    "moe.rejected": "rejected expert answers (junk next to the other experts' answers)",
    "rpc.messages": "RPC messages",
    "rpc.bytes": "RPC bytes",
    "peers.errors": "peer errors (exceptions in a peer's own code)",
    "peers.join_failures": "failed joins",
}

EVENT_STATS = ("success_rate", "count", "p50", "p90", "p99", "mean", "max")
LATENCY_STATS = ("p50", "p90", "p99", "mean", "max")
VALUE_STATS = ("first", "final", "min", "fell")
COUNTER_STATS = ("total", "per_peer")
GAUGE_STATS = ("min", "mean", "final")
STAT_NAMES = {
    "success_rate": "success rate",
    "count": "count",
    "p50": "latency p50",
    "p90": "latency p90",
    "p99": "latency p99",
    "mean": "mean",
    "max": "max",
    "first": "first",
    "final": "final",
    "min": "min",
    "fell": "fell by (share of the first)",
    "total": "total",
    "per_peer": "per peer",
}


def metric_unit(metric: str) -> str:
    """ "fraction", "s" or "" for a summary key (`during` suffix allowed), as metrics.json has no units."""
    base, _, stat = metric.partition(" during ")[0].rpartition(".")
    if stat in ("success_rate", "fell") or base in SHARE_FIELDS:
        return "fraction"
    per_group_step = base.startswith("moe.step.")
    return "s" if stat in LATENCY_STATS and (base in EVENTS or per_group_step) else ""


def describe_metric(metric: str) -> str:
    """Words for a summary key: `DHT get latency p99 during crash-wave`; the key itself otherwise."""
    name, _, during = metric.partition(" during ")
    base, _, stat = name.rpartition(".")
    event, _, part = base.rpartition(".")
    if base in EVENTS and stat in STAT_NAMES:
        words = STAT_NAMES[stat] if stat != "mean" else "mean latency"
        text = f"{EVENTS[base]} {words}"
    elif event in EVENTS and part in EVENT_FIELDS and stat == "mean":
        text = f"{EVENTS[event]} {EVENT_FIELDS[part]}"
    elif event == "moe.step" and stat in STAT_NAMES:  # one trainer group's steps
        words = STAT_NAMES[stat] if stat != "mean" else "mean latency"
        text = f"training step ({part}) {words}"
    elif base in COUNTERS:
        text = f"{COUNTERS[base]}, {STAT_NAMES.get(stat, stat)}"
    elif base == "train.loss":
        text = f"training loss, {STAT_NAMES.get(stat, stat)}"
    elif base.startswith("peers.alive"):
        group = base.removeprefix("peers.alive").lstrip(".")
        text = f"alive peers{f' ({group})' if group else ''}, {STAT_NAMES.get(stat, stat)}"
    else:
        text = name
    return f"{text} during {during}" if during else text
