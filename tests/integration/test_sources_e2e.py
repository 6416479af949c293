"""Every source kind end to end on the real broker, and replays published exactly once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest
from aiohttp.test_utils import TestClient, TestServer

from propagator.cli import build_ingest_app
from propagator.sample import sample_session_revoked, signed_headers
from propagator.settings import Settings
from propagator.sources.standard_webhooks import decode_secret, sign_standard
from tests.integration.conftest import read_events, record_count, wait_for
from tests.tokens import (
    AUDIENCE,
    ISSUER,
    JWKSServer,
    SigningKey,
    jwks_server,
    logout_claims,
    set_claims,
)

pytestmark = pytest.mark.integration

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
KEY = SigningKey.rsa("idp-1")


@pytest.fixture
async def jwks() -> AsyncIterator[JWKSServer]:
    async with jwks_server(KEY) as server:
        yield server


@pytest.fixture
def all_kinds(settings: Settings, jwks: JWKSServer) -> Settings:
    sources = [
        {"name": "workos", "kind": "workos", "secrets": ["wsecret"]},
        {"name": "clerk", "kind": "standard-webhooks", "secrets": [WHSEC]},
        {
            "name": "keycloak",
            "kind": "oidc-backchannel",
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwks_uri": jwks.uri,
        },
        {
            "name": "caep",
            "kind": "ssf",
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwks_uri": jwks.uri,
            "authorization_header": "Bearer t",
        },
        {"name": "okta", "kind": "okta", "authorization": ["okta-secret"]},
        {
            "name": "inhouse",
            "kind": "hmac",
            "secrets": ["h"],
            "event_types": {"org.closed": "organization"},
        },
    ]
    return Settings.model_validate(
        {**settings.model_dump(mode="python", exclude={"sources"}), "sources": sources}
    )


@pytest.fixture
async def client(all_kinds: Settings) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(await build_ingest_app(all_kinds))) as test_client:

        async def ready() -> bool:
            return (await test_client.get("/readyz")).status == 200

        await wait_for(ready)
        yield test_client


class TestEveryKind:
    async def test_each_kind_reaches_the_topic_with_its_scope(
        self, client: TestClient, all_kinds: Settings
    ) -> None:
        """A signed request of each kind becomes one canonical event of the right scope."""
        import hashlib
        import hmac

        body = sample_session_revoked(event_id="ev-workos")
        assert (
            200
            == (
                await client.post(
                    "/webhooks/workos", data=body, headers=signed_headers(b"wsecret", body)
                )
            ).status
        )

        now = int(time.time())
        clerk = json.dumps(
            {"type": "session.revoked", "data": {"id": "sess_c", "user_id": "user_c"}}
        ).encode()
        headers = {
            "svix-id": "ev-clerk",
            "svix-timestamp": str(now),
            "svix-signature": sign_standard(decode_secret(WHSEC), "ev-clerk", now, clerk),
        }
        assert 200 == (await client.post("/webhooks/clerk", data=clerk, headers=headers)).status

        token = KEY.sign(logout_claims(jti="ev-oidc", sid=None, sub="user_o"))
        resp = await client.post(
            "/webhooks/keycloak",
            data=urlencode({"logout_token": token}),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert 200 == resp.status
        assert "no-store" == resp.headers["Cache-Control"]

        set_token = KEY.sign(set_claims(jti="ev-caep"), typ="secevent+jwt")
        resp = await client.post(
            "/webhooks/caep",
            data=set_token,
            headers={"Content-Type": "application/secevent+jwt", "Authorization": "Bearer t"},
        )
        assert 202 == resp.status

        okta = json.dumps(
            {
                "data": {
                    "events": [
                        {
                            "uuid": "ev-okta-1",
                            "eventType": "user.session.clear",
                            "published": "2026-12-03T10:00:00Z",
                            "target": [{"id": "00u1", "type": "User"}],
                        },
                        {
                            "uuid": "ev-okta-2",
                            "eventType": "user.lifecycle.deactivate",
                            "published": "2026-12-03T10:00:01Z",
                            "target": [{"id": "00u2", "type": "User"}],
                        },
                    ]
                }
            }
        ).encode()
        resp = await client.post(
            "/webhooks/okta",
            data=okta,
            headers={"Authorization": "okta-secret", "Content-Type": "application/json"},
        )
        assert 200 == resp.status
        assert ["published", "published"] == [e["status"] for e in (await resp.json())["events"]]

        inhouse = b'{"id": "ev-hmac", "type": "org.closed", "data": {"id": "org_h"}}'
        signature = hmac.new(b"h", inhouse, hashlib.sha256).hexdigest()
        assert (
            200
            == (
                await client.post(
                    "/webhooks/inhouse", data=inhouse, headers={"X-Signature": signature}
                )
            ).status
        )

        events = {e["event_id"]: e for e in await read_events(all_kinds.kafka.topic, 7)}
        assert {
            "ev-workos": ("workos", "session"),
            "ev-clerk": ("standard-webhooks", "session"),
            "ev-oidc": ("oidc-backchannel", "user"),
            "ev-caep": ("ssf", "session"),
            "ev-okta-1": ("okta", "user"),
            "ev-okta-2": ("okta", "user"),
            "ev-hmac": ("hmac", "organization"),
        } == {k: (v["source_kind"], v["scope"]) for k, v in events.items()}

    async def test_okta_verification_handshake(self, client: TestClient) -> None:
        """GET with the challenge header echoes it; without the right Authorization, 401."""
        resp = await client.get(
            "/webhooks/okta",
            headers={"x-okta-verification-challenge": "c-1", "Authorization": "okta-secret"},
        )
        assert (200, {"verification": "c-1"}) == (resp.status, await resp.json())
        resp = await client.get("/webhooks/okta", headers={"x-okta-verification-challenge": "c-1"})
        assert 401 == resp.status


class TestReplay:
    async def test_same_request_1000_times_concurrently_is_one_record(
        self, client: TestClient, all_kinds: Settings
    ) -> None:
        """1,000 concurrent copies of one signed request: all 200, one record, 999 duplicates."""
        body = sample_session_revoked(event_id=f"ev-{uuid.uuid4().hex}")
        headers = signed_headers(b"wsecret", body)
        semaphore = asyncio.Semaphore(200)

        async def send() -> tuple[int, str]:
            async with semaphore:
                resp = await client.post("/webhooks/workos", data=body, headers=headers)
                return resp.status, (await resp.json())["status"]

        results = await asyncio.gather(*(send() for _ in range(1000)))
        assert {200} == {status for status, _ in results}
        assert 1 == [s for _, s in results].count("published")
        assert 999 == [s for _, s in results].count("duplicate")
        assert 1 == await record_count(all_kinds.kafka.topic)

    async def test_redelivery_later_is_a_duplicate_and_oidc_jti_replay_too(
        self, client: TestClient, all_kinds: Settings
    ) -> None:
        """A later retry (new signature, same id) and a replayed logout token publish once."""
        body = sample_session_revoked(event_id="ev-retry")
        assert (
            "published"
            == (
                await (
                    await client.post(
                        "/webhooks/workos", data=body, headers=signed_headers(b"wsecret", body)
                    )
                ).json()
            )["status"]
        )
        retry_headers = signed_headers(b"wsecret", body, int(time.time() * 1000) + 1000)
        assert (
            "duplicate"
            == (
                await (
                    await client.post("/webhooks/workos", data=body, headers=retry_headers)
                ).json()
            )["status"]
        )
        form = urlencode({"logout_token": KEY.sign(logout_claims(jti="jti-replayed"))})
        for _ in range(3):
            resp = await client.post(
                "/webhooks/keycloak",
                data=form,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert 200 == resp.status
        assert 2 == await record_count(all_kinds.kafka.topic)
