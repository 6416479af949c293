"""Fan-out on the real broker and Redis: retry topics, dead letters, replay, isolation, crashes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook

from consumers.dlq import DeadLetterQueue
from consumers.worker import RunningSubscriber, run_worker
from propagator.settings import Settings
from schemas import RevocationEvent, RevocationScope
from tests.integration.conftest import KAFKA_BOOTSTRAP, REDIS_URL, wait_for

pytestmark = pytest.mark.integration

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FAST_RETRY = {"attempts": 1, "max_backoff_s": 0.05, "delays_s": [0.3, 0.6]}
FAST_CIRCUIT = {"failure_threshold": 50, "probe_interval_s": 0.2, "max_probe_interval_s": 0.5}


def event(
    n: int, *, scope: RevocationScope = RevocationScope.SESSION, user: str = "user_1"
) -> RevocationEvent:
    now = datetime.now(UTC)
    return RevocationEvent(
        event_id=f"event_{n}",
        source="workos",
        source_kind="workos",
        type="session.revoked",
        scope=scope,
        session_id=f"session_{n}" if scope is RevocationScope.SESSION else None,
        user_id=user,
        occurred_at=now,
        received_at=now,
        payload_sha256="0" * 64,
    )


async def produce(topic: str, events: list[RevocationEvent]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=KAFKA_BOOTSTRAP, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        futures = [
            await producer.send(
                topic,
                value=e.to_bytes(),
                key=e.partition_key.encode(),
                headers=[("event-id", e.event_id.encode())],
            )
            for e in events
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


@dataclass
class Subscriber:
    """A downstream HTTP app verifying Standard Webhooks signatures with the reference library."""

    answers: list[int] = field(default_factory=list)  # consumed one per request; then 200
    reject: set[str] = field(default_factory=set)  # event ids answered 400 until removed
    received: list[dict[str, Any]] = field(default_factory=list)
    requests: int = 0
    verifier: Webhook = field(default_factory=lambda: Webhook(WHSEC))

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.read()
        status = self.answers.pop(0) if self.answers else 200
        payload = self.verifier.verify(body, dict(request.headers))
        if payload["event_id"] in self.reject:
            status = 400
        if status == 200:
            self.received.append(payload)
        return web.Response(status=status)


@asynccontextmanager
async def http_subscriber(sub: Subscriber, port: int | None = None) -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_post("/revocations", sub.handle)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


def with_subscribers(settings: Settings, *subscribers: dict[str, Any]) -> Settings:
    return Settings.model_validate(
        {
            **settings.model_dump(mode="python", exclude={"subscribers"}),
            "subscribers": list(subscribers),
        }
    )


def http_sink(url: str) -> dict[str, Any]:
    return {
        "kind": "http",
        "url": url,
        "secret": WHSEC,
        "allow_private": ["127.0.0.1"],
        "connect_timeout_s": 0.5,
        "read_timeout_s": 2,
    }


@asynccontextmanager
async def worker(settings: Settings) -> AsyncIterator[list[RunningSubscriber]]:
    stop, started = asyncio.Event(), asyncio.Event()
    running: list[RunningSubscriber] = []
    task = asyncio.create_task(run_worker(settings, stop, started=started))
    async with asyncio.timeout(60):
        await started.wait()
    try:
        yield running
    finally:
        stop.set()
        async with asyncio.timeout(30):
            running.extend(await task)


class TestRetriesAndDeadLetters:
    async def test_failing_subscriber_gets_the_event_through_retry_topics(
        self, settings: Settings
    ) -> None:
        """500, 500, 503 then 200: delivered via the retry topics, nothing dead-lettered."""
        sub = Subscriber(answers=[500, 500, 503])
        async with http_subscriber(sub) as server:
            config = with_subscribers(
                settings,
                {
                    "name": "hooks",
                    "sink": http_sink(str(server.make_url("/revocations"))),
                    "retry": FAST_RETRY,
                    "circuit": FAST_CIRCUIT,
                },
            )
            async with worker(config):
                await produce(config.kafka.topic, [event(1)])
                await wait_for(lambda: _true(sub.received))
        assert ["event_1"] == [p["event_id"] for p in sub.received]
        assert 4 == sub.requests
        assert (
            []
            == await DeadLetterQueue(
                bootstrap_servers=KAFKA_BOOTSTRAP, topic=config.kafka.topic, subscriber="hooks"
            ).read()
        )

    async def test_400_dead_letters_with_headers_and_replay_delivers(
        self, settings: Settings
    ) -> None:
        """A 400 is dead-lettered with why; replay after the fix delivers it."""
        sub = Subscriber(reject={"event_2"})
        async with http_subscriber(sub) as server:
            config = with_subscribers(
                settings,
                {
                    "name": "hooks",
                    "sink": http_sink(str(server.make_url("/revocations"))),
                    "retry": FAST_RETRY,
                    "circuit": FAST_CIRCUIT,
                },
            )
            queue = DeadLetterQueue(
                bootstrap_servers=KAFKA_BOOTSTRAP, topic=config.kafka.topic, subscriber="hooks"
            )
            async with worker(config):
                await produce(config.kafka.topic, [event(2), event(3)])
                letters = await wait_for(queue.read)
                await wait_for(lambda: _true(len(sub.received) == 1))
                [letter] = letters
                headers = letter.headers
                assert ("SinkRejected", "http_rejected", "400") == (
                    headers["propagator-exception-class"],
                    headers["propagator-exception-code"],
                    headers["propagator-http-status"],
                )
                assert config.kafka.topic == headers["propagator-original-topic"]
                assert "propagator.hooks" == headers["propagator-group"]
                assert "event-id" in headers
                assert 1 == int(headers["propagator-attempts"])
                sub.reject.clear()  # the subscriber is fixed: replay
                producer = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP)
                await producer.start()
                try:
                    assert 1 == await queue.replay(producer, letters)
                finally:
                    await producer.stop()
                await wait_for(lambda: _true(len(sub.received) == 2))
            assert 1 == await queue.purge()
            assert [] == await queue.read()
        assert {"event_2", "event_3"} == {p["event_id"] for p in sub.received}


class TestIsolation:
    async def test_down_subscriber_holds_while_the_other_proceeds(
        self, settings: Settings, redis: Redis
    ) -> None:
        """One subscriber's target is down: the denylist gets every event meanwhile; the other
        catches up once its target is back, with nothing dead-lettered."""
        port = _free_port()
        url = f"http://127.0.0.1:{port}/revocations"
        denylist = {"kind": "redis-denylist", "key_prefix": settings.denylist.key_prefix}
        config = with_subscribers(
            settings,
            {"name": "cache", "sink": denylist},
            {"name": "hooks", "sink": http_sink(url), "retry": FAST_RETRY, "circuit": FAST_CIRCUIT},
        )
        events = [event(n) for n in range(20)]
        sub = Subscriber()
        async with worker(config) as running:
            await produce(config.kafka.topic, events)

            async def denylisted() -> bool:
                keys = [f"{settings.denylist.key_prefix}session:session_{n}" for n in range(20)]
                return 20 == await redis.exists(*keys)

            await wait_for(denylisted)
            assert [] == sub.received
            async with http_subscriber(sub, port=port):
                await wait_for(
                    lambda: _true(len({p["event_id"] for p in sub.received}) == 20), timeout=60
                )
        cache, hooks = sorted(running, key=lambda r: r.config.name)
        assert 0 == hooks.delivery.stats.dead_lettered
        assert hooks.delivery.circuit.opened_count >= 1
        assert 20 == cache.delivery.stats.applied
        latencies = sorted(cache.delivery.stats.latencies_s)
        print(
            f"\nhealthy subscriber while the other was down: p50 {latencies[10] * 1000:.0f} ms, "
            f"max {latencies[-1] * 1000:.0f} ms"
        )


class TestSessionStore:
    async def test_app_sessions_are_deleted(
        self, settings: Settings, redis: Redis, unique: str
    ) -> None:
        """Session scope deletes the session record; user scope deletes every indexed session."""
        store = {
            "kind": "redis-session-store",
            "url": REDIS_URL,
            "session_key": f"test:{unique}:sess:{{session_id}}",
            "user_index_key": f"test:{unique}:user-sessions:{{user_id}}",
        }
        config = with_subscribers(settings, {"name": "app", "sink": store})
        await redis.set(f"test:{unique}:sess:session_1", "alive")
        await redis.set(f"test:{unique}:sess:a", "alive")
        await redis.set(f"test:{unique}:sess:b", "alive")
        await redis.sadd(
            f"test:{unique}:user-sessions:user_9", f"test:{unique}:sess:a", f"test:{unique}:sess:b"
        )
        async with worker(config):
            await produce(
                config.kafka.topic, [event(1), event(2, scope=RevocationScope.USER, user="user_9")]
            )

            async def gone() -> bool:
                return 0 == await redis.exists(
                    f"test:{unique}:sess:session_1",
                    f"test:{unique}:sess:a",
                    f"test:{unique}:sess:b",
                    f"test:{unique}:user-sessions:user_9",
                )

            await wait_for(gone)


class TestCrashSafety:
    async def test_kill_9_mid_stream_loses_nothing(self, settings: Settings, redis: Redis) -> None:
        """3,000 events; the worker is SIGKILLed partway; after a restart every event is applied."""
        total = 3000
        await produce(settings.kafka.topic, [event(n) for n in range(total)])
        keys = [f"{settings.denylist.key_prefix}session:session_{n}" for n in range(total)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROPAGATOR_")}
        env.update(
            {
                "PROPAGATOR_KAFKA__BOOTSTRAP_SERVERS": KAFKA_BOOTSTRAP,
                "PROPAGATOR_KAFKA__TOPIC": settings.kafka.topic,
                "PROPAGATOR_KAFKA__TOPIC_PARTITIONS": "3",
                "PROPAGATOR_REDIS__URL": REDIS_URL,
                "PROPAGATOR_DENYLIST__KEY_PREFIX": settings.denylist.key_prefix,
                "PROPAGATOR_WORKER__SUBSCRIBER": settings.worker.subscriber,
                "PROPAGATOR_WORKER__METRICS_PORT": "0",
                "PROPAGATOR_RECEIPTS__PROJECTION_PREFIX": settings.receipts.projection_prefix,
                "PROPAGATOR_WORKER__MAX_BATCH": "50",
                "PROPAGATOR_LOG__LEVEL": "WARNING",
            }
        )

        def start() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                [sys.executable, "-m", "propagator", "worker"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        async def applied() -> int:
            counts = await asyncio.gather(
                *(redis.exists(*keys[i : i + 500]) for i in range(0, total, 500))
            )
            return sum(counts)

        first = start()
        try:
            await wait_for(lambda: _at_least(applied, 300), timeout=60, interval=0.01)
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=10)
        finally:
            if first.poll() is None:
                first.kill()
        at_kill = await applied()
        second = start()
        try:
            await wait_for(lambda: _at_least(applied, total), timeout=120)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
        print(
            f"\napplied before SIGKILL: {at_kill}/{total}; after restart: {await applied()}/{total}"
        )
        assert 0 < at_kill < total, "the kill must land mid-stream for this test to mean anything"
        assert total == await applied()


async def _true(value: object) -> bool:
    return bool(value)


async def _at_least(count: Callable[[], Any], target: int) -> bool:
    return bool(await count() >= target)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
