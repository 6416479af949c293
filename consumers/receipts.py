"""Receipts: per subscriber, what became of each revocation, and when — the audit trail.

Each subscriber emits one receipt per record it applied, sent to a retry topic, or
dead-lettered, to the receipts topic (keyed by event id, so one event's receipts stay in
order). They are flushed before the offsets they describe are committed, so a crash can
repeat a receipt but never lose one. A projection keeps the latest state per event and
subscriber in Redis for fast look-ups (``GET /admin/revocations/{event_id}``).

    {prefix}{event_id}   hash: "_event" → the canonical event (JSON);
                               {subscriber} → the latest receipt (JSON)
    {prefix}.recent      sorted set (trailing ':' of the prefix dropped): the latest event ids
                         scored by received-at in epoch ms, at most ``recent`` of them
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import structlog
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from pydantic_core import from_json, to_json
from redis.asyncio import Redis

from consumers._wait import pause
from propagator.errors import (
    BrokerUnavailable,
    DependencyUnavailable,
    map_kafka_errors,
    map_redis_errors,
)
from propagator.kafka import Sender
from schemas import RevocationEvent

_log = structlog.get_logger(__name__)

Outcome = Literal["applied", "retrying", "dead-lettered"]
EVENT_FIELD = "_event"


@dataclass(frozen=True, slots=True)
class Receipt:
    event_id: str
    subscriber: str
    outcome: Outcome
    at: str
    attempts: int
    latency_s: float | None
    error: str | None
    http_status: int | None
    event: dict[str, Any] | None
    # The event's JSON as its record carried it, written as is instead of ``event``.
    event_json: bytes | None = None

    def to_bytes(self) -> bytes:
        if self.event_json is not None:
            return to_json(self._summary())[:-1] + b',"event":' + self.event_json + b"}"
        return to_json({**self._summary(), "event": self.event})

    def summary_json(self) -> str:
        """The receipt without its event, as the projection stores it per subscriber."""
        return to_json(self._summary()).decode()

    def _summary(self) -> dict[str, Any]:
        # Built by hand: dataclasses.asdict deep-copies, and this runs once per record.
        return {
            "event_id": self.event_id,
            "subscriber": self.subscriber,
            "outcome": self.outcome,
            "at": self.at,
            "attempts": self.attempts,
            "latency_s": self.latency_s,
            "error": self.error,
            "http_status": self.http_status,
        }

    @classmethod
    def from_bytes(cls, raw: bytes) -> Receipt:
        return cls(**from_json(raw))


def receipt_for(
    event: RevocationEvent | None,
    *,
    event_id: str,
    subscriber: str,
    outcome: Outcome,
    attempts: int,
    error: str | None = None,
    http_status: int | None = None,
    now: datetime | None = None,
    event_json: bytes | None = None,
) -> Receipt:
    """``event_json``: the event's canonical JSON as the record carried it (it was decoded
    into ``event``, so it is valid JSON), copied into the receipt as is; ``now``: one instant
    for a whole batch."""
    now = now or datetime.now(UTC)
    data = None
    if event_json is None and event is not None:
        data = event.model_dump(mode="json")
    latency = (now - event.received_at).total_seconds() if event is not None else None
    return Receipt(
        event_id=event_id,
        subscriber=subscriber,
        outcome=outcome,
        at=now.isoformat(),
        attempts=attempts,
        latency_s=latency if outcome == "applied" else None,
        error=error,
        http_status=http_status,
        event=data,
        event_json=event_json,
    )


@dataclass(slots=True, eq=False)
class _Sent:
    receipt: Receipt
    # None: not sent yet, or its send failed; the next flush sends it (again).
    future: asyncio.Future[Any] | None


class ReceiptWriter:
    """Keeps the receipts made while applying; ``flush`` sends them and returns once all of
    them are durable.

    Nothing is sent while records are applied: the flush before a commit sends everything
    emitted since the last one together (one Kafka batch per partition), in the background of
    the consumer loop. Several flushes may run at once (a subscriber's main and retry loops
    share a writer): each waits for every receipt emitted before it began, whichever flush
    sent it, and none drops a receipt emitted meanwhile.
    """

    def __init__(self, *, producer: Sender, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._pending: list[_Sent] = []
        self._sending = asyncio.Lock()

    def emit(self, receipt: Receipt) -> None:
        self._pending.append(_Sent(receipt, None))

    def emit_many(self, receipts: Sequence[Receipt]) -> None:
        self._pending.extend(_Sent(r, None) for r in receipts)

    async def _send_unsent(self, taken: Sequence[_Sent]) -> None:
        # One flush sends at a time, so a receipt is not sent twice by two flushes.
        async with self._sending:
            unsent = [s for s in taken if s.future is None]
            if not unsent:
                return
            try:
                with map_kafka_errors():
                    futures = await self._producer.send_many(
                        self._topic,
                        [(s.receipt.event_id.encode(), s.receipt.to_bytes()) for s in unsent],
                    )
            except DependencyUnavailable:
                return  # kept unsent, for the next flush
            for sent, future in zip(unsent, futures, strict=True):
                sent.future = future

    async def flush(self) -> None:
        """Send and wait for every receipt emitted so far; raise BrokerUnavailable if any is
        not durable (it is kept and sent again by the next flush)."""
        taken = list(self._pending)
        await self._send_unsent(taken)
        futures = [s.future for s in taken if s.future is not None]
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        failed = {
            id(f) for f, o in zip(futures, outcomes, strict=True) if isinstance(o, BaseException)
        }
        durable = set()
        for sent in taken:
            if sent.future is None or id(sent.future) in failed:
                sent.future = None
            else:
                durable.add(id(sent))
        # Receipts emitted while this flush waited stay pending.
        self._pending = [s for s in self._pending if id(s) not in durable]
        if len(durable) < len(taken):
            raise BrokerUnavailable(f"{len(taken) - len(durable)} receipts are not durable yet")


def _score(received_at: object) -> int | None:
    """The latest-events index's score: received-at in epoch milliseconds."""
    if isinstance(received_at, str):
        try:
            received_at = datetime.fromisoformat(received_at)
        except ValueError:
            return None
    if not isinstance(received_at, datetime):
        return None
    return int(received_at.timestamp() * 1000)


# KEYS[1] is the latest-events index, KEYS[1 + i] receipt i's hash. ARGV: the TTL, the index's
# size, and the receipts as one JSON array of [event id, event JSON ('' when unknown),
# subscriber, receipt summary JSON, index score ('' when not indexed)].
_FOLD = """
local ttl, recent = ARGV[1], tonumber(ARGV[2])
local indexed = false
for i, entry in ipairs(cjson.decode(ARGV[3])) do
  local key = KEYS[i + 1]
  local event_id, event, subscriber, summary, score =
    entry[1], entry[2], entry[3], entry[4], entry[5]
  if event ~= '' then redis.call('HSETNX', key, 'EVENT_FIELD', event) end
  redis.call('HSET', key, subscriber, summary)
  redis.call('EXPIRE', key, ttl)
  if recent > 0 and score ~= '' then
    redis.call('ZADD', KEYS[1], score, event_id)
    indexed = true
  end
end
if indexed then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -recent - 1)
  redis.call('EXPIRE', KEYS[1], ttl)
end
return #KEYS - 1
""".replace("EVENT_FIELD", EVENT_FIELD)


# KEYS[1] is the latest-events index, KEYS[1 + i] event i's hash. ARGV: the TTL, the index's
# size, then for each event its id, its JSON and its index score.
_NOTE = """
local ttl, recent = ARGV[1], tonumber(ARGV[2])
for i = 2, #KEYS do
  local at = 3 * i - 3
  local event_id, event, score = ARGV[at], ARGV[at + 1], ARGV[at + 2]
  redis.call('HSETNX', KEYS[i], 'EVENT_FIELD', event)
  redis.call('EXPIRE', KEYS[i], ttl)
  if recent > 0 then redis.call('ZADD', KEYS[1], score, event_id) end
end
if recent > 0 then
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -recent - 1)
  redis.call('EXPIRE', KEYS[1], ttl)
end
return #KEYS - 1
""".replace("EVENT_FIELD", EVENT_FIELD)


class ReceiptProjection:
    """The latest receipt per event and subscriber, in Redis hashes that expire."""

    def __init__(self, *, redis: Redis, prefix: str, ttl_s: int, recent: int = 0) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_s = ttl_s
        # Outside the per-event key space: no event id can name it.
        self._recent_key = f"{prefix.removesuffix(':')}.recent"
        self._recent = recent
        self._fold = redis.register_script(_FOLD)
        self._note = redis.register_script(_NOTE)

    def key(self, event_id: str) -> str:
        return f"{self._prefix}{event_id}"

    async def apply(self, receipts: Sequence[Receipt]) -> None:
        """Fold a batch of receipts in, in one server-side script call."""
        if not receipts:
            return
        keys = [self._recent_key]
        entries = []
        for receipt in receipts:
            keys.append(self.key(receipt.event_id))
            event = receipt.event
            score = _score(event.get("received_at")) if event is not None else None
            entries.append(
                (
                    receipt.event_id,
                    "" if event is None else to_json(event).decode(),
                    receipt.subscriber,
                    receipt.summary_json(),
                    "" if score is None else str(score),
                )
            )
        with map_redis_errors():
            await self._fold(keys=keys, args=[self._ttl_s, self._recent, to_json(entries)])

    async def note_published(self, events: Sequence[RevocationEvent]) -> None:
        """Ingest's note that events were published (each shows as pending), one script call.

        Raises redis-py's own errors: ingest counts a failed note as degraded, never fails on it.
        """
        if not events:
            return
        args: list[str | int] = [self._ttl_s, self._recent]
        for event in events:
            score = int(event.received_at.timestamp() * 1000)
            args += [event.event_id, event.model_dump_json(), score]
        await self._note(
            keys=[self._recent_key, *(self.key(e.event_id) for e in events)], args=args
        )

    async def latest(self, count: int) -> list[tuple[dict[str, Any], dict[str, dict[str, Any]]]]:
        """The newest ``count`` indexed events, newest first, each with its latest receipts."""
        with map_redis_errors():
            raw_ids = await self._redis.zrevrange(self._recent_key, 0, count - 1)
            ids = [i.decode() if isinstance(i, bytes) else str(i) for i in raw_ids]
            async with self._redis.pipeline(transaction=False) as pipe:
                for event_id in ids:
                    pipe.hgetall(self.key(event_id))
                hashes = await pipe.execute()
        found = [_event_and_receipts(raw) for raw in hashes]
        # An event whose hash expired since it was indexed is left out.
        return [(event, receipts) for event, receipts in found if event is not None]

    async def lookup(
        self, event_id: str
    ) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
        """The event (if known) and the latest receipt per subscriber."""
        with map_redis_errors():
            raw = await self._redis.hgetall(self.key(event_id))
        return _event_and_receipts(raw)


def _event_and_receipts(
    raw: dict[Any, Any],
) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    fields = {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}
    event = fields.pop(EVENT_FIELD, None)
    return event, fields


async def run_projection(
    *, consumer: AIOKafkaConsumer, projection: ReceiptProjection, stop: asyncio.Event
) -> None:
    """Fold the receipts topic into the projection, committing after each applied batch."""
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=500, max_records=1000)
        if not batches:
            continue
        # The poll's partitions in one projection write and one commit.
        receipts = []
        for tp, records in batches.items():
            for record in records:
                try:
                    receipts.append(Receipt.from_bytes(record.value or b""))
                except (ValueError, TypeError):
                    _log.warning("receipt.unreadable", partition=tp.partition, offset=record.offset)
        while True:
            try:
                await projection.apply(receipts)
                break
            except DependencyUnavailable as exc:
                _log.warning("projection.retrying", error=exc.message)
                if await pause(stop, 1.0):
                    return
        try:
            await consumer.commit({tp: records[-1].offset + 1 for tp, records in batches.items()})
        except KafkaError as exc:
            _log.warning("projection.commit_failed", error=str(exc))
