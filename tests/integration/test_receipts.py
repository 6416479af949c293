"""Receipts, the per-event status view and the audit export, on the real broker and Redis."""

from __future__ import annotations

import asyncio
import csv
import io
import os
import sys
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer

from consumers.audit import build_report
from propagator.cli import build_ingest_app
from propagator.sample import sample_session_revoked, signed_headers
from propagator.settings import AdminSettings, Settings
from tests.integration.conftest import KAFKA_BOOTSTRAP, SECRET, wait_for
from tests.integration.test_fanout import (
    Subscriber,
    http_sink,
    http_subscriber,
    with_subscribers,
    worker,
)

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer receipts-admin"}


class TestEvidence:
    async def test_receipts_status_view_and_audit_export(self, settings: Settings) -> None:
        """One event applied by both subscribers, one dead-lettered by the HTTP subscriber:
        the status view and the audit export both show exactly that."""
        started = datetime.now(UTC) - timedelta(seconds=5)
        sub = Subscriber(reject={"ev-rejected"})
        async with http_subscriber(sub) as server:
            config = with_subscribers(
                settings,
                {
                    "name": "cache",
                    "sink": {"kind": "redis-denylist", "key_prefix": settings.denylist.key_prefix},
                },
                {
                    "name": "hooks",
                    "sink": http_sink(str(server.make_url("/revocations"))),
                    "retry": {"attempts": 1, "max_backoff_s": 0.05, "delays_s": [0.2]},
                },
            ).model_copy(update={"admin": AdminSettings(tokens=["receipts-admin"])})  # type: ignore[list-item]
            async with TestClient(TestServer(await build_ingest_app(config))) as client:
                await wait_for(lambda: _ready(client))
                async with worker(config):
                    for event_id in ("ev-ok", "ev-rejected"):
                        body = sample_session_revoked(event_id=event_id)
                        resp = await client.post(
                            "/webhooks/workos",
                            data=body,
                            headers=signed_headers(SECRET.encode(), body),
                        )
                        assert 200 == resp.status

                    async def settled(
                        event_id: str, expected: dict[str, str]
                    ) -> dict[str, object] | None:
                        resp = await client.get(f"/admin/revocations/{event_id}", headers=AUTH)
                        view: dict[str, object] = await resp.json()
                        subs = view.get("subscribers", {})
                        got = {k: v["status"] for k, v in subs.items()}  # type: ignore[union-attr]
                        return view if got == expected else None

                    ok = await wait_for(
                        lambda: settled("ev-ok", {"cache": "applied", "hooks": "applied"})
                    )
                    bad = await wait_for(
                        lambda: settled(
                            "ev-rejected", {"cache": "applied", "hooks": "dead-lettered"}
                        )
                    )
                assert 404 == (await client.get("/admin/revocations/nope", headers=AUTH)).status
        assert ok["applied_everywhere"] is True
        assert bad["applied_everywhere"] is False
        hooks = bad["subscribers"]["hooks"]  # type: ignore[index]
        assert 400 == hooks["http_status"]
        assert "SinkRejected" in hooks["error"]

        report = await build_report(
            bootstrap=KAFKA_BOOTSTRAP,
            topic=config.kafka.topic,
            receipts_topic=config.receipts_topic,
            subscribers=config.effective_subscribers(),
            since=started,
            until=datetime.now(UTC),
        )
        rows = {r.event.event_id: r for r in report.rows}
        assert {"ev-ok", "ev-rejected"} == set(rows)
        for name in ("cache", "hooks"):
            applied = rows["ev-ok"].subscribers[name]
            assert "applied" == applied["status"]
            assert datetime.fromisoformat(applied["at"]) >= rows["ev-ok"].event.received_at
        summary = report.summary()
        assert ["ev-rejected"] == summary["not_applied_everywhere"]
        assert 1 == summary["applied_everywhere"]
        assert 3 == summary["propagation_seconds"]["count"]
        assert summary["propagation_seconds"]["max"] >= summary["propagation_seconds"]["p50"] > 0

        env = {k: v for k, v in os.environ.items() if not k.startswith("PROPAGATOR_")}
        env.update(
            {
                "PROPAGATOR_KAFKA__BOOTSTRAP_SERVERS": KAFKA_BOOTSTRAP,
                "PROPAGATOR_KAFKA__TOPIC": config.kafka.topic,
                "PROPAGATOR_SUBSCRIBERS": "["
                + ",".join(s.model_dump_json() for s in config.subscribers)
                + "]",
            }
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "propagator",
            "audit",
            "export",
            "--since",
            started.isoformat(),
            "--format",
            "csv",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert 0 == proc.returncode, err.decode()
        exported = {row["event_id"]: row for row in csv.DictReader(io.StringIO(out.decode()))}
        assert ("yes", "no") == (
            exported["ev-ok"]["applied_everywhere"],
            exported["ev-rejected"]["applied_everywhere"],
        )
        assert exported["ev-ok"]["hooks_applied_at"]
        assert "dead-lettered" == exported["ev-rejected"]["hooks_status"]


async def _ready(client: TestClient) -> bool:
    return (await client.get("/readyz")).status == 200
