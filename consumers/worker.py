"""Wires the subscribers from settings: shared clients, one delivery and two loops each.

Each subscriber has its own consumer group on the main topic (``propagator.{name}``) and
another on its retry topics (``propagator.{name}.retry``), so that one subscriber's outage,
retries and lag never touch the others. The Redis clients, the HTTP client session and the
producer that forwards failures are created once here and shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass

import aiohttp
import structlog
from aiohttp import web
from aiokafka import AIOKafkaConsumer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.asyncio import Redis

from consumers._wait import pause
from consumers.circuit import CircuitBreaker
from consumers.config import SubscriberConfig, dead_letter_topic, retry_topic
from consumers.dlq import DeadLetterQueue
from consumers.forwarding import Forwarder, Route
from consumers.metrics import WorkerMetrics
from consumers.receipts import ReceiptProjection, ReceiptWriter, run_projection
from consumers.runtime import ConsumerLoop, Delivery
from consumers.sinks import Sink, build_sink
from consumers.sinks.http import HttpSinkConfig, make_http_session
from consumers.stats import StatsBoard, subscriber_snapshots
from propagator.errors import DependencyUnavailable, PropagatorError, map_kafka_errors
from propagator.kafka import ProducerHandle, TopicSpec, ensure_topics, make_consumer, make_producer
from propagator.redisclient import make_redis
from propagator.settings import Settings

_log = structlog.get_logger(__name__)


def topics_for(settings: Settings, subscribers: Sequence[SubscriberConfig]) -> list[TopicSpec]:
    kafka = settings.kafka
    specs = [TopicSpec(kafka.topic, kafka.topic_partitions, kafka.topic_replication_factor)]
    if settings.receipts.enabled:
        specs.append(
            TopicSpec(
                settings.receipts_topic,
                kafka.topic_partitions,
                kafka.topic_replication_factor,
                {"retention.ms": str(settings.receipts.retention_ms)},
            )
        )
    for sub in subscribers:
        for level in range(len(sub.retry.delays_s)):
            specs.append(
                TopicSpec(
                    retry_topic(kafka.topic, sub.name, level),
                    kafka.topic_partitions,
                    kafka.topic_replication_factor,
                )
            )
        specs.append(
            TopicSpec(dead_letter_topic(kafka.topic, sub.name), 1, kafka.topic_replication_factor)
        )
    return specs


# An idle retry-topic fetch returns after this long (a resumed partition is fetched next).
RETRY_FETCH_MAX_WAIT_MS = 500
# A projection fetch returns once this much is there, or after projection_max_delay_ms.
PROJECTION_FETCH_MIN_BYTES = 256 * 1024


def select(settings: Settings, names: Sequence[str] | None) -> list[SubscriberConfig]:
    configured = settings.effective_subscribers()
    if not names:
        return configured
    known = {s.name: s for s in configured}
    missing = [n for n in names if n not in known]
    if missing:
        raise ValueError(
            f"no subscriber named {', '.join(missing)}; configured: {', '.join(known)}"
        )
    return [known[n] for n in names]


async def _until_broker_answers(
    settings: Settings, topics: list[TopicSpec], stop: asyncio.Event
) -> bool:
    backoff = 0.2
    while not stop.is_set():
        try:
            await ensure_topics(settings.kafka.bootstrap_servers, topics)
        except DependencyUnavailable as exc:
            _log.warning("broker.connect_failed", error=str(exc), retry_in_s=backoff)
            await pause(stop, backoff)
            backoff = min(backoff * 2, settings.worker.max_backoff_s)
        else:
            return True
    return False


@dataclass
class RunningSubscriber:
    config: SubscriberConfig
    delivery: Delivery
    consumers: list[AIOKafkaConsumer]
    loops: list[ConsumerLoop]


class Clients:
    """The I/O clients every subscriber of this process shares."""

    def __init__(self, settings: Settings, subscribers: Sequence[SubscriberConfig]) -> None:
        self._settings = settings
        self._redis: dict[str, Redis] = {}
        allow = sorted(
            {
                a
                for s in subscribers
                if isinstance(s.sink, HttpSinkConfig)
                for a in s.sink.allow_private
            }
        )
        self.http: aiohttp.ClientSession = make_http_session(allow)
        self.producer = ProducerHandle(lambda: make_producer(settings.kafka))

    def redis(self, url: str | None) -> Redis:
        url = url or self._settings.redis.url
        if url not in self._redis:
            self._redis[url] = make_redis(self._settings.redis, url)
        return self._redis[url]

    async def close(self) -> None:
        await self.producer.stop()
        await self.http.close()
        for client in self._redis.values():
            await client.aclose()


def _subscriber(
    settings: Settings,
    config: SubscriberConfig,
    clients: Clients,
    stop: asyncio.Event,
    metrics: WorkerMetrics,
) -> RunningSubscriber:
    kafka, worker = settings.kafka, settings.worker
    sink: Sink = build_sink(config.sink, redis=clients.redis, session=clients.http)
    group = f"{worker.group_prefix}{config.name}"
    retry_topics = [
        retry_topic(kafka.topic, config.name, i) for i in range(len(config.retry.delays_s))
    ]
    delivery = Delivery(
        subscriber=config.name,
        sink=sink,
        forwarder=Forwarder(
            producer=clients.producer,
            route=Route(
                retry_topics, config.retry.delays_s, dead_letter_topic(kafka.topic, config.name)
            ),
            group_id=group,
            subscriber=config.name,
        ),
        circuit=CircuitBreaker(
            subscriber=config.name,
            failure_threshold=config.circuit.failure_threshold,
            probe_interval_s=config.circuit.probe_interval_s,
            max_probe_interval_s=config.circuit.max_probe_interval_s,
        ),
        event_filter=config.filter,
        retry=config.retry,
        stop=stop,
        receipts=(
            ReceiptWriter(producer=clients.producer, topic=settings.receipts_topic)
            if settings.receipts.enabled
            else None
        ),
        metrics=metrics,
    )
    main = make_consumer(kafka, worker, group, kafka.topic)
    consumers, loops = (
        [main],
        [ConsumerLoop(consumer=main, delivery=delivery, stop=stop, max_batch=worker.max_batch)],
    )
    if retry_topics:
        # Retry records wait seconds for their due time: no hurry to learn of a new one.
        retry = make_consumer(
            kafka,
            worker,
            f"{group}.retry",
            *retry_topics,
            max_wait_ms=RETRY_FETCH_MAX_WAIT_MS,
            min_bytes=1,
        )
        consumers.append(retry)
        loops.append(
            ConsumerLoop(
                consumer=retry,
                delivery=delivery,
                stop=stop,
                delayed=True,
                max_batch=worker.max_batch,
            )
        )
    return RunningSubscriber(config, delivery, consumers, loops)


async def run_worker(
    settings: Settings,
    stop: asyncio.Event,
    subscribers: Sequence[str] | None = None,
    started: asyncio.Event | None = None,
) -> list[RunningSubscriber]:
    """Run the selected subscribers (all by default) until ``stop`` is set."""
    selected = select(settings, subscribers)
    if not await _until_broker_answers(settings, topics_for(settings, selected), stop):
        return []
    clients = Clients(settings, selected)
    running: list[RunningSubscriber] = []
    metrics = WorkerMetrics(CollectorRegistry())
    extra: list[AIOKafkaConsumer] = []
    background: list[Awaitable[None]] = []
    metrics_runner: web.AppRunner | None = None
    try:
        await clients.producer.start()
        for config in selected:
            sub = _subscriber(settings, config, clients, stop, metrics)
            running.append(sub)
            for consumer in sub.consumers:
                with map_kafka_errors():
                    await consumer.start()
        if settings.receipts.enabled:
            projection_consumer = make_consumer(
                settings.kafka,
                settings.worker,
                f"{settings.worker.group_prefix}receipts-projection",
                settings.receipts_topic,
                max_wait_ms=settings.receipts.projection_max_delay_ms,
                min_bytes=PROJECTION_FETCH_MIN_BYTES,
            )
            extra.append(projection_consumer)
            with map_kafka_errors():
                await projection_consumer.start()
            projection = ReceiptProjection(
                redis=clients.redis(None),
                prefix=settings.receipts.projection_prefix,
                ttl_s=settings.receipts.projection_ttl_s,
                recent=settings.receipts.projection_recent,
            )
            background.append(
                run_projection(consumer=projection_consumer, projection=projection, stop=stop)
            )
        background.append(_observe(settings, running, metrics, stop))
        board = StatsBoard(
            redis=clients.redis(None),
            key=settings.dashboard.stats_key,
            ttl_s=settings.dashboard.stats_max_age_s,
        )
        background.append(_publish_stats(board, settings, running, metrics, stop))
        if settings.worker.metrics_port:
            try:
                metrics_runner = await serve_metrics(
                    metrics.registry, settings.worker.metrics_host, settings.worker.metrics_port
                )
            except OSError as exc:
                # Delivery matters more than its metrics: run on, and say so loudly.
                _log.error("metrics.unavailable", port=settings.worker.metrics_port, error=str(exc))
        _log.info(
            "worker.started",
            subscribers=[s.config.name for s in running],
            topic=settings.kafka.topic,
        )
        if started is not None:
            started.set()
        await asyncio.gather(*(loop.run() for sub in running for loop in sub.loops), *background)
        for sub in running:
            stats = sub.delivery.stats
            _log.info(
                "worker.stopped",
                subscriber=sub.config.name,
                applied=stats.applied,
                dead_lettered=stats.dead_lettered,
                forwarded_to_retry=stats.forwarded_to_retry,
            )
    finally:
        # Leaving the groups hands the partitions over at once instead of after a session timeout.
        for sub in running:
            for consumer in sub.consumers:
                await consumer.stop()
        for consumer in extra:
            await consumer.stop()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await clients.close()
    return running


async def serve_metrics(registry: CollectorRegistry, host: str, port: int) -> web.AppRunner:
    """GET /metrics of this worker process."""

    async def metrics_endpoint(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics_endpoint)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def _observe(
    settings: Settings,
    running: Sequence[RunningSubscriber],
    metrics: WorkerMetrics,
    stop: asyncio.Event,
) -> None:
    """Every few seconds: lag (records and seconds) and dead-letter depth per subscriber."""
    while not stop.is_set():
        now_ms = time.time() * 1000
        for sub in running:
            loop = sub.loops[0]
            consumer = loop.consumer
            lag, oldest_ms = 0, None
            for tp in consumer.assignment():
                highwater = consumer.highwater(tp)
                if highwater is None:
                    continue
                behind = highwater - await consumer.position(tp)
                lag += max(behind, 0)
                if behind > 0:
                    last = loop.last_committed_ts_ms.get(tp, now_ms)
                    oldest_ms = last if oldest_ms is None else min(oldest_ms, last)
            name = sub.config.name
            metrics.lag_records.labels(name).set(lag)
            metrics.lag_seconds.labels(name).set((now_ms - oldest_ms) / 1000 if oldest_ms else 0)
            with contextlib.suppress(PropagatorError):
                depth = await _dead_letter_depth(settings, name)
                metrics.dead_letter_depth.labels(name).set(depth)
        await pause(stop, 10)


async def _publish_stats(
    board: StatsBoard,
    settings: Settings,
    running: Sequence[RunningSubscriber],
    metrics: WorkerMetrics,
    stop: asyncio.Event,
) -> None:
    """Every few seconds: this process's subscriber metrics for the dashboard (consumers/stats)."""
    names = [sub.config.name for sub in running]
    while not stop.is_set():
        try:
            await board.publish(subscriber_snapshots(metrics.registry, names))
        except DependencyUnavailable as exc:
            _log.warning("stats.unavailable", error=exc.message)
        await pause(stop, settings.dashboard.stats_interval_s)
    with contextlib.suppress(DependencyUnavailable):
        await board.withdraw(names)


async def _dead_letter_depth(settings: Settings, subscriber: str) -> int:
    letters = await DeadLetterQueue(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        topic=settings.kafka.topic,
        subscriber=subscriber,
    ).depth()
    return letters


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
