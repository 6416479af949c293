"""A per-subscriber circuit breaker: when the downstream is down, stop and probe.

Closed: records flow. Open: the subscriber's consumers pause their partitions and probe
with the held records at a growing interval; the first success closes it. It opens on a
``SinkDown`` error (the downstream is unreachable) or after ``failure_threshold``
consecutive records failed, so that an outage grows lag instead of filling retry topics.
"""

from __future__ import annotations

from enum import StrEnum

import structlog

_log = structlog.get_logger(__name__)


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


class CircuitOpen(Exception):
    """Raised to a consumer loop: hold the current records, pause, probe later."""


class CircuitBreaker:
    def __init__(
        self,
        *,
        subscriber: str,
        failure_threshold: int,
        probe_interval_s: float,
        max_probe_interval_s: float,
    ) -> None:
        self._subscriber = subscriber
        self._threshold = failure_threshold
        self._probe_interval_s = probe_interval_s
        self._max_probe_interval_s = max_probe_interval_s
        self._failures = 0
        self._probes = 0
        self.state = CircuitState.CLOSED
        self.opened_count = 0

    @property
    def is_open(self) -> bool:
        return self.state is CircuitState.OPEN

    def next_probe_in(self) -> float:
        """Seconds until the next probe: doubling from the base interval up to the ceiling."""
        delay = self._probe_interval_s * (2 ** min(self._probes, 16))
        self._probes += 1
        return float(min(delay, self._max_probe_interval_s))

    def success(self) -> None:
        if self.is_open:
            _log.info("circuit.closed", subscriber=self._subscriber)
        self.state = CircuitState.CLOSED
        self._failures = 0
        self._probes = 0

    def failure(self, *, down: bool) -> None:
        """Count a record that failed after its in-process retries; maybe open."""
        self._failures += 1
        if not self.is_open and (down or self._failures >= self._threshold):
            self.state = CircuitState.OPEN
            self.opened_count += 1
            _log.warning(
                "circuit.opened",
                subscriber=self._subscriber,
                consecutive_failures=self._failures,
                downstream_unreachable=down,
            )
