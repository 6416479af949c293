"""Fault injection on the real processes: nothing accepted is ever lost.

Each scenario sends uniquely numbered revocations through a real ``propagator ingest``,
injects one fault, and counts accepted / applied / lost / duplicated across three
subscribers (Redis denylist, Redis session store, HTTP). Outages of the broker or Redis use
private instances on other ports; the shared ones are never touched.
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.exceptions import RedisError

from tests.reliability.harness import (
    KAFKA_BOOTSTRAP,
    REDIS_URL,
    Counts,
    HttpSubscriber,
    Ledger,
    Observer,
    PrivateService,
    Proc,
    Processes,
    Sender,
    duplicates,
    env_for,
    event_ids,
    free_port,
    log_problems,
    serve_subscriber,
    settle,
    three_subscribers,
    topic_records,
    topic_size,
    wait_for,
    wait_logged,
    wait_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(420)]

MAX_BATCH = 50  # PROPAGATOR_WORKER__MAX_BATCH in env_for: the in-flight batch bound


@dataclass
class Scenario:
    """One scenario's world: processes, sender, observer, subscriber, and the event ids."""

    name: str
    unique: str
    topic: str
    kafka: str
    port: int
    processes: Processes
    observer: Observer
    http: HttpSubscriber
    ids: list[str]
    ledger: Ledger
    started: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/workos"

    def ingest(self) -> Proc:
        return self.processes.start("ingest")

    async def ingest_ready(self) -> Proc:
        proc = self.ingest()
        await wait_ready(self.port)
        return proc

    async def worker(self) -> Proc:
        proc = self.processes.start("worker")
        # One "worker.started" line, once every subscriber's consumers joined their groups.
        await wait_logged(proc, '"worker.started"', timeout=90)
        return proc

    def send(self, *, rate: float | None, deadline_s: float = 120.0) -> asyncio.Task[None]:
        sender = Sender(self.url, self.ledger, concurrency=16, rate=rate)
        return asyncio.create_task(sender.run(self.ids, deadline_s=deadline_s))

    async def applied_at_least(self, count: int, timeout: float = 60) -> None:
        async def enough() -> bool:
            try:
                applied = await self.observer.applied_everywhere(self.ledger.accepted)
            except (RedisError, OSError):
                return False
            return len(applied) >= count

        await wait_for(enough, timeout=timeout, what=f"{self.name}: {count} applied")

    async def accepted_at_least(self, count: int, timeout: float = 60) -> None:
        async def enough() -> bool:
            return len(self.ledger.accepted) >= count

        await wait_for(enough, timeout=timeout, what=f"{self.name}: {count} accepted")

    async def finish(
        self,
        sending: asyncio.Task[None],
        *,
        fault_ended: float | None,
        notes: str = "",
        settle_s: float = 120,
    ) -> Counts:
        async with asyncio.timeout(240):
            await sending
        applied, _ = await settle(self.observer, self.ledger.accepted, timeout=settle_s)
        now = time.monotonic()
        recovery = None if fault_ended is None else now - fault_ended
        if fault_ended is not None and applied >= set(self.ledger.accepted):
            # The last event applied everywhere: when the backlog the fault built was drained.
            last = max(
                max(self.http.first_at.get(e, fault_ended) for e in applied),
                max(self.observer.denylist_first_at.get(e, fault_ended) for e in applied),
            )
            recovery = max(0.0, last - fault_ended)
        lost = set(self.ledger.accepted) - applied
        return Counts(
            scenario=self.name,
            sent=len(self.ids),
            accepted=len(self.ledger.accepted),
            applied=len(applied),
            lost=len(lost),
            duplicated=duplicates(self.observer),
            recovery_s=recovery,
            duration_s=now - self.started,
            notes=notes,
        )


@asynccontextmanager
async def scenario(
    name: str,
    unique: str,
    tmp_path: Path,
    *,
    count: int,
    http: HttpSubscriber | None = None,
    kafka: str = KAFKA_BOOTSTRAP,
    redis_url: str = REDIS_URL,
    read_timeout_s: float = 2.0,
) -> AsyncIterator[Scenario]:
    http = http or HttpSubscriber()
    observer = Observer(redis_url, unique, http)
    topic = f"test.reliability.{unique}"
    port = free_port()
    processes: Processes | None = None
    try:
        async with serve_subscriber(http) as url:
            env = env_for(
                unique=unique,
                topic=topic,
                ingest_port=port,
                subscribers=three_subscribers(unique, url, read_timeout_s=read_timeout_s),
                kafka=kafka,
                redis_url=redis_url,
            )
            processes = Processes(tmp_path, env)
            ids = event_ids(unique, count)
            await observer.seed_sessions(ids)
            await observer.start()
            yield Scenario(
                name,
                unique,
                topic,
                kafka,
                port,
                processes,
                observer,
                http,
                ids,
                Ledger(),
                time.monotonic(),
            )
    finally:
        if processes is not None:
            processes.close()
        await observer.close()


def no_crash(processes: Processes) -> None:
    problems = log_problems(processes.logs())
    assert [] == problems


def assert_nothing_lost(counts: Counts) -> None:
    assert counts.accepted > 0, counts
    assert 0 == counts.lost, counts
    assert counts.sent == counts.accepted, f"the sender gave up on events: {counts}"


async def dead_letters(s: Scenario) -> int:
    total = 0
    for prefix in ("deny", "sess", "http"):
        total += await topic_size(s.kafka, f"{s.topic}.{prefix}-{s.unique}.dlq")
    return total


class TestWorkerCrash:
    async def test_worker_sigkill_mid_stream_then_restart(
        self, unique: str, tmp_path: Path, report: Callable[[Counts], None]
    ) -> None:
        """SIGKILL the only worker mid-stream, start another: every accepted event arrives."""
        async with scenario("worker SIGKILL + restart", unique, tmp_path, count=600) as s:
            await s.ingest_ready()
            worker = await s.worker()
            sending = s.send(rate=40)
            await s.applied_at_least(150)
            worker.signal(signal.SIGKILL)
            await worker.wait(10)
            await s.worker()
            fault_ended = time.monotonic()
            counts = await s.finish(sending, fault_ended=fault_ended)
            report(counts)
            assert_nothing_lost(counts)
            assert 0 == await dead_letters(s)

    async def test_two_workers_one_killed_rebalance_hands_partitions_over(
        self, unique: str, tmp_path: Path, report: Callable[[Counts], None]
    ) -> None:
        """Two workers share each group; SIGKILL one: the survivor takes its partitions."""
        async with scenario("2 workers, 1 SIGKILLed (rebalance)", unique, tmp_path, count=600) as s:
            await s.ingest_ready()
            survivor = await s.worker()
            victim = await s.worker()
            sending = s.send(rate=40)
            await s.applied_at_least(150)
            victim.signal(signal.SIGKILL)
            await victim.wait(10)
            fault_ended = time.monotonic()
            counts = await s.finish(sending, fault_ended=fault_ended)
            report(counts)
            assert_nothing_lost(counts)
            # Events sent after the kill landed on every partition, the victim's too.
            assert survivor.popen.poll() is None
            assert 0 == await dead_letters(s)


class TestBrokerOutage:
    async def test_broker_stopped_mid_stream_and_restarted(
        self, unique: str, tmp_path: Path, report: Callable[[Counts], None]
    ) -> None:
        """While the broker is down ingest answers 503 + Retry-After, never 2xx; the sender
        retries; after its return everything accepted is applied."""
        port = free_port(pair=True)
        broker = PrivateService("kafka.sh", "KAFKA_PORT", port, tmp_path / "state")
        await broker.up()
        try:
            async with scenario(
                "broker stopped 12 s", unique, tmp_path, count=600, kafka=f"127.0.0.1:{port}"
            ) as s:
                await s.ingest_ready()
                await s.worker()
                sending = s.send(rate=30, deadline_s=120)
                await s.applied_at_least(150)
                await broker.down()
                down_at = time.monotonic()
                await asyncio.sleep(12)  # the outage itself
                up_at = time.monotonic()
                await broker.up()
                fault_ended = time.monotonic()
                counts = await s.finish(sending, fault_ended=fault_ended, settle_s=60)
                during = [
                    a for a in s.ledger.answers if a.sent_at >= down_at and a.answered_at <= up_at
                ]
                statuses = sorted({a.status for a in during})
                counts.notes = f"answers while down: {len(during)}, statuses {statuses}"
                report(counts)
                assert during, "no request was answered while the broker was down"
                assert [] == [a for a in during if 200 <= a.status < 300]
                assert [] == [a for a in during if a.status == 503 and not a.retry_after]
                assert set() == {a.status for a in s.ledger.answers} - {0, 200, 503}
                assert_nothing_lost(counts)
                no_crash(s.processes)
        finally:
            await broker.down()


class TestRedisOutage:
    async def test_redis_stopped_circuit_opens_nothing_dead_lettered(
        self, unique: str, tmp_path: Path, report: Callable[[Counts], None]
    ) -> None:
        """Redis down 12 s: the Redis subscribers' circuits open, nothing is dead-lettered,
        and their lag drains once Redis is back."""
        port = free_port()
        redis = PrivateService("redis.sh", "REDIS_PORT", port, tmp_path / "state")
        await redis.up()
        try:
            async with scenario(
                "Redis stopped 12 s",
                unique,
                tmp_path,
                count=600,
                redis_url=f"redis://127.0.0.1:{port}/0",
            ) as s:
                await s.ingest_ready()
                worker = await s.worker()
                sending = s.send(rate=40)
                await s.applied_at_least(150)
                await redis.down()
                await asyncio.sleep(12)  # the outage itself
                await redis.up()
                fault_ended = time.monotonic()
                counts = await s.finish(sending, fault_ended=fault_ended)
                opened = worker.text().count('"circuit.opened"')
                counts.notes = f"circuit opened {opened}x"
                report(counts)
                assert_nothing_lost(counts)
                assert opened >= 1
                assert 0 == await dead_letters(s)
        finally:
            await redis.down()


def _latency(first_at: dict[str, float], accepted: dict[str, float]) -> str:
    values = sorted(first_at[e] - accepted[e] for e in accepted if e in first_at)
    if not values:
        return "n/a"
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return f"p50 {statistics.median(values) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms"


class TestSlowSubscriber:
    @pytest.mark.parametrize(
        ("mode", "subscriber"),
        [
            ("flapping 500/200", HttpSubscriber(fail_first=True)),
            ("slow (read timeout)", HttpSubscriber(slow_first_s=1.5)),
        ],
    )
    async def test_other_subscribers_unaffected(
        self,
        mode: str,
        subscriber: HttpSubscriber,
        unique: str,
        tmp_path: Path,
        report: Callable[[Counts], None],
    ) -> None:
        """The HTTP subscriber fails or times out on each event's first delivery; the
        denylist's latency shows it is not held back; nothing is lost or dead-lettered."""
        subscriber.deliveries.clear()
        subscriber.attempts.clear()
        subscriber.first_at.clear()
        count = 300 if subscriber.fail_first else 60
        async with scenario(
            f"HTTP subscriber {mode}",
            unique,
            tmp_path,
            count=count,
            http=subscriber,
            read_timeout_s=0.5,
        ) as s:
            await s.ingest_ready()
            await s.worker()
            sending = s.send(rate=30)
            counts = await s.finish(sending, fault_ended=None)
            counts.notes = (
                f"denylist latency {_latency(s.observer.denylist_first_at, s.ledger.accepted)}; "
                f"HTTP latency {_latency(s.http.first_at, s.ledger.accepted)}"
            )
            report(counts)
            assert_nothing_lost(counts)
            assert 0 == await dead_letters(s)
            assert 0 == s.http.bad_signatures


class TestIngestCrash:
    async def test_ingest_sigkill_mid_request_no_2xx_missing_from_topic(
        self, unique: str, tmp_path: Path, report: Callable[[Counts], None]
    ) -> None:
        """SIGKILL ingest under concurrent load: every request answered 2xx is on the topic;
        the sender's retries after the restart get the rest through."""
        async with scenario("ingest SIGKILL mid-request", unique, tmp_path, count=600) as s:
            ingest = await s.ingest_ready()
            await s.worker()
            sending = s.send(rate=60, deadline_s=180)
            await s.accepted_at_least(150)
            ingest.signal(signal.SIGKILL)
            await ingest.wait(10)
            accepted_before_kill = set(s.ledger.accepted)
            on_topic = {r["event_id"] for r in await topic_records(s.kafka, s.topic)}
            assert set() == accepted_before_kill - on_topic
            await s.ingest_ready()
            fault_ended = time.monotonic()
            counts = await s.finish(sending, fault_ended=fault_ended, settle_s=120)
            on_topic = {r["event_id"] for r in await topic_records(s.kafka, s.topic)}
            missing = set(s.ledger.accepted) - on_topic
            counts.notes = f"2xx before the kill: {len(accepted_before_kill)}, all on the topic"
            report(counts)
            assert set() == missing
            assert_nothing_lost(counts)


class TestGracefulShutdown:
    async def test_sigterm_every_process_during_load(
        self, unique: str, tmp_path: Path, report: Callable[[Counts], None]
    ) -> None:
        """SIGTERM ingest and worker under load: both exit 0, nothing is lost, and nothing is
        applied twice beyond one in-flight batch per subscriber."""
        async with scenario("SIGTERM every process", unique, tmp_path, count=600) as s:
            ingest = await s.ingest_ready()
            worker = await s.worker()
            sending = s.send(rate=40, deadline_s=180)
            await s.applied_at_least(150)
            ingest.signal(signal.SIGTERM)
            worker.signal(signal.SIGTERM)
            codes = (await ingest.wait(30), await worker.wait(60))
            accepted_before = set(s.ledger.accepted)
            on_topic = {r["event_id"] for r in await topic_records(s.kafka, s.topic)}
            assert set() == accepted_before - on_topic
            await s.ingest_ready()
            await s.worker()
            fault_ended = time.monotonic()
            counts = await s.finish(sending, fault_ended=fault_ended)
            http_dups = sum(n - 1 for n in s.http.deliveries.values() if n > 1)
            notice_dups = sum(n - 1 for n in s.observer.notices.values() if n > 1)
            counts.notes = (
                f"exit codes {codes}; duplicates HTTP {http_dups}, denylist {notice_dups}"
            )
            report(counts)
            assert (0, 0) == codes
            assert_nothing_lost(counts)
            assert http_dups <= MAX_BATCH
            assert notice_dups <= MAX_BATCH
            no_crash(s.processes)
