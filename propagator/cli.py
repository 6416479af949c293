"""The ``propagator`` command: ``ingest``, ``worker``, ``send-sample``.

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
from pathlib import Path

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from redis.asyncio import Redis

from propagator.app import create_app
from propagator.broker import BrokerConnection
from propagator.kafka import TopicSpec, make_producer
from propagator.logs import configure_logging
from propagator.metrics import IngestMetrics
from propagator.publisher import KafkaPublisher
from propagator.sample import sample_session_revoked, signed_headers
from propagator.settings import ConfigFileError, Settings, load_settings
from propagator.sources import Source, WorkOSSource, WorkOSVerifier

_log = structlog.get_logger(__name__)


class UsageError(Exception):
    """A configuration problem the operator must fix; printed without a traceback."""


def build_sources(settings: Settings) -> dict[str, Source]:
    secrets = settings.workos.active_secrets()
    if not secrets:
        raise UsageError(
            "no WorkOS webhook secret configured: set PROPAGATOR_WORKOS__SECRETS "
            "or PROPAGATOR_WORKOS__SECRET_FILE"
        )
    verifier = WorkOSVerifier(secrets=secrets, tolerance_s=settings.workos.tolerance_s)
    return {settings.workos.name: WorkOSSource(name=settings.workos.name, verifier=verifier)}


async def build_ingest_app(settings: Settings) -> web.Application:
    """Create the clients (inside the running loop, as aiokafka requires) and the app."""
    sources = build_sources(settings)
    producer = make_producer(settings.kafka)
    kafka = settings.kafka
    broker = BrokerConnection(
        producer=producer,
        bootstrap_servers=kafka.bootstrap_servers,
        topics=[TopicSpec(kafka.topic, kafka.topic_partitions, kafka.topic_replication_factor)],
    )
    return create_app(
        settings=settings.ingest,
        sources=sources,
        publisher=KafkaPublisher(
            producer=producer, topic=kafka.topic, timeout_s=kafka.publish_timeout_s
        ),
        broker=broker,
        metrics=IngestMetrics(CollectorRegistry()),
    )


def _ingest(settings: Settings) -> int:
    build_sources(settings)  # fail fast, before binding the port, when no secret is set
    _log.info(
        "ingest.starting",
        host=settings.ingest.host,
        port=settings.ingest.port,
        topic=settings.kafka.topic,
        sources=[settings.workos.name],
    )
    web.run_app(
        build_ingest_app(settings),
        host=settings.ingest.host,
        port=settings.ingest.port,
        print=None,
        access_log=None,
        shutdown_timeout=10,
    )
    return 0


def _worker(settings: Settings) -> int:
    from consumers.worker import install_signal_handlers, run_worker

    async def main() -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        await run_worker(settings, stop)

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


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="propagator", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="YAML settings file (or PROPAGATOR_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("ingest", help="serve the webhook endpoints")
    commands.add_parser("worker", help="consume revocations and apply them to the sink")
    sample = commands.add_parser(
        "send-sample", help="send a signed sample session.revoked and show the Redis key"
    )
    sample.add_argument("--url", help="webhook URL (default: the local ingest service)")
    sample.add_argument("--session-id", help="session id to revoke (default: a fresh one)")
    sample.add_argument("--wait", type=float, default=10.0, help="seconds to wait for the key")
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
            return _worker(settings)
        return _send_sample(settings, args.url, args.session_id, args.wait)
    except UsageError as exc:
        print(f"propagator: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
