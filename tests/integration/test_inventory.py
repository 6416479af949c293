"""The session inventory on real parts: recorded at ingest, expanded and marked by the worker."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio import Redis

from propagator.cli import build_ingest_app
from propagator.sample import signed_headers
from propagator.settings import AdminSettings, InventorySettings, Settings
from tests.integration.conftest import SECRET, wait_for
from tests.integration.test_end_to_end import worker

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer inv-admin"}


def workos(event_type: str, event_id: str, data: dict[str, object]) -> bytes:
    return json.dumps(
        {
            "object": "event",
            "id": event_id,
            "event": event_type,
            "data": data,
            "created_at": "2026-12-03T12:00:00.000Z",
        }
    ).encode()


def created(session_id: str, user_id: str, ip: str) -> bytes:
    return workos(
        "session.created",
        f"ev-{session_id}",
        {
            "object": "session",
            "id": session_id,
            "user_id": user_id,
            "ip_address": ip,
            "user_agent": "Mozilla/5.0 (X11)",
            "auth_method": "password",
            "created_at": "2026-12-03T11:00:00.000Z",
        },
    )


@pytest.fixture
def inv_settings(settings: Settings, unique: str) -> Settings:
    return settings.model_copy(
        update={
            "admin": AdminSettings(tokens=["inv-admin"]),  # type: ignore[list-item]
            "inventory": InventorySettings(key_prefix=f"test:{unique}:sessions:"),
        }
    )


@pytest.fixture
async def client(inv_settings: Settings) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(await build_ingest_app(inv_settings))) as test_client:

        async def ready() -> bool:
            return (await test_client.get("/readyz")).status == 200

        await wait_for(ready)
        yield test_client


async def post(client: TestClient, body: bytes) -> dict[str, object]:
    resp = await client.post(
        "/webhooks/workos", data=body, headers=signed_headers(SECRET.encode(), body)
    )
    assert 200 == resp.status, await resp.text()
    result: dict[str, object] = await resp.json()
    return result


class TestInventory:
    async def test_sign_out_everywhere_denies_every_known_session(
        self, client: TestClient, inv_settings: Settings, redis: Redis
    ) -> None:
        """Two sessions are recorded; a password reset denies both by key, and support sees it."""
        for sid, ip in (("s-a", "198.51.100.1"), ("s-b", "198.51.100.2")):
            assert "recorded" == (await post(client, created(sid, "user-inv", ip)))["status"]
        view = await (await client.get("/admin/users/user-inv/sessions", headers=AUTH)).json()
        assert 2 == view["active"]
        assert {"198.51.100.1", "198.51.100.2"} == {s["ip_address"] for s in view["sessions"]}
        assert view["all_sessions_revoked_before"] is None

        prefix = inv_settings.denylist.key_prefix
        async with worker(inv_settings):
            reset = workos(
                "password_reset.succeeded",
                "ev-reset",
                {"object": "password_reset", "id": "pr_1", "user_id": "user-inv", "email": "a@b.c"},
            )
            assert "published" == (await post(client, reset))["status"]
            await wait_for(lambda: redis.exists(f"{prefix}session:s-a", f"{prefix}session:s-b"))

            async def both_revoked() -> bool:
                v = await (await client.get("/admin/users/user-inv/sessions", headers=AUTH)).json()
                return bool(v["active"] == 0 and v["all_sessions_revoked_before"])

            await wait_for(both_revoked)
        view = await (await client.get("/admin/users/user-inv/sessions", headers=AUTH)).json()
        assert {"revoked"} == {s["status"] for s in view["sessions"]}
        assert {"ev-reset"} == {s["revoked_by_event"] for s in view["sessions"]}
        record = json.loads(await redis.get(f"{prefix}session:s-a"))
        assert "ev-reset" == record["event_id"]

    async def test_single_session_revocation_is_marked_and_recreation_keeps_it_revoked(
        self, client: TestClient, inv_settings: Settings
    ) -> None:
        """session.revoked marks that one session; a late session.created does not reopen it."""
        await post(client, created("s-1", "user-two", "203.0.113.1"))
        await post(client, created("s-2", "user-two", "203.0.113.2"))
        async with worker(inv_settings):
            revoked = workos(
                "session.revoked",
                "ev-rev",
                {"object": "session", "id": "s-1", "user_id": "user-two", "status": "revoked"},
            )
            await post(client, revoked)

            async def one_revoked() -> bool:
                v = await (await client.get("/admin/users/user-two/sessions", headers=AUTH)).json()
                return bool(v["active"] == 1)

            await wait_for(one_revoked)
        await post(
            client,
            workos(
                "session.created",
                f"ev-late-{time.time()}",
                json.loads(created("s-1", "user-two", "203.0.113.1"))["data"],
            ),
        )
        view = await (await client.get("/admin/users/user-two/sessions", headers=AUTH)).json()
        states = {s["session_id"]: s["status"] for s in view["sessions"]}
        assert {"s-1": "revoked", "s-2": "active"} == states

    async def test_admin_view_needs_the_token(self, client: TestClient) -> None:
        """Support's view is behind the admin token."""
        assert 401 == (await client.get("/admin/users/x/sessions")).status
