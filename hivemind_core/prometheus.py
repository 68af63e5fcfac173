"""A real peer's metrics for Prometheus, named as scenario reports name them.

A report's `moe.step` (steps, with success and latency) is the histogram `moe_step_seconds`
with an `ok` label; the counters `moe.expert_failures`, `moe.rejected`, `moe.bans` are
`moe_expert_failures_total`, `moe_rejected_total`, `moe_bans_total`; the value `train.loss` is
the gauge `train_loss`. A peer also exports what only it can see: `dht_contacts` (its routing
table) and `moe_experts_answering` (distinct experts that answered lately). Needs the
`prometheus-client` package (the `metrics` extra); nothing imports this module otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    import prometheus_client as prometheus
    from prometheus_client.core import CounterMetricFamily
    from prometheus_client.registry import Collector
except ModuleNotFoundError:  # pragma: no cover - what the CLI says when the extra is missing
    raise ModuleNotFoundError(
        "--metrics-port needs the prometheus-client package: pip install '.[metrics]' from a clone",
        name="prometheus_client",
    ) from None

STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class PeerMetrics:
    """The metrics of one peer, in their own registry, served over HTTP by :meth:`serve`."""

    def __init__(self) -> None:
        self.registry = prometheus.CollectorRegistry()
        self.steps = prometheus.Histogram(
            "moe_step_seconds",
            "Training steps and how long each took; ok=false: too few experts answered",
            ["ok"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.expert_calls = prometheus.Histogram(
            "moe_expert_call_seconds",
            "Remote expert calls (forward and backward) and how long each took",
            ["ok"],
            buckets=STEP_BUCKETS,
            registry=self.registry,
        )
        self.expert_failures = prometheus.Counter(
            "moe_expert_failures", "Expert calls that failed or were rejected", registry=self.registry
        )
        self.rejected = prometheus.Counter(
            "moe_rejected",
            "Expert answers rejected as junk next to the other experts'",
            registry=self.registry,
        )
        self.loss = prometheus.Gauge(
            "train_loss", "Loss of the latest successful step", registry=self.registry
        )
        self._gauges: list[tuple[prometheus.Gauge, Callable[[], float]]] = []
        self._server: Any = None
        self.url = ""  # where :meth:`serve` serves, for people to read

    def watch(self, name: str, help: str, read: Callable[[], float]) -> None:
        """A gauge read when scraped (``read`` must be cheap and safe from another thread)."""
        gauge = prometheus.Gauge(name, help, registry=self.registry)
        gauge.set_function(read)

    def watch_counter(self, name: str, help: str, read: Callable[[], float]) -> None:
        """A counter kept elsewhere (``read`` returns its total), read when scraped."""
        self.registry.register(_ReadCounter(name, help, read))

    def step(self, seconds: float, loss: float | None) -> None:
        self.steps.labels(ok=str(loss is not None).lower()).observe(seconds)
        if loss is not None:
            self.loss.set(loss)

    def expert_call(self, outcome: str, seconds: float) -> None:
        self.expert_calls.labels(ok=str(outcome == "answered").lower()).observe(seconds)
        if outcome in ("failed", "rejected"):
            self.expert_failures.inc()
        if outcome == "rejected":
            self.rejected.inc()

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` at ``host:port`` from a daemon thread; returns the port (0: any)."""
        self._server, _ = prometheus.start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


class _ReadCounter(Collector):
    def __init__(self, name: str, help: str, read: Callable[[], float]) -> None:
        self.name, self.help, self.read = name, help, read

    def collect(self) -> Any:
        yield CounterMetricFamily(self.name, self.help, value=self.read())
