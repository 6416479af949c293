"""Prometheus metrics of a worker process, on a registry passed in. Labels are bounded."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.propagation_seconds = Histogram(
            "propagator_propagation_seconds",
            "From ingest receiving the webhook to the sink applying it.",
            ["subscriber"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.sink_seconds = Histogram(
            "propagator_sink_seconds",
            "Duration of one sink apply call (a batch or one record).",
            ["subscriber"],
            buckets=_LATENCY_BUCKETS[:10],
            registry=registry,
        )
        self.applied = Counter(
            "propagator_applied_total", "Events applied.", ["subscriber"], registry=registry
        )
        self.retries = Counter(
            "propagator_retries_total",
            "Records sent to a retry topic, by level (0 is the first).",
            ["subscriber", "level"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "propagator_dead_letters_total",
            "Records dead-lettered.",
            ["subscriber"],
            registry=registry,
        )
        self.dead_letter_depth = Gauge(
            "propagator_dead_letter_depth",
            "Records held in the dead-letter topic.",
            ["subscriber"],
            registry=registry,
        )
        self.circuit_open = Gauge(
            "propagator_circuit_open",
            "1 while the circuit is open.",
            ["subscriber"],
            registry=registry,
        )
        self.lag_records = Gauge(
            "propagator_consumer_lag_records",
            "Records on the main topic not yet committed.",
            ["subscriber"],
            registry=registry,
        )
        self.lag_seconds = Gauge(
            "propagator_consumer_lag_seconds",
            "Age of the oldest record not yet committed (0 when caught up).",
            ["subscriber"],
            registry=registry,
        )
