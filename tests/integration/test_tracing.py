"""A traceparent travels from the webhook, through Kafka, to the HTTP subscriber's request."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from propagator.cli import build_ingest_app
from propagator.sample import sample_session_revoked, signed_headers
from propagator.settings import Settings
from tests.integration.conftest import SECRET, wait_for
from tests.integration.test_fanout import http_sink, with_subscribers, worker

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


async def test_trace_reaches_the_subscriber(settings: Settings) -> None:
    """The subscriber's request carries the webhook's trace id (in a new span)."""
    seen: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("traceparent", ""))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    async with TestServer(app, host="127.0.0.1") as server:
        config = with_subscribers(
            settings, {"name": "hooks", "sink": http_sink(str(server.make_url("/hook")))}
        )
        async with TestClient(TestServer(await build_ingest_app(config))) as client, worker(config):
            body = sample_session_revoked()
            headers = {
                **signed_headers(SECRET.encode(), body),
                "traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01",
            }
            await wait_for(lambda: _ready(client))
            assert 200 == (await client.post("/webhooks/workos", data=body, headers=headers)).status
            await wait_for(lambda: _true(seen))
    [traceparent] = seen
    assert traceparent.startswith(f"00-{TRACE_ID}-")
    assert "00f067aa0ba902b7" not in traceparent


async def _ready(client: TestClient) -> bool:
    return (await client.get("/readyz")).status == 200


async def _true(value: object) -> bool:
    return bool(value)
