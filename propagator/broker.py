"""Keeps the ingest service's producer connected, without blocking the HTTP server on it.

Ingest starts serving at once; webhooks answer 503 with Retry-After until the broker
is reachable, so an identity provider retries instead of losing the event.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

import structlog

from propagator.errors import DependencyUnavailable, PublishFailed
from propagator.kafka import ProducerHandle, TopicSpec, ensure_topics

_log = structlog.get_logger(__name__)


class Connection(Protocol):
    """The broker connection as the ingest app sees it: a lifecycle and two health answers."""

    @property
    def started(self) -> bool: ...

    def start(self) -> None: ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


class BrokerConnection:
    """Connects the producer (creating the topics first), retrying with capped backoff."""

    def __init__(
        self,
        *,
        producer: ProducerHandle,
        bootstrap_servers: str,
        topics: list[TopicSpec],
        max_backoff_s: float = 5.0,
        probe_timeout_s: float = 1.0,
    ) -> None:
        self._producer = producer
        self._bootstrap_servers = bootstrap_servers
        self._topics = topics
        self._max_backoff_s = max_backoff_s
        self._probe_timeout_s = probe_timeout_s
        self._started = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def started(self) -> bool:
        return self._started.is_set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._connect(), name="broker-connect")

    async def _connect(self) -> None:
        backoff = 0.2
        while True:
            try:
                await ensure_topics(self._bootstrap_servers, self._topics)
                await self._producer.start()
            except (DependencyUnavailable, PublishFailed) as exc:
                _log.warning("broker.connect_failed", error=str(exc), retry_in_s=backoff)
            else:
                self._started.set()
                _log.info("broker.connected", bootstrap_servers=self._bootstrap_servers)
                return
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)

    async def ready(self) -> bool:
        """True when the producer is started and holds a live connection to a broker."""
        if not self.started:
            return False
        client = self._producer.current.client
        try:
            async with asyncio.timeout(self._probe_timeout_s):
                for broker in client.cluster.brokers():
                    if await client.ready(broker.nodeId):
                        return True
        except TimeoutError:
            return False
        return False

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # stop() flushes what is still buffered and closes the client even if never started.
        await self._producer.stop()
