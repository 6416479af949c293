"""Baseline for part 2: the raw Kafka round trip, produce (acks=all) then consume, paced.

    python -m bench.roundtrip --bootstrap HOST:PORT --topic T --rates 100,1000 \
        --duration S --out FILE

One process produces canonical-event-sized records at each fixed rate with the producer
ingest uses (``propagator.kafka.make_producer``: acks=all, idempotent, linger 1 ms) and
consumes them with the worker's fetch settings (``fetch_max_wait_ms``, ``max_poll_records``
from ``WorkerSettings``), partitions assigned, no group. A record's latency runs from the
instant its send was dispatched to the instant ``getmany`` returned it: the floor under
ingest → Kafka → worker, with no HTTP, no verification and no Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench._kafka import PARTITIONS, canonical_event, record_headers
from bench._stats import Latency
from propagator.kafka import make_producer
from propagator.settings import KafkaSettings, WorkerSettings


async def _one_rate(
    *, producer: Any, consumer: AIOKafkaConsumer, topic: str, rate: float, duration_s: float
) -> dict[str, Any]:
    n = max(1, int(rate * duration_s))
    serial = time.strftime("%H%M%S")
    event = canonical_event(f"rt{serial}")
    value, headers = event.to_bytes(), record_headers(event)
    dispatched = [0.0] * n
    arrived = [0.0] * n
    tag = f"{serial}-{rate:g}-".encode()
    await consumer.seek_to_end()

    async def consume() -> None:
        remaining = n
        while remaining:
            batches = await consumer.getmany(timeout_ms=500, max_records=500)
            now = time.monotonic()
            for records in batches.values():
                for record in records:
                    key = record.key or b""
                    if key.startswith(tag):
                        j = int(key[len(tag) :])
                        if not arrived[j]:
                            arrived[j] = now
                            remaining -= 1

    consuming = asyncio.create_task(consume())
    await asyncio.sleep(0.3)  # the consumer's first fetch is in flight
    start = time.monotonic() + 0.2
    cpu_before = time.process_time()
    acks = []
    for j in range(n):
        delay = start + j / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        dispatched[j] = time.monotonic()
        acks.append(
            await producer.send(topic, value=value, key=tag + str(j).encode(), headers=headers)
        )
    await asyncio.gather(*acks)
    try:
        async with asyncio.timeout(30):
            await consuming
    except TimeoutError:
        consuming.cancel()
    # Both clients' CPU (one process): what a bare produce-then-consume costs per record.
    cpu_ms = (time.process_time() - cpu_before) * 1000 / n
    latencies = [(arrived[j] - dispatched[j]) * 1000 for j in range(n) if arrived[j]]
    lateness = sorted((dispatched[j] - (start + j / rate)) * 1000 for j in range(n))
    return {
        "rate_rps": rate,
        "records": n,
        "lost": n - len(latencies),
        "latency": Latency.of(latencies).as_dict(),
        "cpu_ms_per_record": round(cpu_ms, 3),
        "lateness_p99_ms": round(lateness[min(len(lateness) - 1, int(0.99 * len(lateness)))], 3),
    }


async def _main(args: argparse.Namespace) -> list[dict[str, Any]]:
    worker = WorkerSettings()
    producer = make_producer(KafkaSettings(bootstrap_servers=args.bootstrap, topic=args.topic))
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=worker.fetch_max_wait_ms,
        max_poll_records=worker.max_batch,
    )
    await producer.start()
    await consumer.start()
    try:
        consumer.assign([TopicPartition(args.topic, p) for p in range(PARTITIONS)])
        return [
            await _one_rate(
                producer=producer,
                consumer=consumer,
                topic=args.topic,
                rate=float(rate),
                duration_s=args.duration,
            )
            for rate in args.rates.split(",")
        ]
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--rates", required=True, help="comma-separated records per second")
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    Path(args.out).write_text(json.dumps(asyncio.run(_main(args))))


if __name__ == "__main__":
    main()
