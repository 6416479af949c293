"""The delivery pipeline and consumer loops, with a fake consumer, sink and producer."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from consumers.circuit import CircuitBreaker
from consumers.config import EventFilter, RetryPolicy
from consumers.forwarding import H_DUE, H_LEVEL, Forwarder, Route
from consumers.runtime import ConsumerLoop, Delivery
from propagator.errors import SinkDown, SinkRejected, SinkUnavailable
from schemas import RevocationEvent, RevocationScope

TP = TopicPartition("revocations", 0)
RETRY_TP = TopicPartition("revocations.sub.retry.0", 0)


def event(n: int, scope: RevocationScope = RevocationScope.SESSION) -> RevocationEvent:
    now = datetime.now(UTC)
    return RevocationEvent(
        event_id=f"event_{n}",
        source="workos",
        source_kind="workos",
        type="session.revoked",
        scope=scope,
        session_id=f"session_{n}",
        user_id="user_1",
        occurred_at=now,
        received_at=now,
        payload_sha256="0" * 64,
    )


def record(
    offset: int,
    value: bytes | None,
    *,
    tp: TopicPartition = TP,
    headers: Sequence[tuple[str, bytes]] = (),
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=tp.topic,
        partition=tp.partition,
        offset=offset,
        timestamp=1000,
        timestamp_type=0,
        key=b"user_1",
        value=value,
        checksum=None,
        serialized_key_size=6,
        serialized_value_size=len(value or b""),
        headers=tuple(headers),
    )


@dataclass
class FakeConsumer:
    batches: list[dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]]
    commits: list[tuple[TopicPartition, int]] = field(default_factory=list)
    paused: set[TopicPartition] = field(default_factory=set)
    seeks: list[tuple[TopicPartition, int]] = field(default_factory=list)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    polls: int = 0

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None):  # type: ignore[no-untyped-def]
        self.polls += 1
        ready = [b for b in self.batches if not (set(b) & self.paused)]
        if not ready:
            self.drained.set()
            await asyncio.sleep(min(timeout_ms, 10) / 1000)
            return {}
        self.batches.remove(ready[0])
        return ready[0]

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.extend(offsets.items())

    def assignment(self) -> set[TopicPartition]:
        return {TP, RETRY_TP}

    def pause(self, *tps: TopicPartition) -> None:
        self.paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused.difference_update(tps)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


@dataclass
class FakeSink:
    kind: str = "fake"
    applied: list[str] = field(default_factory=list)
    failures: list[Exception] = field(default_factory=list)
    reject: set[str] = field(default_factory=set)
    fail_ids: dict[str, Exception] = field(default_factory=dict)
    calls: int = 0

    async def apply(self, events: Sequence[RevocationEvent]) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        for e in events:
            if e.event_id in self.reject:
                raise SinkRejected("refused", http_status=400)
            if e.event_id in self.fail_ids:
                raise self.fail_ids[e.event_id]
        self.applied.extend(e.event_id for e in events)


@dataclass
class FakeProducer:
    sent: list[tuple[str, bytes | None, dict[str, str]]] = field(default_factory=list)

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        self.sent.append((topic, value, {k: v.decode() for k, v in headers}))


@dataclass
class Rig:
    consumer: FakeConsumer
    sink: FakeSink
    producer: FakeProducer
    delivery: Delivery
    stop: asyncio.Event

    def topics(self) -> list[str]:
        return [t for t, _, _ in self.producer.sent]


def rig(
    batches: list[dict[TopicPartition, list[Any]]],
    sink: FakeSink | None = None,
    *,
    event_filter: EventFilter | None = None,
    threshold: int = 5,
    delays: Sequence[float] = (5.0, 60.0),
) -> Rig:
    stop = asyncio.Event()
    producer = FakeProducer()
    sink = sink or FakeSink()
    delivery = Delivery(
        subscriber="sub",
        sink=sink,
        forwarder=Forwarder(
            producer=producer,  # type: ignore[arg-type]
            route=Route(
                [f"revocations.sub.retry.{i}" for i in range(len(delays))],
                list(delays),
                "revocations.sub.dlq",
            ),
            group_id="propagator.sub",
            subscriber="sub",
        ),
        circuit=CircuitBreaker(
            subscriber="sub",
            failure_threshold=threshold,
            probe_interval_s=0.01,
            max_probe_interval_s=0.02,
        ),
        event_filter=event_filter or EventFilter(),
        retry=RetryPolicy(attempts=3, max_backoff_s=0.01, delays_s=list(delays)),
        stop=stop,
    )
    return Rig(FakeConsumer(batches), sink, producer, delivery, stop)


async def run(r: Rig, *, delayed: bool = False, until: Any = None) -> None:
    loop = ConsumerLoop(
        consumer=r.consumer, delivery=r.delivery, stop=r.stop, delayed=delayed, poll_timeout_ms=10
    )  # type: ignore[arg-type]
    task = asyncio.create_task(loop.run())
    async with asyncio.timeout(5):
        if until is None:
            await r.consumer.drained.wait()
        else:
            while not until():
                await asyncio.sleep(0.005)
    r.stop.set()
    async with asyncio.timeout(5):
        await task


def batch(*values: bytes | None, tp: TopicPartition = TP) -> dict[TopicPartition, list[Any]]:
    return {tp: [record(i, v, tp=tp) for i, v in enumerate(values)]}


class TestMainPath:
    async def test_batch_is_applied_then_committed(self) -> None:
        """The offset after the last record is committed once the sink applied them all."""
        r = rig([batch(*(event(i).to_bytes() for i in range(3)))])
        await run(r)
        assert ["event_0", "event_1", "event_2"] == r.sink.applied
        assert [(TP, 3)] == r.consumer.commits
        assert 3 == r.delivery.stats.applied

    async def test_a_polls_partitions_are_applied_in_one_sink_call(self) -> None:
        """Records of several partitions in one poll reach the sink together, each partition
        in its order, and each partition's offset is committed."""
        other = TopicPartition("revocations", 1)
        r = rig(
            [
                {
                    TP: [record(i, event(i).to_bytes()) for i in range(3)],
                    other: [record(i, event(10 + i).to_bytes(), tp=other) for i in range(2)],
                }
            ]
        )
        await run(r)
        assert 1 == r.sink.calls
        first, second = ["event_0", "event_1", "event_2"], ["event_10", "event_11"]
        assert first == [e for e in r.sink.applied if e in first]
        assert second == [e for e in r.sink.applied if e in second]
        assert len(first) + len(second) == len(r.sink.applied)
        assert {(TP, 3), (other, 2)} == set(r.consumer.commits)

    async def test_later_polls_are_applied_while_an_earlier_one_settles(self) -> None:
        """Polls 2 and 3 are applied while poll 1's receipts are still being flushed; no
        offset is committed before its receipts are durable, the commits keep their order,
        and what was handled meanwhile is settled in one flush and one commit."""
        r = rig(
            [
                batch(event(0).to_bytes()),
                {TP: [record(1, event(1).to_bytes())]},
                {TP: [record(2, event(2).to_bytes())]},
            ]
        )
        gate = asyncio.Event()
        flushes = 0

        async def held_flush() -> None:
            nonlocal flushes
            flushes += 1
            await gate.wait()

        r.delivery.flush = held_flush  # type: ignore[method-assign]
        loop = ConsumerLoop(
            consumer=r.consumer, delivery=r.delivery, stop=r.stop, poll_timeout_ms=10
        )  # type: ignore[arg-type]
        task = asyncio.create_task(loop.run())
        async with asyncio.timeout(5):
            while r.sink.applied != ["event_0", "event_1", "event_2"]:
                await asyncio.sleep(0.001)
        assert [] == r.consumer.commits
        assert 1 == flushes  # one settle in flight; polls 2 and 3 wait for it, merged
        gate.set()
        async with asyncio.timeout(5):
            while len(r.consumer.commits) < 2:
                await asyncio.sleep(0.001)
        assert [(TP, 1), (TP, 3)] == r.consumer.commits
        assert 2 == flushes
        r.stop.set()
        async with asyncio.timeout(5):
            await task

    async def test_a_backlog_of_unsettled_records_holds_the_loop(self) -> None:
        """With a settle stuck, the loop applies a bounded number of records, then waits."""
        backlog = 4
        r = rig([{TP: [record(i, event(i).to_bytes())]} for i in range(backlog + 5)])
        gate = asyncio.Event()

        async def held_flush() -> None:
            await gate.wait()

        r.delivery.flush = held_flush  # type: ignore[method-assign]
        loop = ConsumerLoop(
            consumer=r.consumer,
            delivery=r.delivery,
            stop=r.stop,
            poll_timeout_ms=10,
            settle_backlog=backlog,
        )  # type: ignore[arg-type]
        task = asyncio.create_task(loop.run())
        held = 1 + backlog  # the record in flight, and the backlog behind it
        async with asyncio.timeout(5):
            while len(r.sink.applied) < held:
                await asyncio.sleep(0.001)
        for _ in range(20):  # many loop turns: nothing more is applied while held
            await asyncio.sleep(0)
        assert held == len(r.sink.applied)
        gate.set()
        async with asyncio.timeout(5):
            while len(r.sink.applied) < backlog + 5:
                await asyncio.sleep(0.001)
            while not r.consumer.commits or r.consumer.commits[-1] != (TP, backlog + 5):
                await asyncio.sleep(0.001)
        r.stop.set()
        async with asyncio.timeout(5):
            await task

    async def test_polls_within_the_settle_interval_share_a_commit(self) -> None:
        """An idle loop's first poll is committed at once; the polls that follow within the
        interval are committed together, and a stopping loop commits them without waiting."""
        r = rig([{TP: [record(i, event(i).to_bytes())]} for i in range(3)])
        loop = ConsumerLoop(
            consumer=r.consumer,
            delivery=r.delivery,
            stop=r.stop,
            poll_timeout_ms=10,
            settle_interval_s=60,
        )  # type: ignore[arg-type]
        task = asyncio.create_task(loop.run())
        async with asyncio.timeout(5):
            await r.consumer.drained.wait()
            while not r.consumer.commits:
                await asyncio.sleep(0.001)
        assert 3 == len(r.sink.applied)
        assert [(TP, 1)] == r.consumer.commits
        r.stop.set()
        async with asyncio.timeout(5):
            await task
        assert [(TP, 1), (TP, 3)] == r.consumer.commits

    async def test_quick_retries_absorb_a_blip(self) -> None:
        """Two transient failures are retried in process; nothing is forwarded."""
        r = rig(
            [batch(event(0).to_bytes())],
            FakeSink(failures=[SinkUnavailable("x"), SinkUnavailable("y")]),
        )
        await run(r)
        assert ["event_0"] == r.sink.applied
        assert [] == r.producer.sent
        assert 2 == r.delivery.stats.retried

    async def test_persistent_transient_failure_goes_to_the_retry_topic(self) -> None:
        """A record still failing after the quick retries is forwarded; the others are applied."""
        sink = FakeSink(fail_ids={"event_1": SinkUnavailable("503", http_status=503)})
        r = rig([batch(*(event(i).to_bytes() for i in range(3)))], sink)
        await run(r)
        assert ["event_0", "event_2"] == sink.applied
        assert ["revocations.sub.retry.0"] == r.topics()
        _, value, headers = r.producer.sent[0]
        assert event(1).event_id in (value or b"").decode()
        assert "0" == headers[H_LEVEL]
        assert "503" == headers["propagator-http-status"]
        assert "1" == headers["propagator-original-offset"]
        assert int(headers[H_DUE]) >= int(time.time() * 1000) + 4000
        assert [(TP, 3)] == r.consumer.commits

    async def test_retry_after_lengthens_the_delay(self) -> None:
        """A subscriber's Retry-After beyond the level's delay is honoured."""
        sink = FakeSink(
            fail_ids={"event_0": SinkUnavailable("429", http_status=429, retry_after_s=120)}
        )
        r = rig([batch(event(0).to_bytes())], sink)
        await run(r)
        due = int(r.producer.sent[0][2][H_DUE])
        assert due >= int(time.time() * 1000) + 110_000

    async def test_undecodable_record_is_dead_lettered(self) -> None:
        """A poison record goes straight to the dead-letter topic; the partition moves on."""
        r = rig([batch(event(0).to_bytes(), b"{garbage", None)])
        await run(r)
        assert ["event_0"] == r.sink.applied
        assert ["revocations.sub.dlq", "revocations.sub.dlq"] == r.topics()
        assert "InvalidRecord" == r.producer.sent[0][2]["propagator-exception-class"]
        assert [(TP, 3)] == r.consumer.commits

    async def test_permanent_rejection_is_dead_lettered_at_once(self) -> None:
        """A 400 is not retried: dead letter with the status; batch-mates applied."""
        r = rig([batch(*(event(i).to_bytes() for i in range(3)))], FakeSink(reject={"event_1"}))
        await run(r)
        assert ["event_0", "event_2"] == r.sink.applied
        assert ["revocations.sub.dlq"] == r.topics()
        assert "400" == r.producer.sent[0][2]["propagator-http-status"]
        assert 1 == r.delivery.stats.dead_lettered

    async def test_filtered_events_are_skipped_and_committed(self) -> None:
        """A subscriber that wants only user scope skips session events, still committing."""
        r = rig(
            [batch(event(0).to_bytes(), event(1, RevocationScope.USER).to_bytes())],
            event_filter=EventFilter(scopes=[RevocationScope.USER]),
        )
        await run(r)
        assert ["event_1"] == r.sink.applied
        assert 1 == r.delivery.stats.filtered
        assert [(TP, 2)] == r.consumer.commits


class TestCircuit:
    async def test_downstream_down_holds_instead_of_dead_lettering(self) -> None:
        """While the sink is unreachable nothing is forwarded or committed; then all lands."""
        sink = FakeSink(failures=[SinkDown("refused")] * 5)
        r = rig([batch(event(0).to_bytes(), event(1).to_bytes())], sink)
        await run(r, until=lambda: sink.applied)
        assert ["event_0", "event_1"] == sink.applied
        assert [] == r.producer.sent
        assert [(TP, 2)] == r.consumer.commits
        assert 1 == r.delivery.circuit.opened_count
        assert not r.delivery.circuit.is_open
        assert set() == r.consumer.paused

    async def test_run_of_failures_opens_the_circuit(self) -> None:
        """After `failure_threshold` consecutive failures the rest are held, not forwarded."""
        sink = FakeSink(fail_ids={f"event_{i}": SinkUnavailable("500") for i in range(6)})
        r = rig([batch(*(event(i).to_bytes() for i in range(6)))], sink, threshold=2)
        await run(r, until=lambda: r.delivery.circuit.is_open and r.consumer.polls > 3)
        assert 1 == len(r.topics())  # the first failure was forwarded; the second opened it
        assert [] == r.consumer.commits

    async def test_stop_during_an_outage_commits_nothing(self) -> None:
        """Shutdown while held abandons the batch uncommitted, for redelivery."""
        sink = FakeSink(failures=[SinkDown("refused")] * 10_000)
        r = rig([batch(event(0).to_bytes())], sink)
        await run(r, until=lambda: sink.calls >= 3)
        assert [] == r.consumer.commits
        assert [] == sink.applied


class TestRetryLevels:
    async def test_record_not_due_waits_with_its_partition_paused(self) -> None:
        """A not-yet-due record is sought back and its partition paused, then applied when due."""
        due = int(time.time() * 1000) + 150
        headers = [(H_LEVEL, b"0"), (H_DUE, str(due).encode())]
        first = {RETRY_TP: [record(7, event(7).to_bytes(), tp=RETRY_TP, headers=headers)]}
        r = rig([first])
        loop = ConsumerLoop(
            consumer=r.consumer, delivery=r.delivery, stop=r.stop, delayed=True, poll_timeout_ms=10
        )  # type: ignore[arg-type]
        task = asyncio.create_task(loop.run())
        async with asyncio.timeout(5):
            while RETRY_TP not in r.consumer.paused:
                await asyncio.sleep(0.005)
        assert [(RETRY_TP, 7)] == r.consumer.seeks
        assert [] == r.sink.applied
        r.consumer.batches.append(first)  # what the broker returns again after the seek
        async with asyncio.timeout(5):
            while not r.sink.applied:
                await asyncio.sleep(0.005)
        assert time.time() * 1000 >= due
        r.stop.set()
        await task
        assert [(RETRY_TP, 8)] == r.consumer.commits

    async def test_failure_at_a_level_moves_to_the_next_then_dead_letters(self) -> None:
        """Level 0 failing goes to level 1; the last level failing goes to the dead-letter topic."""
        sink = FakeSink(fail_ids={"event_1": SinkUnavailable("500", http_status=500)})
        past = str(int(time.time() * 1000) - 1).encode()
        at0 = [
            (H_LEVEL, b"0"),
            (H_DUE, past),
            ("propagator-original-offset", b"41"),
            ("propagator-attempts", b"3"),
        ]
        at1 = [(H_LEVEL, b"1"), (H_DUE, past)]
        r = rig(
            [
                {
                    RETRY_TP: [
                        record(0, event(1).to_bytes(), tp=RETRY_TP, headers=at0),
                        record(1, event(1).to_bytes(), tp=RETRY_TP, headers=at1),
                    ]
                }
            ],
            sink,
        )
        await run(r, delayed=True)
        assert ["revocations.sub.retry.1", "revocations.sub.dlq"] == r.topics()
        first = r.producer.sent[0][2]
        assert ("1", "41", "6") == (
            first[H_LEVEL],
            first["propagator-original-offset"],
            first["propagator-attempts"],
        )
        assert [(RETRY_TP, 2)] == r.consumer.commits


@pytest.mark.parametrize("attempts", [1, 2])
async def test_in_process_attempts_are_bounded(attempts: int) -> None:
    """The quick retries stop after `attempts` and hand over to the retry topics."""
    sink = FakeSink(fail_ids={"event_0": SinkUnavailable("x")})
    r = rig([batch(event(0).to_bytes())], sink)
    r.delivery._retry = RetryPolicy(attempts=attempts, max_backoff_s=0.01, delays_s=[1.0])
    await run(r)
    # One batch call plus `attempts` calls for the record on its own.
    assert attempts + attempts == sink.calls
