"""The evidence report: every revocation in a time window and what each subscriber did with it.

Reads the revocations topic (what was accepted) and the receipts topic (what each subscriber
did), both from the broker's own time index, so the report needs nothing but Kafka.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from consumers.config import SubscriberConfig
from consumers.receipts import Receipt
from propagator.errors import map_kafka_errors
from propagator.kafka import start_reader, topic_partitions
from schemas import RevocationEvent

Progress = Callable[[int, int], None]


@dataclass
class Row:
    event: RevocationEvent
    subscribers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def applied_everywhere(self) -> bool:
        return all(s["status"] == "applied" for s in self.subscribers.values())


@dataclass
class Report:
    since: datetime
    until: datetime
    rows: list[Row]
    subscriber_names: list[str]

    def summary(self) -> dict[str, Any]:
        latencies = sorted(
            s["latency_s"]
            for row in self.rows
            for s in row.subscribers.values()
            if s["status"] == "applied" and s.get("latency_s") is not None
        )
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "revocations": len(self.rows),
            "applied_everywhere": sum(1 for r in self.rows if r.applied_everywhere),
            "not_applied_everywhere": [
                r.event.event_id for r in self.rows if not r.applied_everywhere
            ],
            "propagation_seconds": {
                "p50": _percentile(latencies, 0.50),
                "p99": _percentile(latencies, 0.99),
                "max": latencies[-1] if latencies else None,
                "count": len(latencies),
            },
        }

    def to_json(self) -> str:
        return json.dumps(
            {
                "summary": self.summary(),
                "revocations": [
                    {
                        "event_id": r.event.event_id,
                        "source": r.event.source,
                        "type": r.event.type,
                        "scope": r.event.scope.value,
                        "user_id": r.event.user_id,
                        "session_id": r.event.session_id,
                        "received_at": r.event.received_at.isoformat(),
                        "applied_everywhere": r.applied_everywhere,
                        "subscribers": r.subscribers,
                    }
                    for r in self.rows
                ],
            },
            indent=2,
        )

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        head = ["event_id", "source", "type", "scope", "user_id", "session_id", "received_at"]
        for name in self.subscriber_names:
            head += [f"{name}_status", f"{name}_applied_at", f"{name}_latency_s", f"{name}_error"]
        writer.writerow([*head, "applied_everywhere"])
        for r in self.rows:
            e = r.event
            line = [
                e.event_id,
                e.source,
                e.type,
                e.scope.value,
                e.user_id or "",
                e.session_id or "",
                e.received_at.isoformat(),
            ]
            for name in self.subscriber_names:
                s = r.subscribers.get(name)
                if s is None:
                    line += ["not-subscribed", "", "", ""]
                    continue
                applied_at = s.get("at", "") if s["status"] == "applied" else ""
                latency = s.get("latency_s")
                line += [
                    s["status"],
                    applied_at,
                    "" if latency is None else f"{latency:.6f}",
                    s.get("error") or "",
                ]
            writer.writerow([*line, "yes" if r.applied_everywhere else "no"])
        return out.getvalue()


def _percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


async def _read_window(
    bootstrap: str, topic: str, since_ms: int, until_ms: int, progress: Progress
) -> list[Any]:
    """Records of ``topic`` whose broker timestamp lies in [since, until)."""
    partitions = await topic_partitions(bootstrap, topic)
    if not partitions:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    records: list[Any] = []
    with map_kafka_errors():
        await start_reader(consumer)
        try:
            consumer.assign(partitions)
            end = await consumer.end_offsets(partitions)
            starts = await consumer.offsets_for_times({tp: since_ms for tp in partitions})
            remaining: set[TopicPartition] = set()
            for tp in partitions:
                found = starts.get(tp)
                if found is None:
                    continue
                consumer.seek(tp, found.offset)
                remaining.add(tp)
            total = sum(
                end[tp] - (starts[tp].offset if starts.get(tp) else end[tp]) for tp in partitions
            )
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=1000)
                for tp, fetched in batch.items():
                    for record in fetched:
                        if record.offset >= end[tp] or record.timestamp >= until_ms:
                            remaining.discard(tp)
                            break
                        records.append(record)
                    if await consumer.position(tp) >= end[tp]:
                        remaining.discard(tp)
                progress(len(records), max(total, len(records)))
        finally:
            await consumer.stop()
    return records


async def build_report(
    *,
    bootstrap: str,
    topic: str,
    receipts_topic: str,
    subscribers: Sequence[SubscriberConfig],
    since: datetime,
    until: datetime,
    progress: Progress = lambda done, total: None,
) -> Report:
    since_ms, until_ms = int(since.timestamp() * 1000), int(until.timestamp() * 1000)
    rows: dict[str, Row] = {}
    for record in await _read_window(bootstrap, topic, since_ms, until_ms, progress):
        try:
            event = RevocationEvent.from_bytes(record.value or b"")
        except ValidationError:
            continue
        row = rows.setdefault(event.event_id, Row(event))
        for sub in subscribers:
            if sub.filter.matches(event):
                row.subscribers.setdefault(sub.name, {"status": "pending"})
    # Receipts come after their event: read to the end, not just to `until`.
    for record in await _read_window(bootstrap, receipts_topic, since_ms, 2**62, progress):
        try:
            receipt = Receipt.from_bytes(record.value or b"")
        except (ValueError, TypeError):
            continue
        target = rows.get(receipt.event_id)
        if target is None or receipt.subscriber not in target.subscribers:
            continue
        target.subscribers[receipt.subscriber] = {
            "status": receipt.outcome,
            "at": receipt.at,
            "attempts": receipt.attempts,
            "latency_s": receipt.latency_s,
            "error": receipt.error,
            "http_status": receipt.http_status,
        }
    ordered = sorted(rows.values(), key=lambda r: r.event.received_at)
    return Report(since, until, ordered, [s.name for s in subscribers])
