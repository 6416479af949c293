"""The producer handle's batched send, on the real broker."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer

from propagator.kafka import ProducerHandle, make_producer
from propagator.settings import Settings
from tests.integration.conftest import KAFKA_BOOTSTRAP

pytestmark = pytest.mark.integration


async def _read_all(topic: str, count: int) -> list[tuple[int, bytes, bytes]]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=KAFKA_BOOTSTRAP, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        found: list[tuple[int, bytes, bytes]] = []
        async with asyncio.timeout(30):
            while len(found) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [(r.partition, r.key or b"", r.value or b"") for r in records]
        return found
    finally:
        await consumer.stop()


class TestSendMany:
    async def test_records_land_where_send_puts_their_keys_in_order(
        self, settings: Settings, topic: str
    ) -> None:
        """Every record is durable once its future resolves, on the partition that ``send``
        chooses for the same key, and one key's records keep their order."""
        handle = ProducerHandle(lambda: make_producer(settings.kafka))
        try:
            keys = [f"key-{i % 40}".encode() for i in range(1_000)]
            records = [(key, f"{i}".encode()) for i, key in enumerate(keys)]
            futures = await handle.send_many(topic, records)
            assert len(records) == len(futures)
            await asyncio.gather(*futures)
            # One record per key through the ordinary path, to learn its partition.
            singles = {
                key: await (await handle.send(topic, key=key, value=b"single")) for key in set(keys)
            }
        finally:
            await handle.stop()
        found = await _read_all(topic, len(records) + len(singles))
        batched = [(p, k, v) for p, k, v in found if v != b"single"]
        assert sorted(v for _, _, v in batched) == sorted(v for _, v in records)
        for partition, key, _ in batched:
            assert singles[key].partition == partition
        for key in set(keys):
            values = [int(v) for _, k, v in batched if k == key]
            assert values == sorted(values)
