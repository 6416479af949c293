"""The ``propagator`` command: ``ingest``, ``worker``, ``dlq``, ``audit``, ``send-sample``.

Settings come from the environment (``PROPAGATOR_*``) and an optional YAML file
(``--config`` or ``PROPAGATOR_CONFIG``); secrets are never taken from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from redis.asyncio import Redis

from consumers.dlq import DeadLetterQueue, Selector
from consumers.receipts import ReceiptProjection
from consumers.stats import StatsBoard
from propagator.admin import register_admin
from propagator.app import create_app
from propagator.broker import BrokerConnection
from propagator.dashboard import register_dashboard
from propagator.dedupe import PublishOnce, RedisClaims
from propagator.heap import freeze_startup_heap
from propagator.inventory import SessionInventory
from propagator.kafka import ProducerHandle, TopicSpec, make_producer
from propagator.logs import configure_logging
from propagator.metrics import IngestMetrics
from propagator.publisher import KafkaPublisher
from propagator.ratelimit import RateLimiter, TokenBuckets
from propagator.redisclient import make_redis
from propagator.sample import sample_session_revoked, signed_headers
from propagator.settings import ConfigFileError, RateLimitSettings, Settings, load_settings
from propagator.sources import Source, build_source

_log = structlog.get_logger(__name__)


class UsageError(Exception):
    """A configuration problem the operator must fix; printed without a traceback."""


def build_sources(settings: Settings, http: aiohttp.ClientSession) -> dict[str, Source]:
    """Every configured source, by name; a configuration problem is a UsageError."""
    sources: dict[str, Source] = {}
    for config in settings.effective_sources():
        try:
            sources[config.name] = build_source(config, http=http)
        except (ValueError, OSError) as exc:
            hint = ""
            if config.kind == "workos" and not settings.sources:
                hint = " (set PROPAGATOR_WORKOS__SECRETS or PROPAGATOR_WORKOS__SECRET_FILE)"
            raise UsageError(f"source {config.name!r} ({config.kind}): {exc}{hint}") from exc
    return sources


def build_rate_limiter(settings: RateLimitSettings) -> RateLimiter:
    return RateLimiter(
        per_source=(
            TokenBuckets(rate=settings.per_source_rps, burst=settings.per_source_burst)
            if settings.per_source_rps > 0
            else None
        ),
        per_client=(
            TokenBuckets(rate=settings.per_client_rps, burst=settings.per_client_burst)
            if settings.per_client_rps > 0
            else None
        ),
    )


async def build_ingest_app(settings: Settings) -> web.Application:
    """Create the clients (inside the running loop, as aiokafka requires) and the app."""
    http = aiohttp.ClientSession()
    redis = make_redis(settings.redis)
    try:
        sources = build_sources(settings, http)
    except UsageError:
        await http.close()
        await redis.aclose()
        raise
    inventory = SessionInventory(
        redis=redis,
        prefix=settings.inventory.key_prefix,
        ttl_s=settings.denylist.max_session_lifetime_s,
    )
    projection = ReceiptProjection(
        redis=redis,
        prefix=settings.receipts.projection_prefix,
        ttl_s=settings.receipts.projection_ttl_s,
        recent=settings.receipts.projection_recent,
    )
    kafka = settings.kafka
    producer = ProducerHandle(lambda: make_producer(kafka))
    metrics = IngestMetrics(CollectorRegistry())
    publisher = PublishOnce(
        publisher=KafkaPublisher(
            producer=producer, topic=kafka.topic, timeout_s=kafka.publish_timeout_s
        ),
        claims=RedisClaims(redis) if settings.ingest.dedupe else None,
        key_prefix=settings.ingest.dedupe_key_prefix,
        ttl_s=settings.ingest.dedupe_ttl_s,
        wait_for_other_s=kafka.publish_timeout_s,
        on_degraded=metrics.dedupe_degraded.inc,
        also_on_publish=projection.note_published if settings.receipts.enabled else None,
    )
    app = create_app(
        settings=settings.ingest,
        sources=sources,
        publisher=publisher,
        broker=BrokerConnection(
            producer=producer,
            bootstrap_servers=kafka.bootstrap_servers,
            topics=[TopicSpec(kafka.topic, kafka.topic_partitions, kafka.topic_replication_factor)],
        ),
        limiter=build_rate_limiter(settings.ingest.rate_limit),
        metrics=metrics,
        admin_tokens=settings.admin.active_tokens(),
        inventory=inventory if settings.inventory.enabled else None,
    )
    if settings.admin.active_tokens():
        register_admin(
            app,
            queues=dead_letter_queues(settings),
            producer=producer,
            inventory=inventory,
            redis=redis,
            user_watermark_key=f"{settings.denylist.key_prefix}user:{{user_id}}",
            projection=projection,
            subscribers=settings.effective_subscribers(),
        )
        register_dashboard(
            app,
            tokens=settings.admin.active_tokens(),
            settings=settings.dashboard,
            ingest_registry=metrics.registry,
            board=StatsBoard(
                redis=redis,
                key=settings.dashboard.stats_key,
                ttl_s=settings.dashboard.stats_max_age_s,
            ),
            projection=projection,
            subscribers=settings.effective_subscribers(),
        )

    async def _close_clients(_: web.Application) -> None:
        await http.close()
        await redis.aclose()

    app.on_cleanup.append(_close_clients)
    return app


async def _freeze_heap(_: web.Application) -> None:
    _log.debug("heap.frozen", objects=freeze_startup_heap())


def dead_letter_queues(settings: Settings) -> dict[str, DeadLetterQueue]:
    return {
        s.name: DeadLetterQueue(
            bootstrap_servers=settings.kafka.bootstrap_servers,
            topic=settings.kafka.topic,
            subscriber=s.name,
        )
        for s in settings.effective_subscribers()
    }


def _ingest(settings: Settings) -> int:
    async def validate() -> None:
        async with aiohttp.ClientSession() as http:
            build_sources(settings, http)

    asyncio.run(validate())  # fail fast, before binding the port
    _log.info(
        "ingest.starting",
        host=settings.ingest.host,
        port=settings.ingest.port,
        topic=settings.kafka.topic,
        sources={c.name: c.kind for c in settings.effective_sources()},
    )

    async def serving() -> web.Application:
        app = await build_ingest_app(settings)
        # A process-wide choice, so made here, not in the app a test may build: last, once
        # every client has been built.
        app.on_startup.append(_freeze_heap)
        return app

    web.run_app(
        serving(),
        host=settings.ingest.host,
        port=settings.ingest.port,
        reuse_port=settings.ingest.reuse_port,
        print=None,
        access_log=None,
        shutdown_timeout=10,
        # Also closes a connection whose request headers have not all arrived by then.
        keepalive_timeout=15,
    )
    return 0


def _worker(settings: Settings, subscribers: Sequence[str] | None) -> int:
    from consumers.worker import install_signal_handlers, run_worker, select

    try:
        select(settings, subscribers)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc

    async def main() -> None:
        stop, started = asyncio.Event(), asyncio.Event()
        install_signal_handlers(stop)

        async def freeze_once_started() -> None:
            await started.wait()
            _log.debug("heap.frozen", objects=freeze_startup_heap())

        # A process-wide choice, so made here rather than inside run_worker, which tests run.
        freezing = asyncio.create_task(freeze_once_started())
        try:
            await run_worker(settings, stop, subscribers, started)
        finally:
            freezing.cancel()

    asyncio.run(main())
    return 0


def _send_sample(settings: Settings, url: str | None, session_id: str | None, wait_s: float) -> int:
    secrets = settings.workos.active_secrets()
    if not secrets:
        raise UsageError("no WorkOS secret configured to sign the sample with")
    target = url or f"http://127.0.0.1:{settings.ingest.port}/webhooks/{settings.workos.name}"
    body = sample_session_revoked(session_id=session_id)
    session = json.loads(body)["data"]["id"]
    key = f"{settings.denylist.key_prefix}session:{session}"

    async def main() -> int:
        async with (
            aiohttp.ClientSession() as http,
            http.post(target, data=body, headers=signed_headers(secrets[0], body)) as resp,
        ):
            print(f"POST {target} -> {resp.status} {await resp.text()}")
            if resp.status != 200:
                return 1
        redis = Redis.from_url(settings.redis.url)
        try:
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                value = await redis.get(key)
                if value is not None:
                    ttl = await redis.ttl(key)
                    text = value.decode() if isinstance(value, bytes) else value
                    print(f"GET {key} -> {text} (TTL {ttl}s)")
                    return 0
                await asyncio.sleep(0.05)
        finally:
            await redis.aclose()
        print(f"{key} did not appear within {wait_s}s: is the worker running?", file=sys.stderr)
        return 1

    return asyncio.run(main())


def _progress(done: int, total: int) -> None:
    width = 30
    filled = width * done // max(total, 1)
    end = "\n" if done == total else ""
    print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end, file=sys.stderr)


def _when(value: str | None) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise UsageError(f"{value!r}: give a UTC offset, e.g. 2026-12-03T10:00:00Z")
    return parsed


def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.worker import select

    try:
        select(settings, [args.subscriber])
        selector = Selector(
            since=_when(args.since),
            until=_when(args.until),
            event_id=args.event_id,
            error_class=args.error_class,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    queue = DeadLetterQueue(
        bootstrap_servers=settings.kafka.bootstrap_servers,
        topic=settings.kafka.topic,
        subscriber=args.subscriber,
    )

    async def main() -> int:
        if args.action == "purge":
            print(json.dumps({"purged": await queue.purge()}))
            return 0
        if args.action == "show":
            letter = await queue.show(args.partition, args.offset)
            if letter is None:
                print("no such dead letter", file=sys.stderr)
                return 1
            print(json.dumps(letter.detail(), indent=2))
            return 0
        letters = await queue.read(selector)
        if args.action == "list" or args.dry_run:
            for letter in letters:
                print(json.dumps(letter.summary()))
            if args.action == "replay":
                print(f"dry run: {len(letters)} dead letters would be replayed", file=sys.stderr)
            return 0
        producer = make_producer(settings.kafka)
        await producer.start()
        try:
            replayed = await queue.replay(producer, letters, progress=_progress)
        finally:
            await producer.stop()
        print(json.dumps({"replayed": replayed}))
        return 0

    return asyncio.run(main())


def _audit(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.audit import build_report

    since, until = _when(args.since), _when(args.until) or datetime.now(UTC)
    if since is None:
        raise UsageError("--since is required")
    report = asyncio.run(
        build_report(
            bootstrap=settings.kafka.bootstrap_servers,
            topic=settings.kafka.topic,
            receipts_topic=settings.receipts_topic,
            subscribers=settings.effective_subscribers(),
            since=since,
            until=until,
            progress=_progress,
        )
    )
    text = report.to_json() if args.format == "json" else report.to_csv()
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    summary = report.summary()
    print(json.dumps(summary), file=sys.stderr)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="propagator", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML settings file (or PROPAGATOR_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("ingest", help="serve the webhook endpoints")
    worker = commands.add_parser("worker", help="consume revocations and apply them to the sinks")
    worker.add_argument(
        "--subscriber",
        action="append",
        metavar="NAME",
        help="run only this subscriber (repeatable; default: all of them)",
    )
    sample = commands.add_parser(
        "send-sample", help="send a signed sample session.revoked and show the Redis key"
    )
    sample.add_argument("--url", help="webhook URL (default: the local ingest service)")
    sample.add_argument("--session-id", help="session id to revoke (default: a fresh one)")
    sample.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the key")
    dlq = commands.add_parser("dlq", help="list, show, replay or purge a subscriber's dead letters")
    dlq.add_argument("action", choices=["list", "show", "replay", "purge"])
    dlq.add_argument("--subscriber", required=True, metavar="NAME")
    dlq.add_argument("--since", help="dead-lettered at or after (RFC 3339)")
    dlq.add_argument("--until", help="dead-lettered before (RFC 3339)")
    dlq.add_argument("--event-id")
    dlq.add_argument("--error-class", help="e.g. SinkRejected, InvalidRecord")
    dlq.add_argument("--partition", type=int, default=0, help="for show")
    dlq.add_argument("--offset", type=int, default=0, help="for show")
    dlq.add_argument("--dry-run", action="store_true", help="for replay: list, change nothing")
    audit = commands.add_parser("audit", help="evidence reports")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    export = audit_commands.add_parser(
        "export", help="every revocation in a window, per subscriber"
    )
    export.add_argument("--since", required=True, help="RFC 3339, e.g. 2026-12-01T00:00:00Z")
    export.add_argument("--until", help="RFC 3339 (default: now)")
    export.add_argument("--format", choices=["csv", "json"], default="csv")
    export.add_argument("--output", help="file to write (default: standard output)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
    except (ConfigFileError, ValidationError) as exc:
        print(f"propagator: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log.level, settings.log.format)
    try:
        if args.command == "ingest":
            return _ingest(settings)
        if args.command == "worker":
            return _worker(settings, args.subscriber)
        if args.command == "dlq":
            return _dlq(settings, args)
        if args.command == "audit":
            return _audit(settings, args)
        return _send_sample(settings, args.url, args.session_id, args.wait)
    except UsageError as exc:
        print(f"propagator: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
