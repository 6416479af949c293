"""The walking skeleton on real parts: signed webhook → ingest → Kafka → worker → Redis."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis
from structlog.testing import capture_logs

from consumers.worker import run_worker
from propagator.cli import build_ingest_app
from propagator.sample import sample_session_revoked, signed_headers
from propagator.settings import KafkaSettings, Settings
from tests.integration.conftest import SECRET, committed_offsets, record_count, wait_for

pytestmark = pytest.mark.integration


@asynccontextmanager
async def ingest(settings: Settings) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(await build_ingest_app(settings))) as client:

        async def ready() -> bool:
            return (await client.get("/readyz")).status == 200

        await wait_for(ready)
        yield client


@asynccontextmanager
async def worker(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, stop))
    try:
        yield task
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


async def post_signed(client: TestClient, body: bytes, secret: str = SECRET, **kw: int):  # type: ignore[no-untyped-def]
    return await client.post(
        "/webhooks/workos", data=body, headers=signed_headers(secret.encode(), body, **kw)
    )


class TestWalkingSkeleton:
    async def test_signed_revocation_reaches_the_redis_denylist(
        self, settings: Settings, redis: Redis
    ) -> None:
        """A signed session.revoked becomes a denylist key with the documented record and TTL."""
        body = sample_session_revoked(
            session_id="session_e2e", user_id="user_e2e", event_id="event_e2e"
        )
        key = f"{settings.denylist.key_prefix}session:session_e2e"
        async with ingest(settings) as client, worker(settings):
            resp = await post_signed(client, body)
            assert 200 == resp.status
            assert "published" == (await resp.json())["status"]
            raw = await wait_for(lambda: redis.get(key))
        record = json.loads(raw)
        assert "event_e2e" == record["event_id"]
        assert "user_e2e" == record["user_id"]
        assert "workos" == record["source"]
        assert record["revoked_at"].startswith(time.strftime("%Y-%m-%d", time.gmtime()))
        assert 0 < await redis.ttl(key) <= settings.denylist.max_session_lifetime_s
        assert 1 == await record_count(settings.kafka.topic)

    async def test_refused_requests_never_reach_the_topic(self, settings: Settings) -> None:
        """Forged, stale, unsigned, malformed requests leave the topic empty; a good one lands."""
        body = sample_session_revoked()
        async with ingest(settings) as client:
            assert 401 == (await post_signed(client, body, secret="forged")).status
            stale = int(time.time() * 1000) - 10 * 60 * 1000
            assert 401 == (await post_signed(client, body, timestamp_ms=stale)).status
            assert 401 == (await client.post("/webhooks/workos", data=body)).status
            assert 400 == (await post_signed(client, b"{not json")).status
            assert 0 == await record_count(settings.kafka.topic)
            # The same reading sees a record once one is accepted, so the zero above is real.
            assert 200 == (await post_signed(client, body)).status
            assert 1 == await record_count(settings.kafka.topic)

    async def test_records_are_keyed_by_user(self, settings: Settings) -> None:
        """One user's events share a partition, so their order holds."""
        async with ingest(settings) as client:
            for n in range(6):
                body = sample_session_revoked(session_id=f"s{n}", user_id="user_same")
                assert 200 == (await post_signed(client, body)).status
        from aiokafka import AIOKafkaConsumer

        consumer = AIOKafkaConsumer(
            settings.kafka.topic,
            bootstrap_servers=settings.kafka.bootstrap_servers,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            seen: list[tuple[int, bytes | None]] = []

            async def six() -> bool:
                batch = await consumer.getmany(timeout_ms=200)
                seen.extend((r.partition, r.key) for rs in batch.values() for r in rs)
                return len(seen) >= 6

            await wait_for(six)
        finally:
            await consumer.stop()
        assert {b"user_same"} == {key for _, key in seen}
        assert 1 == len({partition for partition, _ in seen})

    async def test_secret_is_never_logged(self, settings: Settings) -> None:
        """Neither ingest nor worker logs the webhook secret, even on refusals."""
        body = sample_session_revoked()
        with capture_logs() as logs:
            async with ingest(settings) as client, worker(settings):
                assert 200 == (await post_signed(client, body)).status
                assert 401 == (await post_signed(client, body, secret="forged")).status
        assert logs, "nothing was logged, so the check below proves nothing"
        assert SECRET not in repr(logs)


class TestBrokerUnreachable:
    async def test_ingest_answers_503_with_retry_after(self, settings: Settings) -> None:
        """With no broker at the address, a valid webhook is refused with 503 + Retry-After."""
        dead = settings.model_copy(
            update={"kafka": KafkaSettings(bootstrap_servers="127.0.0.1:1", topic="unused")}
        )
        body = sample_session_revoked()
        async with TestClient(TestServer(await build_ingest_app(dead))) as client:
            resp = await post_signed(client, body)
            assert 503 == resp.status
            assert int(resp.headers["Retry-After"]) > 0
            assert "broker_unavailable" == (await resp.json())["error"]["code"]
            assert 503 == (await client.get("/readyz")).status
            assert 200 == (await client.get("/healthz")).status


class TestCommitAfterApply:
    async def test_offsets_wait_for_redis(self, settings: Settings, redis: Redis) -> None:
        """While Redis is unreachable nothing is committed; once it is back, key and commit land."""
        body = sample_session_revoked(session_id="session_commit")
        key = f"{settings.denylist.key_prefix}session:session_commit"
        no_redis = settings.model_copy(
            update={"redis": settings.redis.model_copy(update={"url": "redis://127.0.0.1:1/0"})}
        )
        group, topic = settings.worker.group_id, settings.kafka.topic
        async with ingest(settings) as client:
            assert 200 == (await post_signed(client, body)).status
        with capture_logs() as logs:
            async with worker(no_redis):
                await wait_for(
                    lambda: _async(sum(1 for e in logs if e["event"] == "sink.retrying") >= 3)
                )
        assert 0 == await committed_offsets(group, topic, 3)
        assert await redis.get(key) is None
        async with worker(settings):
            await wait_for(lambda: redis.get(key))
            await wait_for(lambda: _committed_is(group, topic, 1))


async def _async(value: bool) -> bool:
    return value


async def _committed_is(group: str, topic: str, expected: int) -> bool:
    return expected == await committed_offsets(group, topic, 3)
