"""Wires one subscriber from settings: Redis, Kafka consumer and producer, sink, runtime."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import structlog
from redis.asyncio import Redis

from consumers.dead_letters import DeadLetters, dead_letter_topic
from consumers.runtime import SubscriberWorker
from consumers.sinks import RedisDenylistSink
from propagator.errors import DependencyUnavailable, map_kafka_errors
from propagator.kafka import TopicSpec, ensure_topics, make_consumer, make_producer
from propagator.settings import Settings

_log = structlog.get_logger(__name__)


def topics_for(settings: Settings) -> list[TopicSpec]:
    kafka = settings.kafka
    return [
        TopicSpec(kafka.topic, kafka.topic_partitions, kafka.topic_replication_factor),
        TopicSpec(
            dead_letter_topic(kafka.topic, settings.worker.subscriber),
            1,
            kafka.topic_replication_factor,
        ),
    ]


async def _until_broker_answers(settings: Settings, stop: asyncio.Event) -> bool:
    backoff = 0.2
    while not stop.is_set():
        try:
            await ensure_topics(settings.kafka.bootstrap_servers, topics_for(settings))
        except DependencyUnavailable as exc:
            _log.warning("broker.connect_failed", error=str(exc), retry_in_s=backoff)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await stop.wait()
            backoff = min(backoff * 2, settings.worker.max_backoff_s)
        else:
            return True
    return False


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    """Run the configured subscriber until ``stop`` is set."""
    if not await _until_broker_answers(settings, stop):
        return
    redis = Redis.from_url(
        settings.redis.url,
        socket_timeout=settings.redis.socket_timeout_s,
        socket_connect_timeout=settings.redis.socket_timeout_s,
    )
    producer = make_producer(settings.kafka)
    consumer = make_consumer(settings.kafka, settings.worker, settings.kafka.topic)
    try:
        with map_kafka_errors():
            await producer.start()
            await consumer.start()
        worker = SubscriberWorker(
            consumer=consumer,
            sink=RedisDenylistSink(
                redis=redis,
                key_prefix=settings.denylist.key_prefix,
                ttl_s=settings.denylist.max_session_lifetime_s,
            ),
            dead_letters=DeadLetters(
                producer=producer,
                topic=dead_letter_topic(settings.kafka.topic, settings.worker.subscriber),
                group_id=settings.worker.group_id,
                subscriber=settings.worker.subscriber,
            ),
            subscriber=settings.worker.subscriber,
            max_batch=settings.worker.max_batch,
            max_backoff_s=settings.worker.max_backoff_s,
        )
        _log.info(
            "worker.started",
            subscriber=settings.worker.subscriber,
            group_id=settings.worker.group_id,
            topic=settings.kafka.topic,
        )
        run = asyncio.create_task(worker.run(), name="subscriber-worker")
        stopper = asyncio.create_task(stop.wait(), name="stop-wait")
        done, _ = await asyncio.wait({run, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            worker.stop()
        else:
            stopper.cancel()
        await run
        _log.info(
            "worker.stopped", applied=worker.stats.applied, dead_lettered=worker.stats.dead_lettered
        )
    finally:
        # Leaving the group hands the partitions over at once instead of after a session timeout.
        await consumer.stop()
        await producer.stop()
        await redis.aclose()


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
