"""The consume → apply → commit loops of one subscriber.

At-least-once: a partition's offset is committed only after every record before it was
applied by the sink, forwarded to a retry topic, or dead-lettered.

* A batch is applied with a few quick in-process retries (tenacity: exponential backoff with
  jitter, bounded to a few seconds). When it still fails, records are applied one by one so
  that one bad record cannot hold the others back.
* A record that fails transiently goes to the next delayed retry topic and the partition
  moves on; a permanent failure (or an undecodable record) goes to the dead-letter topic.
* When the downstream itself is down, the circuit opens: the loop pauses its partitions,
  holds the records and probes until the downstream answers. Nothing is dead-lettered just
  because the downstream was down; lag grows and drains afterwards.
* The retry loop waits for a record to become due by pausing its partition until then,
  never by sleeping per record.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeAlias

import structlog
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError
from structlog.contextvars import bound_contextvars
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from consumers._wait import pause
from consumers.circuit import CircuitBreaker, CircuitOpen
from consumers.config import EventFilter, RetryPolicy
from consumers.forwarding import H_DUE, Forwarder, headers_of
from consumers.metrics import WorkerMetrics
from consumers.receipts import ReceiptWriter, receipt_for
from consumers.sinks import Sink
from propagator import tracing
from propagator.errors import (
    DependencyUnavailable,
    InvalidRecord,
    PropagatorError,
    SinkDown,
    SinkRejected,
    SinkUnavailable,
)
from schemas import RevocationEvent

_log = structlog.get_logger(__name__)

Record: TypeAlias = ConsumerRecord[bytes, bytes]


@dataclass
class SubscriberStats:
    """Counts since start; the worker's metrics and tests read them."""

    applied: int = 0
    filtered: int = 0
    retried: int = 0
    forwarded_to_retry: int = 0
    dead_lettered: int = 0
    latencies_s: list[float] = field(default_factory=list)


class Stopping(Exception):
    """Shutdown began while records were held: abandon them uncommitted, for redelivery."""


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, PropagatorError) and exc.retriable


def _header(record: Record, name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return str(value.decode("ascii", "replace"))
    return None


def _decode(record: Record) -> RevocationEvent:
    if record.value is None:
        raise InvalidRecord("record has no value")
    try:
        return RevocationEvent.from_bytes(record.value)
    except ValidationError as exc:
        raise InvalidRecord(f"not a revocation event: {exc.error_count()} errors") from exc


class Delivery:
    """Applies records to one subscriber's sink, forwarding what cannot be applied now."""

    def __init__(
        self,
        *,
        subscriber: str,
        sink: Sink,
        forwarder: Forwarder,
        circuit: CircuitBreaker,
        event_filter: EventFilter,
        retry: RetryPolicy,
        stop: asyncio.Event,
        receipts: ReceiptWriter | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.subscriber = subscriber
        self._receipts = receipts
        self._metrics = metrics
        self._sink = sink
        self._forwarder = forwarder
        self.circuit = circuit
        self._filter = event_filter
        self._retry = retry
        self._stop = stop
        self.stats = SubscriberStats()
        self._traces: dict[str, str] = {}
        # Bound once: a labelled child's look-up is not free, and this runs once per record.
        self._propagation = (
            metrics.propagation_seconds.labels(subscriber) if metrics is not None else None
        )

    async def handle(self, records: Sequence[Record]) -> None:
        """Return once every record is applied, forwarded or dead-lettered; else raise
        CircuitOpen (hold them) or Stopping (abandon them)."""
        wanted: list[tuple[Record, RevocationEvent]] = []
        self._traces = {}
        for record in records:
            try:
                event = _decode(record)
            except InvalidRecord as exc:
                await self._forward(record, exc, attempts=1)
                continue
            traceparent = _header(record, tracing.HEADER)
            if traceparent is not None and tracing.valid(traceparent):
                self._traces[event.event_id] = traceparent
            if self._filter.matches(event):
                wanted.append((record, event))
            else:
                self.stats.filtered += 1
        if not wanted:
            return
        try:
            await self._apply([event for _, event in wanted])
        except SinkDown as exc:
            self.circuit.failure(down=True)
            self._circuit_gauge()
            raise CircuitOpen(exc.message) from exc
        except (SinkUnavailable, SinkRejected):
            # Find the culprits one by one; the others are applied now.
            for record, event in wanted:
                await self._one(record, event)
            return
        await self._applied(wanted)

    async def _one(self, record: Record, event: RevocationEvent) -> None:
        with bound_contextvars(event_id=event.event_id):
            try:
                await self._apply([event])
            except SinkDown as exc:
                self.circuit.failure(down=True)
                self._circuit_gauge()
                raise CircuitOpen(exc.message) from exc
            except SinkUnavailable as exc:
                self.circuit.failure(down=False)
                self._circuit_gauge()
                if self.circuit.is_open:
                    raise CircuitOpen(exc.message) from exc
                await self._forward(record, exc, attempts=self._retry.attempts)
                return
            except SinkRejected as exc:
                await self._forward(record, exc, attempts=1)
                return
            await self._applied([(record, event)])

    async def _applied(self, applied: Sequence[tuple[Record, RevocationEvent]]) -> None:
        self.circuit.success()
        self._circuit_gauge()
        now = time.time()
        for _, event in applied:
            latency = now - event.received_at.timestamp()
            self.stats.latencies_s.append(latency)
            if self._propagation is not None:
                self._propagation.observe(latency)
        if self._receipts is not None:
            at = datetime.now(UTC)
            self._receipts.emit_many(
                [
                    receipt_for(
                        event,
                        event_id=event.event_id,
                        subscriber=self.subscriber,
                        outcome="applied",
                        attempts=1,
                        now=at,
                        event_json=record.value,
                    )
                    for record, event in applied
                ]
            )
        del self.stats.latencies_s[:-10_000]
        self.stats.applied += len(applied)
        if self._metrics is not None:
            self._metrics.applied.labels(self.subscriber).inc(len(applied))

    def _circuit_gauge(self) -> None:
        if self._metrics is not None:
            self._metrics.circuit_open.labels(self.subscriber).set(1 if self.circuit.is_open else 0)

    async def flush(self) -> None:
        """Wait until every receipt of the records handled so far is durable."""
        if self._receipts is None:
            return
        backoff = 0.2
        while True:
            try:
                await self._receipts.flush()
            except DependencyUnavailable as exc:
                # The broker is away: the offsets must wait for their receipts.
                _log.warning("receipts.retrying", subscriber=self.subscriber, error=exc.message)
                if await pause(self._stop, backoff):
                    raise Stopping from exc
                backoff = min(backoff * 2, 5.0)
            else:
                return

    async def _apply(self, events: Sequence[RevocationEvent]) -> None:
        token = tracing.by_event.set(self._traces)
        try:
            await self._apply_retrying(events)
        finally:
            tracing.by_event.reset(token)

    async def _apply_retrying(self, events: Sequence[RevocationEvent]) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: _retriable(e) and not isinstance(e, SinkDown)),
            stop=stop_after_attempt(self._retry.attempts),
            wait=self._wait,
            before_sleep=self._before_retry,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if self._stop.is_set() and attempt.retry_state.attempt_number > 1:
                    raise Stopping
                started = time.perf_counter()
                try:
                    await self._sink.apply(events)
                finally:
                    if self._metrics is not None:
                        elapsed = time.perf_counter() - started
                        self._metrics.sink_seconds.labels(self.subscriber).observe(elapsed)

    def _wait(self, state: RetryCallState) -> float:
        exponential = min(0.1 * 2.0 ** (state.attempt_number - 1), self._retry.max_backoff_s)
        jitter = exponential * 0.5 * (time.time() % 1)  # cheap jitter, no shared RNG state
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        retry_after = float(getattr(error, "retry_after_s", None) or 0.0)
        # A Retry-After longer than the in-process budget is honoured by the retry topics.
        return min(max(exponential + jitter, retry_after), self._retry.max_backoff_s)

    def _before_retry(self, state: RetryCallState) -> None:
        self.stats.retried += 1
        outcome = state.outcome
        _log.info(
            "sink.retrying",
            subscriber=self.subscriber,
            attempt=state.attempt_number,
            error=str(outcome.exception()) if outcome is not None else None,
        )

    async def _forward(self, record: Record, error: PropagatorError, attempts: int) -> None:
        backoff = 0.2
        while True:
            try:
                topic = await self._forwarder.forward(record, error, attempts)
                break
            except DependencyUnavailable as exc:
                # The broker is down too: nothing may be committed until the record is safe.
                _log.warning("forward.retrying", subscriber=self.subscriber, error=exc.message)
                if await pause(self._stop, backoff):
                    raise Stopping from exc
                backoff = min(backoff * 2, 5.0)
        dead = topic == self._forwarder.dead_letter_topic
        await self._receipt_for_forward(record, error, attempts, dead=dead, topic=topic)
        if dead:
            self.stats.dead_lettered += 1
            _log.error(
                "event.dead_lettered",
                subscriber=self.subscriber,
                partition=record.partition,
                offset=record.offset,
                code=error.code,
                error=error.message,
            )
        else:
            self.stats.forwarded_to_retry += 1
            _log.warning(
                "event.retry_scheduled", subscriber=self.subscriber, topic=topic, code=error.code
            )

    async def _receipt_for_forward(
        self, record: Record, error: PropagatorError, attempts: int, *, dead: bool, topic: str
    ) -> None:
        if self._metrics is not None:
            if dead:
                self._metrics.dead_letters.labels(self.subscriber).inc()
            else:
                level = topic.rsplit(".", 1)[-1]
                self._metrics.retries.labels(self.subscriber, level).inc()
        if self._receipts is None:
            return
        try:
            event: RevocationEvent | None = _decode(record)
        except InvalidRecord:
            event = None
        event_id = event.event_id if event else headers_of(record).get("event-id", "unknown")
        self._receipts.emit(
            receipt_for(
                event,
                event_id=event_id,
                subscriber=self.subscriber,
                outcome="dead-lettered" if dead else "retrying",
                attempts=attempts,
                error=f"{type(error).__name__}: {error.message}"[:512],
                http_status=getattr(error, "http_status", None),
            )
        )


# Records applied but not yet committed before the loop waits for a commit: a bound on what
# a crash makes the sink see again, and on the receipts held for the next flush.
SETTLE_BACKLOG_RECORDS = 5000
# Settles start at most this often: under load one receipt flush and one commit carry many
# polls. An idle loop's first poll settles at once.
SETTLE_INTERVAL_S = 0.05


class _Settler:
    """Settles (flushes receipts, then commits) applied offsets in the background, in order.

    Polling and applying never wait for a broker round trip: the offsets handled while a
    settle is in flight, or within ``interval_s`` of the last one's start, are merged (the
    latest per partition) and settled together. One settle at a time keeps the commits in
    order; a backlog of ``hold_after`` records makes the loop wait.
    """

    def __init__(
        self,
        settle: Callable[[dict[TopicPartition, Record]], Coroutine[Any, Any, None]],
        *,
        hold_after: int,
        interval_s: float = SETTLE_INTERVAL_S,
    ) -> None:
        self._settle = settle
        self._hold_after = hold_after
        self._interval_s = interval_s
        self._pending: dict[TopicPartition, Record] = {}
        self._pending_records = 0
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_start = -float("inf")
        self._failure: BaseException | None = None

    def add(self, handled: dict[TopicPartition, Record], records: int) -> None:
        self._pending.update(handled)
        self._pending_records += records
        self._schedule()

    def _schedule(self) -> None:
        if self._task is not None or self._timer is not None:
            return  # the settle in flight, or the one scheduled, takes these along
        loop = asyncio.get_running_loop()
        wait = self._last_start + self._interval_s - loop.time()
        if wait > 0:
            self._timer = loop.call_later(wait, self._start)
        else:
            self._start()

    def _start(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None or self._failure is not None or not self._pending:
            return
        batch, self._pending, self._pending_records = self._pending, {}, 0
        self._last_start = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._settle(batch))
        self._task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._task = None
        if task.cancelled():
            self._failure = asyncio.CancelledError()
        elif task.exception() is not None:
            self._failure = task.exception()
        if self._pending:
            self._schedule()

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    async def below_backlog(self) -> None:
        while self._pending_records >= self._hold_after:
            self._start()  # no waiting out the interval with a full backlog
            if self._task is None:
                break
            await asyncio.wait([self._task])
        self.raise_failure()

    async def drain(self) -> None:
        """Settle everything added so far, at once (or raise what stopped it)."""
        while self._task is not None or (self._pending and self._failure is None):
            self._start()
            if self._task is not None:
                await asyncio.wait([self._task])
        self.raise_failure()


class ConsumerLoop:
    """One consumer group's loop: fetch, deliver, commit; hold while the circuit is open.

    With ``delayed=True`` it serves the retry topics: a record not yet due stays unread, its
    partition paused until the due time.
    """

    def __init__(
        self,
        *,
        consumer: AIOKafkaConsumer,
        delivery: Delivery,
        stop: asyncio.Event,
        delayed: bool = False,
        max_batch: int = 500,
        poll_timeout_ms: int = 500,
        settle_backlog: int = SETTLE_BACKLOG_RECORDS,
        settle_interval_s: float = SETTLE_INTERVAL_S,
    ) -> None:
        self._settle_backlog = settle_backlog
        self._settle_interval_s = settle_interval_s
        self._consumer = consumer
        self._delivery = delivery
        self._stop = stop
        self._delayed = delayed
        self._max_batch = max_batch
        self._poll_timeout_ms = poll_timeout_ms
        self._resume_at: dict[TopicPartition, asyncio.TimerHandle] = {}
        self.last_committed_ts_ms: dict[TopicPartition, int] = {}

    @property
    def consumer(self) -> AIOKafkaConsumer:
        return self._consumer

    async def run(self) -> None:
        settler = _Settler(
            self._settle, hold_after=self._settle_backlog, interval_s=self._settle_interval_s
        )
        try:
            while not self._stop.is_set():
                settler.raise_failure()
                batches = await self._consumer.getmany(
                    timeout_ms=self._poll_timeout_ms, max_records=self._max_batch
                )
                # The poll's partitions are delivered together: one sink call and one receipt
                # batch for the poll, not one per partition. Each partition's records keep
                # their order, and one user's events share a partition.
                due: list[Record] = []
                last: dict[TopicPartition, Record] = {}
                for tp, records in batches.items():
                    ready = self._due_prefix(tp, records) if self._delayed else records
                    if ready:
                        due.extend(ready)
                        last[tp] = ready[-1]
                if due:
                    await self._with_circuit(due)
                    settler.add(last, len(due))
                await settler.below_backlog()
        except Stopping:
            _log.info("worker.abandoned_batch", subscriber=self._delivery.subscriber)
        finally:
            for handle in self._resume_at.values():
                handle.cancel()
            try:
                await settler.drain()
            except Stopping:
                _log.info("worker.abandoned_batch", subscriber=self._delivery.subscriber)

    async def _settle(self, handled: dict[TopicPartition, Record]) -> None:
        """Commit offsets once every receipt of the records up to them is durable."""
        await self._delivery.flush()
        await self._commit(handled)

    def _due_prefix(self, tp: TopicPartition, records: Sequence[Record]) -> Sequence[Record]:
        now_ms = time.time() * 1000
        for index, record in enumerate(records):
            due_at = int(headers_of(record).get(H_DUE, "0"))
            if due_at > now_ms:
                # Records of one level are due in order: wait for this one, read it again then.
                self._consumer.seek(tp, record.offset)
                self._consumer.pause(tp)
                loop = asyncio.get_running_loop()
                self._resume_at[tp] = loop.call_later((due_at - now_ms) / 1000, self._resume, tp)
                return records[:index]
        return records

    def _resume(self, tp: TopicPartition) -> None:
        self._resume_at.pop(tp, None)
        if tp in self._consumer.assignment():
            self._consumer.resume(tp)

    async def _with_circuit(self, records: Sequence[Record]) -> None:
        circuit = self._delivery.circuit
        while True:
            with contextlib.suppress(CircuitOpen):
                await self._delivery.handle(records)
                return
            # Paused partitions still let the consumer poll, so it keeps its group membership.
            paused = set(self._consumer.assignment())
            self._consumer.pause(*paused)
            try:
                delay = circuit.next_probe_in()
                _log.info("circuit.holding", subscriber=self._delivery.subscriber, probe_in_s=delay)
                if await pause(self._stop, delay):
                    raise Stopping
                # Anything fetched meanwhile (a partition assigned during the hold) is read
                # again later: seek back so that no record is skipped.
                for fetched_tp, fetched in (await self._consumer.getmany(timeout_ms=0)).items():
                    self._consumer.seek(fetched_tp, fetched[0].offset)
            finally:
                resumable = [
                    p
                    for p in paused
                    if p in self._consumer.assignment() and p not in self._resume_at
                ]
                self._consumer.resume(*resumable)

    async def _commit(self, handled: dict[TopicPartition, Record]) -> None:
        try:
            await self._consumer.commit({tp: last.offset + 1 for tp, last in handled.items()})
        except KafkaError as exc:
            # A partition moved to another member; it resumes from the last commit, and the
            # sink's idempotence absorbs the repeat.
            _log.warning("worker.commit_failed", error=str(exc))
            return
        for tp, last in handled.items():
            self.last_committed_ts_ms[tp] = last.timestamp
