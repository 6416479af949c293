"""The dashboard's pieces that need no broker: worker snapshots, their merge, quantiles from
histogram buckets, and the login cookie."""

from __future__ import annotations

import math

import pytest
from prometheus_client import CollectorRegistry

from consumers.metrics import WorkerMetrics
from consumers.stats import histogram_quantile, merge, subscriber_snapshots
from propagator.admin import AdminSessions


class TestHistogramQuantile:
    def test_interpolates_within_a_bucket_like_prometheus(self) -> None:
        """Ten observations, all in (0.1, 0.2]: the median is the bucket's middle."""
        buckets = [[0.1, 0.0], [0.2, 10.0], [math.inf, 10.0]]
        assert pytest.approx(0.15) == histogram_quantile(0.5, buckets)
        assert pytest.approx(0.199) == histogram_quantile(0.99, buckets)

    def test_beyond_the_last_bound_answers_that_bound(self) -> None:
        """Observations above every finite bound cannot be placed more precisely."""
        assert 5.0 == histogram_quantile(0.99, [[5.0, 1.0], [math.inf, 10.0]])

    def test_no_observations_no_answer(self) -> None:
        """An empty histogram has no quantiles."""
        assert histogram_quantile(0.5, [[1.0, 0.0], [math.inf, 0.0]]) is None
        assert histogram_quantile(0.5, []) is None


class TestSnapshots:
    def test_a_snapshot_carries_each_subscribers_metrics(self) -> None:
        """Counters, gauges, retries by level and histogram buckets, per subscriber only."""
        metrics = WorkerMetrics(CollectorRegistry())
        metrics.applied.labels("cache").inc(3)
        metrics.retries.labels("cache", "1").inc(2)
        metrics.circuit_open.labels("cache").set(1)
        metrics.propagation_seconds.labels("cache").observe(0.02)
        metrics.applied.labels("other").inc(7)
        snapshot = subscriber_snapshots(metrics.registry, ["cache"])
        assert ["cache"] == list(snapshot)
        cache = snapshot["cache"]
        assert (3.0, {"1": 2.0}, 1.0) == (cache["applied"], cache["retries"], cache["circuit_open"])
        assert 1.0 == cache["propagation_seconds"]["count"]
        assert [0.025, 1.0] in cache["propagation_seconds"]["buckets"]

    def test_processes_sharing_a_subscriber_add_up_and_the_worst_state_wins(self) -> None:
        """Counts and buckets add up; lag seconds, depth and circuit take the maximum."""

        def one(applied: float, lag_s: float, circuit: float, observed: float) -> dict[str, object]:
            metrics = WorkerMetrics(CollectorRegistry())
            metrics.applied.labels("s").inc(applied)
            metrics.lag_seconds.labels("s").set(lag_s)
            metrics.circuit_open.labels("s").set(circuit)
            metrics.propagation_seconds.labels("s").observe(observed)
            return {**subscriber_snapshots(metrics.registry, ["s"])["s"], "at": 1.0}

        merged = merge([one(2, 5.0, 0, 0.02), one(3, 1.0, 1, 4.0)])
        assert (5.0, 5.0, 1.0, 2) == (
            merged["applied"],
            merged["lag_seconds"],
            merged["circuit_open"],
            merged["processes"],
        )
        assert 2.0 == merged["propagation_seconds"]["count"]
        assert 0.01 < (histogram_quantile(0.5, merged["propagation_seconds"]["buckets"]) or 0)


class TestAdminSessions:
    def test_a_cookie_is_valid_until_it_expires_and_only_for_its_tokens(self) -> None:
        """The cookie proves a token was shown without containing it; it expires, and it
        stops working when its token is removed from the configuration."""
        sessions = AdminSessions(["alpha", "beta"], ttl_s=60)
        cookie = sessions.issue("beta", now=1000)
        assert "beta" not in cookie
        assert sessions.cookie_valid(cookie, now=1059)
        assert not sessions.cookie_valid(cookie, now=1061)
        assert not AdminSessions(["alpha"]).cookie_valid(cookie, now=1000)

    def test_tampered_or_malformed_cookies_are_refused(self) -> None:
        """Changing the expiry breaks the signature; garbage is simply not a session."""
        sessions = AdminSessions(["alpha"], ttl_s=60)
        expiry, _, signature = sessions.issue("alpha", now=1000).partition(".")
        assert not sessions.cookie_valid(f"{int(expiry) + 3600}.{signature}", now=1000)
        for value in (None, "", "abc", "1060.", ".deadbeef", "-5.00"):
            assert not sessions.cookie_valid(value, now=1000)

    def test_bearer_header_needs_the_scheme_and_a_token(self) -> None:
        """`Bearer <token>` is accepted; another scheme or token is not."""
        sessions = AdminSessions(["alpha"])
        assert sessions.bearer_valid("Bearer alpha")
        assert not sessions.bearer_valid("Basic alpha")
        assert not sessions.bearer_valid("Bearer beta")
