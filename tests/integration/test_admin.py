"""The admin API and the `propagator dlq` command on a real dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaProducer

from consumers.config import dead_letter_topic, retry_topic
from propagator.cli import build_ingest_app
from propagator.kafka import TopicSpec, ensure_topics
from propagator.settings import AdminSettings, Settings
from tests.integration.conftest import KAFKA_BOOTSTRAP, read_events, wait_for

pytestmark = pytest.mark.integration

TOKEN = "admin-token-for-tests"


@pytest.fixture
async def dead_letters(settings: Settings) -> list[str]:
    """Two dead letters for the default subscriber, with the headers the worker writes."""
    topic = dead_letter_topic(settings.kafka.topic, settings.worker.subscriber)
    await ensure_topics(
        KAFKA_BOOTSTRAP,
        [
            TopicSpec(topic, 1, 1),
            TopicSpec(retry_topic(settings.kafka.topic, settings.worker.subscriber, 0), 1, 1),
        ],
    )
    producer = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP)
    await producer.start()
    try:
        for n, error in ((1, "SinkRejected"), (2, "InvalidRecord")):
            await producer.send_and_wait(
                topic,
                value=f'{{"n": {n}}}'.encode(),
                key=b"user_1",
                headers=[
                    ("event-id", f"event_{n}".encode()),
                    ("propagator-exception-class", error.encode()),
                    ("propagator-attempts", b"1"),
                    ("propagator-retry-level", b"1"),
                ],
            )
    finally:
        await producer.stop()
    return ["event_1", "event_2"]


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[TestClient]:
    with_admin = settings.model_copy(update={"admin": AdminSettings(tokens=[TOKEN])})  # type: ignore[list-item]
    async with TestClient(TestServer(await build_ingest_app(with_admin))) as test_client:
        await wait_for(lambda: _ready(test_client))
        yield test_client


async def _ready(client: TestClient) -> bool:
    return (await client.get("/readyz")).status == 200


AUTH = {"Authorization": f"Bearer {TOKEN}"}


class TestAdminAPI:
    @pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
    async def test_token_required(
        self, client: TestClient, settings: Settings, header: str | None
    ) -> None:
        """Without the exact bearer token: 401 with a JSON code."""
        headers = {"Authorization": header} if header else {}
        resp = await client.get(f"/admin/dlq/{settings.worker.subscriber}", headers=headers)
        assert 401 == resp.status
        assert "unauthorized" == (await resp.json())["error"]["code"]

    async def test_list_filter_show_replay_purge(
        self, client: TestClient, settings: Settings, dead_letters: list[str]
    ) -> None:
        """List (with a filter), show one, dry-run and real replay, then purge."""
        base = f"/admin/dlq/{settings.worker.subscriber}"
        listing = await (await client.get(base, headers=AUTH)).json()
        assert dead_letters == [x["event_id"] for x in listing["dead_letters"]]
        only = await (
            await client.get(base, params={"error_class": "InvalidRecord"}, headers=AUTH)
        ).json()
        assert ["event_2"] == [x["event_id"] for x in only["dead_letters"]]
        shown = await (await client.get(f"{base}/0/0", headers=AUTH)).json()
        assert '{"n": 1}' == shown["value"]
        assert 404 == (await client.get(f"{base}/0/99", headers=AUTH)).status

        dry = await (
            await client.post(f"{base}/replay", json={"dry_run": True}, headers=AUTH)
        ).json()
        assert {"matched": 2, "replayed": 0, "dry_run": True} == dry
        replayed = await (
            await client.post(f"{base}/replay", json={"event_id": "event_1"}, headers=AUTH)
        ).json()
        assert {"matched": 1, "replayed": 1, "dry_run": False} == replayed

        retry = retry_topic(settings.kafka.topic, settings.worker.subscriber, 0)
        assert [{"n": 1}] == await read_events(retry, 1)

        assert {"purged": 2} == await (await client.post(f"{base}/purge", headers=AUTH)).json()
        assert 0 == (await (await client.get(base, headers=AUTH)).json())["count"]

    async def test_unknown_subscriber_and_bad_filters(
        self, client: TestClient, settings: Settings
    ) -> None:
        """404 for a subscriber that is not configured; 400 for a time without offset."""
        assert 404 == (await client.get("/admin/dlq/nobody", headers=AUTH)).status
        resp = await client.get(
            f"/admin/dlq/{settings.worker.subscriber}",
            params={"since": "2026-01-01T00:00:00"},
            headers=AUTH,
        )
        assert 400 == resp.status
        assert "malformed_payload" == (await resp.json())["error"]["code"]


class TestDLQCommand:
    async def test_list_and_dry_run(self, settings: Settings, dead_letters: list[str]) -> None:
        """`propagator dlq list` prints one JSON line per dead letter; a dry-run replays nothing."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROPAGATOR_")}
        env.update(
            {
                "PROPAGATOR_KAFKA__BOOTSTRAP_SERVERS": KAFKA_BOOTSTRAP,
                "PROPAGATOR_KAFKA__TOPIC": settings.kafka.topic,
                "PROPAGATOR_WORKER__SUBSCRIBER": settings.worker.subscriber,
                "PROPAGATOR_WORKER__METRICS_PORT": "0",
            }
        )
        base = [sys.executable, "-m", "propagator", "dlq"]
        listed = await _run([*base, "list", "--subscriber", settings.worker.subscriber], env)
        assert dead_letters == [json.loads(line)["event_id"] for line in listed.splitlines()]
        dry = await _run(
            [
                *base,
                "replay",
                "--subscriber",
                settings.worker.subscriber,
                "--dry-run",
                "--error-class",
                "SinkRejected",
            ],
            env,
        )
        assert ["event_1"] == [json.loads(line)["event_id"] for line in dry.splitlines()]
        unknown = await asyncio.create_subprocess_exec(
            *base, "list", "--subscriber", "nobody", env=env, stderr=asyncio.subprocess.PIPE
        )
        _, err = await unknown.communicate()
        assert 2 == unknown.returncode
        assert b"no subscriber named nobody" in err


async def _run(args: list[str], env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert 0 == proc.returncode, err.decode()
    return out.decode()
