"""Recovering from a broker that lost the producer's state, and receipts that must not be lost."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, OutOfOrderSequenceNumber

from consumers.receipts import Receipt, ReceiptWriter
from propagator.errors import BrokerUnavailable, ProducerStateLost
from propagator.kafka import ProducerHandle


@dataclass
class FakeProducer:
    fail: list[Exception] = field(default_factory=list)
    sent: list[bytes] = field(default_factory=list)
    started: bool = False
    stopped: bool = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send_and_wait(self, topic: str, **kwargs: Any) -> str:
        if self.fail:
            raise self.fail.pop(0)
        self.sent.append(kwargs["value"])
        return "ack"

    async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(self.fail.pop(0))
        else:
            self.sent.append(kwargs["value"])
            future.set_result("ack")
        return future

    async def send_many(
        self, topic: str, records: list[tuple[bytes, bytes]]
    ) -> list[asyncio.Future[Any]]:
        return [await self.send(topic, key=key, value=value) for key, value in records]


class TestProducerHandle:
    async def test_lost_sequence_state_replaces_the_producer(self) -> None:
        """OutOfOrderSequenceNumber: a 503 now, a fresh producer for the provider's retry."""
        made = [FakeProducer(fail=[OutOfOrderSequenceNumber()]), FakeProducer()]
        handle = ProducerHandle(lambda: made.pop(0))  # type: ignore[arg-type,return-value]
        first = handle.current
        with pytest.raises(ProducerStateLost):
            await handle.send_and_wait("t", value=b"1")
        assert 1 == handle.replacements
        assert "ack" == await handle.send_and_wait("t", value=b"1")
        assert handle.current is not first
        assert handle.current.started  # type: ignore[attr-defined]
        await asyncio.sleep(0)  # the old producer is stopped in the background
        assert first.stopped  # type: ignore[attr-defined]

    async def test_connection_errors_do_not_replace_it(self) -> None:
        """A broker that is merely down is retried by the caller with the same producer."""
        handle = ProducerHandle(lambda: FakeProducer(fail=[KafkaConnectionError()]))  # type: ignore[arg-type,return-value]
        with pytest.raises(BrokerUnavailable):
            await handle.send_and_wait("t", value=b"1")
        assert 0 == handle.replacements


def receipt(n: int) -> Receipt:
    return Receipt(
        event_id=f"e{n}",
        subscriber="s",
        outcome="applied",
        at="now",
        attempts=1,
        latency_s=0.1,
        error=None,
        http_status=None,
        event=None,
    )


class TestReceiptWriter:
    async def test_a_failed_receipt_is_sent_again_by_the_next_flush(self) -> None:
        """Flush raises while a receipt is not durable, and keeps it for the next flush."""
        producer = FakeProducer(fail=[KafkaConnectionError()])
        writer = ReceiptWriter(producer=producer, topic="receipts")  # type: ignore[arg-type]
        writer.emit(receipt(1))
        writer.emit(receipt(2))
        with pytest.raises(BrokerUnavailable):
            await writer.flush()
        await writer.flush()
        assert [b"e1", b"e2"] == sorted(
            Receipt.from_bytes(v).event_id.encode() for v in producer.sent
        )

    async def test_receipts_are_sent_by_the_flush_in_one_batch(self) -> None:
        """Emitting sends nothing (applying never waits on the producer); the flush sends
        everything emitted since the last one in one call."""
        calls: list[int] = []
        producer = FakeProducer()
        send_many = producer.send_many

        async def counted(topic: str, records: list[tuple[bytes, bytes]]) -> list[Any]:
            calls.append(len(records))
            return await send_many(topic, records)

        producer.send_many = counted  # type: ignore[method-assign]
        writer = ReceiptWriter(producer=producer, topic="receipts")  # type: ignore[arg-type]
        writer.emit_many([receipt(1), receipt(2)])
        writer.emit(receipt(3))
        assert [] == producer.sent
        await writer.flush()
        assert [3] == calls
        assert 3 == len(producer.sent)
        await writer.flush()
        assert [3] == calls  # nothing left to send

    async def test_concurrent_flushes_wait_for_every_earlier_receipt(self) -> None:
        """A flush that begins while another waits still waits for the receipts that other
        flush is waiting on, and a receipt emitted meanwhile is kept for a later flush."""
        loop = asyncio.get_running_loop()
        acks = [loop.create_future() for _ in range(3)]

        class HeldProducer:
            async def send_many(
                self, topic: str, records: list[tuple[bytes, bytes]]
            ) -> list[asyncio.Future[Any]]:
                return [acks.pop(0) for _ in records]

        writer = ReceiptWriter(producer=HeldProducer(), topic="receipts")  # type: ignore[arg-type]
        first_ack = acks[0]
        writer.emit(receipt(1))
        first = asyncio.create_task(writer.flush())
        await asyncio.sleep(0)
        second = asyncio.create_task(writer.flush())
        await asyncio.sleep(0)
        second_ack = acks[0]
        writer.emit(receipt(2))  # emitted while both flushes wait
        assert not first.done()
        assert not second.done()
        first_ack.set_result("ack")
        await asyncio.gather(first, second)
        third = asyncio.create_task(writer.flush())
        await asyncio.sleep(0)
        assert not third.done()  # receipt 2 is still pending, not dropped by the others
        second_ack.set_result("ack")
        await third


class TestReplacementOnFutures:
    async def test_a_failed_future_replaces_the_producer(self) -> None:
        """Lost state reported by a send's future (not the call) still replaces the producer."""
        made = [FakeProducer(fail=[OutOfOrderSequenceNumber()]), FakeProducer()]
        handle = ProducerHandle(lambda: made.pop(0))  # type: ignore[arg-type,return-value]
        future = await handle.send("t", value=b"1")
        with pytest.raises(OutOfOrderSequenceNumber):
            await future
        await asyncio.sleep(0)  # done callbacks run on the next turn of the loop
        assert 1 == handle.replacements
        assert "ack" == await (await handle.send("t", value=b"2"))

    async def test_failures_of_one_broken_producer_replace_it_once(self) -> None:
        """Several in-flight failures of the same producer do not replace the fresh one."""
        made = [FakeProducer(fail=[OutOfOrderSequenceNumber()] * 3), FakeProducer(), FakeProducer()]
        handle = ProducerHandle(lambda: made.pop(0))  # type: ignore[arg-type,return-value]
        futures = [await handle.send("t", value=b"x") for _ in range(3)]
        await asyncio.gather(*futures, return_exceptions=True)
        assert 1 == handle.replacements
