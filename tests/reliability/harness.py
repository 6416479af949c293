"""The pieces every reliability scenario shares: real processes, a sender, an observer, counts.

A scenario starts ``python -m propagator ingest`` and ``worker`` as subprocesses (their logs
go to files the test reads afterwards), sends uniquely numbered WorkOS ``session.revoked``
webhooks the way an identity provider does (retrying until a 2xx), and counts what reached
each of three subscribers: a Redis denylist, a Redis session store and an HTTP subscriber.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, TopicPartition
from redis.asyncio import Redis
from redis.exceptions import RedisError
from standardwebhooks.webhooks import Webhook

from propagator.sample import sample_session_revoked, signed_headers
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
KAFKA_BOOTSTRAP = os.environ.get("TEST_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
WORKOS_SECRET = "whsec_reliability_secret"
WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ADMIN_TOKEN = "admin-token-reliability-3f9c"


def free_port(pair: bool = False) -> int:
    """A free loopback port (and, with ``pair``, the next one free too, for a controller)."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        if not pair:
            return port
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair")


# --- processes -------------------------------------------------------------------------------


@dataclass
class Proc:
    role: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def signal(self, sig: signal.Signals) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        return await asyncio.to_thread(self.popen.wait, timeout)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


class Processes:
    """Starts propagator subprocesses with a given environment; ends them by PID."""

    def __init__(self, directory: Path, env: dict[str, str]) -> None:
        self.directory = directory
        self.env = env
        self.started: list[Proc] = []

    def start(self, role: str, *args: str, extra: dict[str, str] | None = None) -> Proc:
        log = self.directory / f"{role}-{len(self.started)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "propagator", role, *args],
                env={**self.env, **(extra or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        proc = Proc(role, popen, log)
        self.started.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(p.text() for p in self.started)

    def close(self) -> None:
        for proc in self.started:
            if proc.popen.poll() is None:
                proc.popen.kill()
                proc.popen.wait(timeout=10)


async def wait_ready(port: int, timeout: float = 60) -> None:
    async with aiohttp.ClientSession() as http:

        async def ready() -> bool:
            try:
                async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await wait_for(ready, timeout=timeout, what=f"ingest on port {port} ready")


async def wait_logged(proc: Proc, needle: str, timeout: float = 60, count: int = 1) -> None:
    async def logged() -> bool:
        if proc.popen.poll() is not None:
            pytest.fail(f"{proc.role} exited {proc.popen.returncode}: {proc.text()[-2000:]}")
        return proc.text().count(needle) >= count

    await wait_for(logged, timeout=timeout, what=f"{proc.role} logged {needle}")


def env_for(
    *,
    unique: str,
    topic: str,
    ingest_port: int,
    subscribers: list[dict[str, Any]] | None = None,
    kafka: str = KAFKA_BOOTSTRAP,
    redis_url: str = REDIS_URL,
    **settings: str,
) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROPAGATOR_")}
    environment.update(
        {
            "PROPAGATOR_KAFKA__BOOTSTRAP_SERVERS": kafka,
            "PROPAGATOR_KAFKA__TOPIC": topic,
            "PROPAGATOR_KAFKA__TOPIC_PARTITIONS": "3",
            "PROPAGATOR_REDIS__URL": redis_url,
            "PROPAGATOR_REDIS__SOCKET_TIMEOUT_S": "1",
            "PROPAGATOR_DENYLIST__KEY_PREFIX": f"test:{unique}:revoked:",
            "PROPAGATOR_DENYLIST__MAX_SESSION_LIFETIME_S": "3600",
            "PROPAGATOR_INGEST__DEDUPE_KEY_PREFIX": f"test:{unique}:dedupe:",
            "PROPAGATOR_INGEST__DEDUPE_TTL_S": "3600",
            "PROPAGATOR_INGEST__PORT": str(ingest_port),
            "PROPAGATOR_INGEST__RETRY_AFTER_S": "1",
            "PROPAGATOR_WORKOS__SECRETS": WORKOS_SECRET,
            "PROPAGATOR_WORKER__FETCH_MAX_WAIT_MS": "50",
            "PROPAGATOR_WORKER__MAX_BATCH": "50",
            "PROPAGATOR_LOG__FORMAT": "json",
        }
    )
    if subscribers is not None:
        environment["PROPAGATOR_SUBSCRIBERS"] = json.dumps(subscribers)
    for key, value in settings.items():
        environment[f"PROPAGATOR_{key.upper()}"] = value
    return environment


def three_subscribers(
    unique: str, http_url: str, *, read_timeout_s: float = 2.0
) -> list[dict[str, Any]]:
    """A Redis denylist, a Redis session store and an HTTP subscriber, with fast retries."""
    fast_retry = {"attempts": 2, "max_backoff_s": 0.2, "delays_s": [0.5, 1.0, 2.0]}
    circuit = {"failure_threshold": 20, "probe_interval_s": 0.2, "max_probe_interval_s": 1.0}
    return [
        {
            "name": f"deny-{unique}",
            "sink": {
                "kind": "redis-denylist",
                "key_prefix": f"test:{unique}:revoked:",
                "max_session_lifetime_s": 3600,
            },
            "retry": fast_retry,
            "circuit": circuit,
        },
        {
            "name": f"sess-{unique}",
            "sink": {
                "kind": "redis-session-store",
                "session_key": f"test:{unique}:sess:{{session_id}}",
                "user_index_key": None,
            },
            "retry": fast_retry,
            "circuit": circuit,
        },
        {
            "name": f"http-{unique}",
            "sink": {
                "kind": "http",
                "url": http_url,
                "secret": WHSEC,
                "allow_private": ["127.0.0.1"],
                "connect_timeout_s": 0.5,
                "read_timeout_s": read_timeout_s,
            },
            "retry": fast_retry,
            "circuit": circuit,
        },
    ]


# --- the HTTP subscriber ---------------------------------------------------------------------


@dataclass
class HttpSubscriber:
    """A downstream app that verifies Standard Webhooks signatures and counts deliveries.

    ``fail_first`` answers 500 to the first delivery of every event; ``slow_first`` holds the
    first delivery of every event longer than the sink's read timeout, then answers 200.
    """

    fail_first: bool = False
    slow_first_s: float = 0.0
    deliveries: Counter[str] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)
    first_at: dict[str, float] = field(default_factory=dict)
    bad_signatures: int = 0
    verifier: Webhook = field(default_factory=lambda: Webhook(WHSEC))

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = self.verifier.verify(body, dict(request.headers))
        except Exception:  # noqa: BLE001 - any verification failure is counted, then refused
            self.bad_signatures += 1
            return web.Response(status=400)
        event_id = payload["event_id"]
        self.attempts[event_id] += 1
        if self.attempts[event_id] == 1:
            if self.fail_first:
                return web.Response(status=500)
            if self.slow_first_s:
                await asyncio.sleep(self.slow_first_s)
                return web.Response(status=200)  # the sink gave up already: not counted
        self.deliveries[event_id] += 1
        self.first_at.setdefault(event_id, time.monotonic())
        return web.Response(status=200)


@asynccontextmanager
async def serve_subscriber(sub: HttpSubscriber) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/revocations", sub.handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        yield f"http://127.0.0.1:{port}/revocations"
    finally:
        await runner.cleanup()


# --- the sender ------------------------------------------------------------------------------


def event_ids(unique: str, count: int) -> list[str]:
    return [f"ev_{unique}_{n:05d}" for n in range(count)]


def session_of(event_id: str) -> str:
    return event_id.replace("ev_", "session_", 1)


@dataclass
class Answer:
    event_id: str
    status: int  # 0: no answer (connection refused, reset or timed out)
    sent_at: float
    answered_at: float
    retry_after: str | None


@dataclass
class Ledger:
    """What the identity provider saw: every attempt and which events were accepted."""

    answers: list[Answer] = field(default_factory=list)
    accepted: dict[str, float] = field(default_factory=dict)  # event id -> when (monotonic)

    def statuses(self) -> Counter[int]:
        return Counter(a.status for a in self.answers)


class Sender:
    """Sends each event until a 2xx, like an identity provider: Retry-After honoured, bounded."""

    def __init__(
        self,
        url: str,
        ledger: Ledger,
        *,
        concurrency: int = 16,
        rate: float | None = None,
        retry: bool = True,
    ) -> None:
        self.url = url
        self.ledger = ledger
        self.concurrency = concurrency
        self.rate = rate  # first attempts per second; retries are not paced
        self.retry = retry
        self.dispatched = 0

    async def run(self, ids: Iterable[str], *, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        queue: asyncio.Queue[str] = asyncio.Queue()
        for event_id in ids:
            queue.put_nowait(event_id)
        timeout = aiohttp.ClientTimeout(total=10)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        started = time.monotonic()
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:

            async def one_worker() -> None:
                while not queue.empty() and time.monotonic() < deadline:
                    event_id = queue.get_nowait()
                    if self.rate:
                        due = started + self.dispatched / self.rate
                        self.dispatched += 1
                        await asyncio.sleep(max(0.0, due - time.monotonic()))
                    else:
                        self.dispatched += 1
                    await self._deliver(http, event_id, deadline)

            await asyncio.gather(*(one_worker() for _ in range(self.concurrency)))

    async def _deliver(self, http: aiohttp.ClientSession, event_id: str, deadline: float) -> None:
        body = sample_session_revoked(
            event_id=event_id, session_id=session_of(event_id), user_id=f"user_{event_id[-2:]}"
        )
        backoff = 0.2
        while time.monotonic() < deadline:
            sent_at = time.monotonic()
            headers = signed_headers(WORKOS_SECRET.encode(), body)
            status, retry_after = 0, None
            try:
                async with http.post(self.url, data=body, headers=headers) as resp:
                    status, retry_after = resp.status, resp.headers.get("Retry-After")
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError):
                pass
            answered_at = time.monotonic()
            self.ledger.answers.append(Answer(event_id, status, sent_at, answered_at, retry_after))
            if 200 <= status < 300:
                self.ledger.accepted[event_id] = answered_at
                return
            if not self.retry:
                return
            wait = float(retry_after) if retry_after and retry_after.isdigit() else backoff
            backoff = min(backoff * 2, 2.0)
            await asyncio.sleep(min(wait, 2.0, max(0.0, deadline - time.monotonic())))


# --- the observer ----------------------------------------------------------------------------


class Observer:
    """Counts what each subscriber holds: denylist keys (and its notices), session-store
    deletions and HTTP deliveries."""

    def __init__(self, redis_url: str, unique: str, http: HttpSubscriber) -> None:
        self.redis_url = redis_url
        self.unique = unique
        self.http = http
        self.notices: Counter[str] = Counter()
        self.denylist_first_at: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._redis = Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)

    @property
    def prefix(self) -> str:
        return f"test:{self.unique}:"

    async def seed_sessions(self, ids: Iterable[str]) -> None:
        """The session store's records, which the redis-session-store subscriber deletes."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for event_id in ids:
                pipe.set(f"{self.prefix}sess:{session_of(event_id)}", b"{}", ex=3600)
            await pipe.execute()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._listen())
        await asyncio.sleep(0)

    async def _listen(self) -> None:
        """Subscribes to the denylist's notices; reconnects when Redis went away."""
        channel = f"{self.prefix}revoked:events"
        while True:
            client = Redis.from_url(self.redis_url, socket_connect_timeout=1)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(channel)
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None:
                        notice = json.loads(message["data"])
                        event_id = notice["event_id"]
                        self.notices[event_id] += 1
                        self.denylist_first_at.setdefault(event_id, time.monotonic())
            except (RedisError, OSError):
                await asyncio.sleep(0.2)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()

    async def applied(self, ids: Iterable[str]) -> dict[str, set[str]]:
        """Per subscriber kind, the event ids it holds as applied."""
        ids = list(ids)
        async with self._redis.pipeline(transaction=False) as pipe:
            for event_id in ids:
                pipe.exists(f"{self.prefix}revoked:session:{session_of(event_id)}")
                pipe.exists(f"{self.prefix}sess:{session_of(event_id)}")
            flags = await pipe.execute()
        return {
            "denylist": {e for e, f in zip(ids, flags[0::2], strict=True) if f},
            "session-store": {e for e, f in zip(ids, flags[1::2], strict=True) if not f},
            "http": {e for e in ids if self.http.deliveries[e] > 0},
        }

    async def applied_everywhere(self, ids: Iterable[str]) -> set[str]:
        per = await self.applied(ids)
        return per["denylist"] & per["session-store"] & per["http"]

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError, OSError):
            keys = [k async for k in self._redis.scan_iter(match=f"{self.prefix}*", count=1000)]
            for start in range(0, len(keys), 500):
                await self._redis.delete(*keys[start : start + 500])
        await self._redis.aclose()


# --- counting --------------------------------------------------------------------------------


@dataclass
class Counts:
    scenario: str
    sent: int
    accepted: int
    applied: int
    lost: int
    duplicated: int
    recovery_s: float | None
    duration_s: float
    notes: str = ""

    def row(self) -> dict[str, Any]:
        return self.__dict__.copy()


async def settle(
    observer: Observer, accepted: Iterable[str], *, timeout: float
) -> tuple[set[str], float]:
    """Wait (bounded) until every accepted event is applied everywhere; return what is."""
    wanted = set(accepted)
    started = time.monotonic()
    deadline = started + timeout
    applied: set[str] = set()
    while time.monotonic() < deadline:
        try:
            applied = await observer.applied_everywhere(wanted)
        except (RedisError, OSError):
            await asyncio.sleep(0.25)  # Redis is the fault in some scenarios: ask again
            continue
        if applied >= wanted:
            break
        await asyncio.sleep(0.25)
    return applied, time.monotonic() - started


def duplicates(observer: Observer) -> int:
    """Deliveries beyond the first, at the HTTP subscriber and in the denylist's notices."""
    http = sum(n - 1 for n in observer.http.deliveries.values() if n > 1)
    notices = sum(n - 1 for n in observer.notices.values() if n > 1)
    return http + notices


_PROBLEMS = ("Traceback", '"request.failed"', "Unhandled exception", '"level": "critical"')


def log_problems(text: str) -> list[str]:
    """Log lines that show an unhandled exception or a 500."""
    bad = []
    for line in text.splitlines():
        if (
            "Traceback" in line
            or '"request.failed"' in line
            or "Unhandled exception" in line
            or '"level": "critical"' in line
        ):
            bad.append(line[:500])
    return bad


# --- reading the topic -----------------------------------------------------------------------


async def topic_records(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """Every record the topic holds now, read from the beginning up to the end offsets."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return []
        consumer.assign(partitions)
        end = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            positions = {tp: await consumer.position(tp) for tp in partitions}
            if all(positions[tp] >= end[tp] for tp in partitions):
                break
            batch = await consumer.getmany(timeout_ms=500)
            records.extend(json.loads(r.value) for rs in batch.values() for r in rs if r.value)
        else:
            pytest.fail(f"could not read {topic} to its end within 60s")
        return records
    finally:
        await consumer.stop()


async def topic_size(bootstrap: str, topic: str) -> int:
    """How many records a topic holds (0 when it does not exist)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        if not partitions:
            return 0
        end = await consumer.end_offsets(partitions)
        begin = await consumer.beginning_offsets(partitions)
        return sum(end[tp] - begin[tp] for tp in partitions)
    finally:
        await consumer.stop()


# --- private broker and Redis, for outages that must not touch the shared ones --------------


class PrivateService:
    """A broker or Redis of our own, started and stopped with the project's scripts by PID."""

    def __init__(self, script: str, port_var: str, port: int, state: Path) -> None:
        self.script = str(REPO / "deploy/local" / script)
        self.port = port
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PROPAGATOR_")},
            port_var: str(port),
            "PROPAGATOR_STATE_DIR": str(state),
            "KAFKA_HEAP": "-Xms128m -Xmx512m",
            "KAFKA_START_TIMEOUT": "120",
        }

    def _run(self, action: str) -> None:
        result = subprocess.run(
            ["bash", self.script, action],
            env=self.env,
            capture_output=True,
            timeout=180,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"{self.script} {action}: {result.stderr.decode()[-2000:]}")

    async def up(self) -> None:
        await asyncio.to_thread(self._run, "up")

    async def down(self) -> None:
        await asyncio.to_thread(self._run, "down")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True
