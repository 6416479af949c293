"""Issue 5's proof on real parts: a signed webhook makes a guarded downstream app refuse.

signed webhook → ingest → Kafka → worker → Redis (keys + notice) → guard → 401 in the app.
The webhook → 401 times are printed (``pytest -s`` or ``-rP`` shows them), never asserted.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from examples.downstream_app import create_app, mint_token
from propagator.guard import RevocationGuard
from propagator.sample import sample_session_revoked
from propagator.settings import Settings
from tests.integration.conftest import wait_for
from tests.integration.test_end_to_end import ingest, post_signed, worker

pytestmark = pytest.mark.integration

JWT_SECRET = "downstream-example-secret-of-32-bytes-or-more"


@asynccontextmanager
async def downstream(settings: Settings) -> AsyncIterator[TestClient]:
    guard = RevocationGuard.from_url(settings.redis.url, key_prefix=settings.denylist.key_prefix)
    async with TestClient(TestServer(create_app(guard=guard, jwt_secret=JWT_SECRET))) as client:
        yield client


@asynccontextmanager
async def pipeline(settings: Settings) -> AsyncIterator[tuple[TestClient, TestClient]]:
    """Ingest, a worker and the example app, warmed up: the worker owns its partitions."""
    async with ingest(settings) as webhooks, worker(settings), downstream(settings) as app:
        warm_up = f"session_warmup_{uuid.uuid4().hex[:8]}"
        token = mint_token(JWT_SECRET, session_id=warm_up, user_id="user_warmup")
        started = time.perf_counter()
        assert (
            200 == (await post_signed(webhooks, sample_session_revoked(session_id=warm_up))).status
        )
        await wait_for(lambda: _status_is(app, token, 401), timeout=60, interval=0.01)
        report("first revocation, including the worker joining its group", started)
        yield webhooks, app


async def _status_is(app: TestClient, token: str, expected: int) -> bool:
    return expected == await status(app, token)


async def status(app: TestClient, token: str) -> int:
    async with app.get("/me", headers={"Authorization": f"Bearer {token}"}) as resp:
        return resp.status


def report(what: str, started: float, accepted: float | None = None) -> float:
    elapsed_ms = (time.perf_counter() - started) * 1000
    line = f"webhook → 401 ({what}): {elapsed_ms:.1f} ms"
    if accepted is not None:
        line += f", of which {(accepted - started) * 1000:.1f} ms until ingest answered 200"
    print(line)
    return elapsed_ms


def password_reset_succeeded(user_id: str, created_at: datetime) -> bytes:
    """A WorkOS ``password_reset.succeeded`` event, in the shape of the WorkOS docs."""
    suffix = uuid.uuid4().hex[:26].upper()
    event = {
        "object": "event",
        "id": f"event_{suffix}",
        "event": "password_reset.succeeded",
        "data": {
            "object": "password_reset",
            "id": f"password_reset_{suffix}",
            "user_id": user_id,
            "email": "marcelina@example.com",
        },
        "created_at": created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return json.dumps(event, separators=(",", ":")).encode()


class TestDownstreamAppRefusesRevokedSessions:
    async def test_session_revoked_webhook_makes_the_app_answer_401(
        self, settings: Settings, redis: Redis
    ) -> None:
        """A token for a session is served until its session.revoked webhook, then refused."""
        session_id = f"session_{uuid.uuid4().hex[:12]}"
        token = mint_token(
            JWT_SECRET,
            session_id=session_id,
            user_id="user_alice",
            organization_id="org_acme",
            issued_at=int(time.time()) - 60,
        )
        async with pipeline(settings) as (webhooks, app):
            assert 200 == await status(app, token)
            body = sample_session_revoked(session_id=session_id, user_id="user_alice")
            started = time.perf_counter()
            resp = await post_signed(webhooks, body)
            accepted = time.perf_counter()
            assert 200 == resp.status
            await wait_for(lambda: _status_is(app, token, 401), timeout=30, interval=0.002)
            report("session.revoked", started, accepted)
            async with app.get("/me", headers={"Authorization": f"Bearer {token}"}) as refused:
                assert "session_revoked" == (await refused.json())["error"]["code"]
                assert refused.headers["WWW-Authenticate"].startswith("Bearer ")
            # Another session of the same user is untouched by a session-scope revocation.
            other = mint_token(JWT_SECRET, session_id=f"{session_id}_other", user_id="user_alice")
            assert 200 == await status(app, other)

    async def test_password_reset_refuses_tokens_issued_before_it(
        self, settings: Settings, redis: Redis
    ) -> None:
        """After a password reset, every earlier token of the user is refused; later ones work."""
        user_id = f"user_{uuid.uuid4().hex[:12]}"
        earlier = [
            mint_token(
                JWT_SECRET,
                session_id=f"session_{n}_{user_id}",
                user_id=user_id,
                issued_at=int(time.time()) - 60,
            )
            for n in range(2)
        ]
        # The reset happened two seconds ago, so that a token issued after it is not dated
        # in the future (which the app's own JWT validation would refuse).
        reset_at = datetime.now(UTC) - timedelta(seconds=2)
        async with pipeline(settings) as (webhooks, app):
            for token in earlier:
                assert 200 == await status(app, token)
            started = time.perf_counter()
            resp = await post_signed(webhooks, password_reset_succeeded(user_id, reset_at))
            accepted = time.perf_counter()
            assert 200 == resp.status
            await wait_for(lambda: _status_is(app, earlier[0], 401), timeout=30, interval=0.002)
            report("password_reset.succeeded", started, accepted)
            assert 401 == await status(app, earlier[1])
            watermark_ms = int(await redis.get(f"{settings.denylist.key_prefix}user:{user_id}"))
            assert int(reset_at.timestamp() * 1000) == watermark_ms
            later = mint_token(
                JWT_SECRET,
                session_id=f"session_new_{user_id}",
                user_id=user_id,
                issued_at=math.ceil(watermark_ms / 1000),
            )
            assert 200 == await status(app, later)
