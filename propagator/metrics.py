"""Prometheus metrics of the ingest service, on a registry passed in (one per process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


class IngestMetrics:
    """Counters and histograms the ingest handlers update. Labels are bounded: no ids."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.requests = Counter(
            "propagator_ingest_requests_total",
            "Webhook requests by source and outcome.",
            ["source", "outcome"],
            registry=registry,
        )
        self.ignored = Counter(
            "propagator_ingest_ignored_events_total",
            "Verified events of a type the service does not act on.",
            ["source"],
            registry=registry,
        )
        self.duplicates = Counter(
            "propagator_ingest_duplicates_total",
            "Deliveries of an event id already published (redeliveries and replays).",
            ["source"],
            registry=registry,
        )
        self.dedupe_degraded = Counter(
            "propagator_ingest_dedupe_degraded_total",
            "Events published without the duplicate check because Redis was unreachable.",
            registry=registry,
        )
        self.publish_seconds = Histogram(
            "propagator_ingest_publish_seconds",
            "Time from send to the broker's acknowledgement.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=registry,
        )
