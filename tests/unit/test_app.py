"""The ingest HTTP app, with a fake publisher and broker connection."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from propagator.app import create_app
from propagator.dedupe import PublishOnce
from propagator.errors import BrokerUnavailable
from propagator.metrics import IngestMetrics
from propagator.publisher import Published
from propagator.ratelimit import RateLimiter, TokenBuckets
from propagator.sample import sample_session_revoked, signed_headers
from propagator.settings import IngestSettings
from propagator.sources import WorkOSSource, WorkOSVerifier, sign_workos
from schemas import RevocationEvent
from tests.conftest import fixture_bytes

SECRET = b"whsec_unit"


@dataclass
class FakePublisher:
    published: list[RevocationEvent] = field(default_factory=list)
    fail_with: Exception | None = None

    async def publish(self, event: RevocationEvent) -> Published:
        if self.fail_with is not None:
            raise self.fail_with
        self.published.append(event)
        return Published(topic="t", partition=0, offset=len(self.published) - 1)


@dataclass
class FakeBroker:
    started: bool = True
    is_ready: bool = True
    lifecycle: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.lifecycle.append("start")

    async def ready(self) -> bool:
        return self.is_ready

    async def close(self) -> None:
        self.lifecycle.append("close")


@dataclass
class Harness:
    client: TestClient
    publisher: FakePublisher
    broker: FakeBroker
    metrics: IngestMetrics

    async def post(self, body: bytes, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        return await self.client.post("/webhooks/workos", data=body, headers=headers or {})

    def count(self, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "propagator_ingest_requests_total", {"source": "workos", "outcome": outcome}
        )
        return value or 0.0


@pytest.fixture
def limiter() -> RateLimiter:
    return RateLimiter(per_source=None, per_client=None)


@pytest.fixture
async def harness(limiter: RateLimiter) -> AsyncIterator[Harness]:
    publisher, broker = FakePublisher(), FakeBroker()
    metrics = IngestMetrics(CollectorRegistry())
    app = create_app(
        settings=IngestSettings(max_body_bytes=4096, retry_after_s=7),
        sources={"workos": WorkOSSource(name="workos", verifier=WorkOSVerifier(secrets=[SECRET]))},
        publisher=PublishOnce(publisher=publisher, claims=None),
        broker=broker,
        limiter=limiter,
        metrics=metrics,
    )
    async with TestClient(TestServer(app)) as client:
        yield Harness(client, publisher, broker, metrics)
    assert ["start", "close"] == broker.lifecycle


async def error_code(resp) -> str:  # type: ignore[no-untyped-def]
    body = await resp.json()
    assert {"code", "message"} <= set(body["error"])
    code: str = body["error"]["code"]
    return code


class TestAccepted:
    async def test_signed_session_revoked_is_published(self, harness: Harness) -> None:
        """A correctly signed session.revoked is published, then answered 200."""
        body = sample_session_revoked(session_id="session_abc", event_id="event_abc")
        resp = await harness.post(body, signed_headers(SECRET, body))
        assert 200 == resp.status
        assert {"status": "published", "event_id": "event_abc", "type": "session.revoked"} == (
            await resp.json()
        )
        assert ["session_abc"] == [e.session_id for e in harness.publisher.published]
        assert 1.0 == harness.count("published")

    async def test_lowercase_header_name_works(self, harness: Harness) -> None:
        """Proxies lowercase header names; lookup is case-insensitive."""
        body = sample_session_revoked()
        header = sign_workos(SECRET, body, int(time.time() * 1000))
        resp = await harness.post(body, {"workos-signature": header})
        assert 200 == resp.status

    async def test_unhandled_event_type_is_acknowledged_not_published(
        self, harness: Harness
    ) -> None:
        """A well-signed session.created answers 200, is counted, and is not published."""
        body = fixture_bytes("workos_session_created.json")
        resp = await harness.post(body, signed_headers(SECRET, body))
        assert 200 == resp.status
        assert "ignored" == (await resp.json())["status"]
        assert [] == harness.publisher.published
        assert 1.0 == harness.metrics.registry.get_sample_value(
            "propagator_ingest_ignored_events_total", {"source": "workos"}
        )


class TestRefused:
    async def test_missing_signature_is_401(self, harness: Harness) -> None:
        """No WorkOS-Signature header: 401 invalid_signature, nothing published."""
        resp = await harness.post(sample_session_revoked())
        assert 401 == resp.status
        assert "invalid_signature" == await error_code(resp)
        assert [] == harness.publisher.published

    async def test_forged_signature_is_401(self, harness: Harness) -> None:
        """Signed with another secret: refused."""
        body = sample_session_revoked()
        resp = await harness.post(body, signed_headers(b"attacker", body))
        assert 401 == resp.status
        assert "invalid_signature" == await error_code(resp)
        assert [] == harness.publisher.published
        assert 1.0 == harness.count("invalid_signature")

    async def test_stale_timestamp_is_401_with_its_own_code(self, harness: Harness) -> None:
        """Correctly signed but 10 minutes old: a replay, refused with its own code."""
        body = sample_session_revoked()
        old = int(time.time() * 1000) - 600_000
        resp = await harness.post(body, signed_headers(SECRET, body, old))
        assert 401 == resp.status
        assert "timestamp_out_of_tolerance" == await error_code(resp)
        assert [] == harness.publisher.published

    async def test_malformed_json_is_400(self, harness: Harness) -> None:
        """A signed body that is not JSON is a 400."""
        body = b"{not json"
        resp = await harness.post(body, signed_headers(SECRET, body))
        assert 400 == resp.status
        assert "malformed_payload" == await error_code(resp)

    async def test_missing_required_field_is_400(self, harness: Harness) -> None:
        """A signed session.revoked without data.user_id is a 400."""
        body = sample_session_revoked().replace(b'"user_id"', b'"someone"')
        resp = await harness.post(body, signed_headers(SECRET, body))
        assert 400 == resp.status
        assert "malformed_payload" == await error_code(resp)

    async def test_oversized_body_is_413(self, harness: Harness) -> None:
        """A body over the limit is refused with 413 before it is verified."""
        body = b"x" * 5000
        resp = await harness.post(body, signed_headers(SECRET, body))
        assert 413 == resp.status
        assert "payload_too_large" == await error_code(resp)

    async def test_oversized_chunked_body_is_413(self, harness: Harness) -> None:
        """Without Content-Length the limit still holds while streaming."""

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"x" * 1000

        resp = await harness.client.post("/webhooks/workos", data=chunks())
        assert 413 == resp.status

    async def test_broker_unreachable_is_503_with_retry_after(self, harness: Harness) -> None:
        """When the broker does not acknowledge, the IdP is told to retry."""
        harness.publisher.fail_with = BrokerUnavailable("down")
        body = sample_session_revoked()
        resp = await harness.post(body, signed_headers(SECRET, body))
        assert 503 == resp.status
        assert "7" == resp.headers["Retry-After"]
        assert "broker_unavailable" == await error_code(resp)

    async def test_not_yet_connected_is_503(self, harness: Harness) -> None:
        """Before the producer connected, webhooks are refused with 503, not accepted."""
        harness.broker.started = False
        body = sample_session_revoked()
        resp = await harness.post(body, signed_headers(SECRET, body))
        assert 503 == resp.status
        assert "Retry-After" in resp.headers
        assert [] == harness.publisher.published

    async def test_unknown_source_is_404(self, harness: Harness) -> None:
        """Only configured sources have an endpoint."""
        resp = await harness.client.post("/webhooks/okta", data=b"{}")
        assert 404 == resp.status
        assert "unknown_source" == await error_code(resp)

    async def test_wrong_method_is_json_405(self, harness: Harness) -> None:
        """Router errors are JSON too, with Allow."""
        resp = await harness.client.get("/webhooks/workos")
        assert 405 == resp.status
        assert "method_not_allowed" == await error_code(resp)
        assert "POST" in resp.headers["Allow"]

    async def test_unexpected_error_is_json_500(self, harness: Harness) -> None:
        """A bug answers 500 internal_error without leaking details."""
        harness.publisher.fail_with = RuntimeError("secret detail")
        body = sample_session_revoked()
        resp = await harness.post(body, signed_headers(SECRET, body))
        assert 500 == resp.status
        assert "internal_error" == await error_code(resp)
        assert "secret detail" not in await resp.text()


class TestProbes:
    async def test_healthz(self, harness: Harness) -> None:
        """Alive regardless of the broker."""
        harness.broker.is_ready = False
        assert 200 == (await harness.client.get("/healthz")).status

    async def test_readyz_follows_the_broker(self, harness: Harness) -> None:
        """Ready only while the producer has a live connection."""
        assert 200 == (await harness.client.get("/readyz")).status
        harness.broker.is_ready = False
        resp = await harness.client.get("/readyz")
        assert 503 == resp.status
        assert "not_ready" == await error_code(resp)

    async def test_metrics_are_exposed(self, harness: Harness) -> None:
        """Prometheus text format with the ingest counters."""
        resp = await harness.client.get("/metrics")
        assert 200 == resp.status
        assert "propagator_ingest_publish_seconds" in await resp.text()


class TestRateLimit:
    @pytest.fixture
    def limiter(self) -> RateLimiter:
        clock = [0.0]
        return RateLimiter(
            per_source=None,
            per_client=TokenBuckets(rate=1, burst=2, clock=lambda: clock[0]),
        )

    async def test_client_over_its_rate_gets_429_with_retry_after(self, harness: Harness) -> None:
        """After the burst, a client is refused with 429 and told when to come back."""
        statuses = []
        for _ in range(3):
            body = sample_session_revoked()
            statuses.append((await harness.post(body, signed_headers(SECRET, body))).status)
        assert [200, 200, 429] == statuses
        body = sample_session_revoked()
        resp = await harness.post(body, signed_headers(SECRET, body))
        assert "rate_limited" == await error_code(resp)
        assert 1 <= int(resp.headers["Retry-After"])
        assert 2 == len(harness.publisher.published)
