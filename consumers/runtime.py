"""The consume → apply → commit loop of one subscriber.

At-least-once: a partition's offset is committed only after every record before it was
applied by the sink or forwarded to the dead-letter topic. A retriable failure (the
downstream is unreachable) is retried with capped exponential backoff and jitter, holding
the partition rather than dead-lettering; a permanent failure dead-letters the record.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError
from structlog.contextvars import bound_contextvars
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    wait_exponential_jitter,
)

from consumers.dead_letters import DeadLetters
from consumers.sinks import Sink
from propagator.errors import InvalidRecord, PropagatorError, SinkRejected
from schemas import RevocationEvent

_log = structlog.get_logger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]


@dataclass
class WorkerStats:
    """Counts since start; the worker's metrics read them."""

    applied: int = 0
    dead_lettered: int = 0
    retries: int = 0
    committed: dict[TopicPartition, int] = field(default_factory=dict)


class _Stopping(Exception):
    """Raised inside a retry loop when shutdown was requested; nothing is committed."""


class SubscriberWorker:
    """Runs one subscriber's consumer group against one sink."""

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        sink: Sink,
        dead_letters: DeadLetters,
        subscriber: str,
        max_batch: int = 500,
        max_backoff_s: float = 5.0,
        poll_timeout_ms: int = 500,
    ) -> None:
        self._consumer = consumer
        self._sink = sink
        self._dead_letters = dead_letters
        self._subscriber = subscriber
        self._max_batch = max_batch
        self._max_backoff_s = max_backoff_s
        self._poll_timeout_ms = poll_timeout_ms
        self._stop = asyncio.Event()
        self.stats = WorkerStats()

    def stop(self) -> None:
        """Finish or abandon the in-flight batch, commit what was applied, and return."""
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            batches = await self._consumer.getmany(
                timeout_ms=self._poll_timeout_ms, max_records=self._max_batch
            )
            for tp, records in batches.items():
                try:
                    await self._process(tp, records)
                except _Stopping:
                    _log.info(
                        "worker.abandoned_batch", partition=tp.partition, records=len(records)
                    )
                    return

    async def _process(self, tp: TopicPartition, records: Sequence[Record]) -> None:
        events: list[tuple[Record, RevocationEvent]] = []
        for record in records:
            try:
                events.append((record, _decode(record)))
            except InvalidRecord as exc:
                await self._dead_letter(record, exc, attempts=1)
        if events:
            try:
                await self._apply_with_retry([event for _, event in events])
                self.stats.applied += len(events)
            except SinkRejected:
                # One bad event must not hold the others back: find it record by record.
                await self._apply_one_by_one(events)
        for record, event in events:
            with bound_contextvars(event_id=event.event_id):
                _log.debug("event.applied", sink=self._sink.kind, offset=record.offset)
        await self._commit(tp, records[-1].offset + 1)

    async def _apply_one_by_one(self, events: Sequence[tuple[Record, RevocationEvent]]) -> None:
        for record, event in events:
            with bound_contextvars(event_id=event.event_id):
                try:
                    await self._apply_with_retry([event])
                    self.stats.applied += 1
                except SinkRejected as exc:
                    await self._dead_letter(record, exc, attempts=1)

    async def _apply_with_retry(self, events: Sequence[RevocationEvent]) -> None:
        await self._with_retry(lambda: self._sink.apply(events))

    async def _with_retry(self, call: Callable[[], Awaitable[None]]) -> None:
        """Retry retriable failures with capped backoff until they pass or shutdown begins."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(
                lambda exc: isinstance(exc, PropagatorError) and exc.retriable
            ),
            wait=wait_exponential_jitter(multiplier=0.1, jitter=0.2, max=self._max_backoff_s),
            before_sleep=self._before_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if self._stop.is_set() and attempt.retry_state.attempt_number > 1:
                    raise _Stopping
                await call()

    def _before_retry(self, state: object) -> None:
        self.stats.retries += 1
        outcome = getattr(state, "outcome", None)
        error = outcome.exception() if outcome is not None else None
        _log.warning(
            "sink.retrying",
            subscriber=self._subscriber,
            attempt=getattr(state, "attempt_number", None),
            error=str(error),
        )

    async def _dead_letter(self, record: Record, error: PropagatorError, attempts: int) -> None:
        await self._with_retry(lambda: self._dead_letters.forward(record, error, attempts))
        self.stats.dead_lettered += 1
        _log.error(
            "event.dead_lettered",
            topic=self._dead_letters.topic,
            partition=record.partition,
            offset=record.offset,
            code=error.code,
            error=error.message,
        )

    async def _commit(self, tp: TopicPartition, offset: int) -> None:
        try:
            await self._consumer.commit({tp: offset})
        except (CommitFailedError, KafkaError) as exc:
            # The partition moved to another member; it resumes from the last commit, and
            # the sink's idempotence absorbs the repeat.
            _log.warning("worker.commit_failed", partition=tp.partition, error=str(exc))
            return
        self.stats.committed[tp] = offset


def _decode(record: Record) -> RevocationEvent:
    if record.value is None:
        raise InvalidRecord("record has no value")
    try:
        return RevocationEvent.from_bytes(record.value)
    except ValidationError as exc:
        raise InvalidRecord(
            f"not a revocation event: {exc.error_count()} validation errors"
        ) from exc
