"""The consume → apply → commit loop, with a fake consumer, sink and dead-letter topic."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.runtime import SubscriberWorker
from propagator.errors import PropagatorError, SinkRejected, SinkUnavailable
from schemas import RevocationEvent, RevocationScope

TP = TopicPartition("revocations", 0)


def event(n: int) -> RevocationEvent:
    now = datetime.now(UTC)
    return RevocationEvent(
        event_id=f"event_{n}",
        source="workos",
        source_kind="workos",
        type="session.revoked",
        scope=RevocationScope.SESSION,
        session_id=f"session_{n}",
        user_id="user_1",
        occurred_at=now,
        received_at=now,
        payload_sha256="0" * 64,
    )


def record(offset: int, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=TP.topic,
        partition=TP.partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"user_1",
        value=value,
        checksum=None,
        serialized_key_size=6,
        serialized_value_size=len(value or b""),
        headers=(),
    )


@dataclass
class FakeConsumer:
    batches: list[list[ConsumerRecord[bytes, bytes]]]
    commits: list[int] = field(default_factory=list)
    drained: asyncio.Event = field(default_factory=asyncio.Event)

    async def getmany(self, timeout_ms: int, max_records: int):  # type: ignore[no-untyped-def]
        if not self.batches:
            self.drained.set()
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        return {TP: self.batches.pop(0)}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(offsets[TP])


@dataclass
class FakeSink:
    kind: str = "fake"
    applied: list[str] = field(default_factory=list)
    failures: list[Exception] = field(default_factory=list)
    reject_ids: set[str] = field(default_factory=set)
    calls: int = 0

    async def apply(self, events: Sequence[RevocationEvent]) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        if any(e.event_id in self.reject_ids for e in events):
            raise SinkRejected("refused")
        self.applied.extend(e.event_id for e in events)


@dataclass
class FakeDeadLetters:
    topic: str = "revocations.fake.dlq"
    forwarded: list[tuple[int, str]] = field(default_factory=list)

    async def forward(
        self, rec: ConsumerRecord[bytes, bytes], error: PropagatorError, attempts: int
    ) -> None:
        self.forwarded.append((rec.offset, error.code))


async def run_until_drained(
    consumer: FakeConsumer, sink: FakeSink, dlq: FakeDeadLetters
) -> SubscriberWorker:
    worker = SubscriberWorker(
        consumer=consumer,  # type: ignore[arg-type]
        sink=sink,
        dead_letters=dlq,  # type: ignore[arg-type]
        subscriber="fake",
        max_backoff_s=0.01,
        poll_timeout_ms=10,
    )
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(5):
        await consumer.drained.wait()
    worker.stop()
    async with asyncio.timeout(5):
        await task
    return worker


class TestDelivery:
    async def test_batch_is_applied_then_committed(self) -> None:
        """The offset after the last record is committed once the sink applied them all."""
        consumer = FakeConsumer([[record(i, event(i).to_bytes()) for i in range(3)]])
        sink, dlq = FakeSink(), FakeDeadLetters()
        worker = await run_until_drained(consumer, sink, dlq)
        assert ["event_0", "event_1", "event_2"] == sink.applied
        assert [3] == consumer.commits
        assert 3 == worker.stats.applied

    async def test_transient_failures_are_retried_before_commit(self) -> None:
        """A sink that is down twice is retried; the commit waits for success."""
        consumer = FakeConsumer([[record(0, event(0).to_bytes())]])
        sink = FakeSink(failures=[SinkUnavailable("down"), SinkUnavailable("still down")])
        worker = await run_until_drained(consumer, sink, FakeDeadLetters())
        assert 3 == sink.calls
        assert ["event_0"] == sink.applied
        assert [1] == consumer.commits
        assert 2 == worker.stats.retries

    async def test_undecodable_record_is_dead_lettered_and_others_applied(self) -> None:
        """A poison record goes to the dead-letter topic; the partition moves on."""
        consumer = FakeConsumer(
            [
                [
                    record(0, event(0).to_bytes()),
                    record(1, b"{garbage"),
                    record(2, event(2).to_bytes()),
                ]
            ]
        )
        sink, dlq = FakeSink(), FakeDeadLetters()
        await run_until_drained(consumer, sink, dlq)
        assert ["event_0", "event_2"] == sink.applied
        assert [(1, "invalid_record")] == dlq.forwarded
        assert [3] == consumer.commits

    async def test_permanently_rejected_event_is_isolated(self) -> None:
        """One event the sink refuses for good is dead-lettered; its batch-mates are applied."""
        consumer = FakeConsumer([[record(i, event(i).to_bytes()) for i in range(3)]])
        sink, dlq = FakeSink(reject_ids={"event_1"}), FakeDeadLetters()
        worker = await run_until_drained(consumer, sink, dlq)
        assert ["event_0", "event_2"] == sink.applied
        assert [(1, "sink_rejected")] == dlq.forwarded
        assert [3] == consumer.commits
        assert 1 == worker.stats.dead_lettered

    async def test_stop_during_an_outage_commits_nothing(self) -> None:
        """Shutdown while the sink is down abandons the batch uncommitted, for redelivery."""
        consumer = FakeConsumer([[record(0, event(0).to_bytes())]])
        sink = FakeSink(failures=[SinkUnavailable("down")] * 10_000)
        worker = SubscriberWorker(
            consumer=consumer,  # type: ignore[arg-type]
            sink=sink,
            dead_letters=FakeDeadLetters(),  # type: ignore[arg-type]
            subscriber="fake",
            max_backoff_s=0.01,
            poll_timeout_ms=10,
        )
        task = asyncio.create_task(worker.run())
        async with asyncio.timeout(5):
            while sink.calls < 3:
                await asyncio.sleep(0.005)
        worker.stop()
        async with asyncio.timeout(5):
            await task
        assert [] == consumer.commits
        assert [] == sink.applied


@pytest.mark.parametrize("batches", [[[0, 1]], [[0], [1]]])
async def test_commits_are_monotonic(batches: list[list[int]]) -> None:
    """Whatever the batching, the last commit covers every record."""
    consumer = FakeConsumer([[record(i, event(i).to_bytes()) for i in b] for b in batches])
    await run_until_drained(consumer, FakeSink(), FakeDeadLetters())
    assert consumer.commits == sorted(consumer.commits)
    assert 2 == consumer.commits[-1]
