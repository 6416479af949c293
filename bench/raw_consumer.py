"""Baseline for part 3: a raw aiokafka consumer that only deserializes the pre-filled topic.

    python -m bench.raw_consumer --bootstrap HOST:PORT --topic T --records N --out FILE

Same fetch settings as the worker (``WorkerSettings``), partitions assigned from the start,
and ``RevocationEvent.from_bytes`` on every record, as the worker decodes them; no sink, no
commits. The rate counts from the first batch to the last record, as the worker's does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from bench._kafka import PARTITIONS
from propagator.settings import WorkerSettings
from schemas import RevocationEvent


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    worker = WorkerSettings()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=args.bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=worker.fetch_max_wait_ms,
        max_poll_records=worker.max_batch,
    )
    await consumer.start()
    try:
        consumer.assign([TopicPartition(args.topic, p) for p in range(PARTITIONS)])
        await consumer.seek_to_beginning()
        seen = 0
        first_at = first_batch = 0.0
        cpu_before = time.process_time()
        deadline = time.monotonic() + args.timeout
        while seen < args.records and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=worker.max_batch)
            count = 0
            for records in batches.values():
                for record in records:
                    assert record.value is not None
                    RevocationEvent.from_bytes(record.value)
                    count += 1
            if count and not first_at:
                first_at, first_batch = time.monotonic(), count
            seen += count
        done_at = time.monotonic()
    finally:
        await consumer.stop()
    elapsed = done_at - first_at if first_at else 0.0
    return {
        "records": seen,
        "rate_rps": (seen - first_batch) / elapsed if elapsed > 0 else 0.0,
        "cpu_s": time.process_time() - cpu_before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--records", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    Path(args.out).write_text(json.dumps(asyncio.run(_main(args))))


if __name__ == "__main__":
    main()
