"""The live dashboard, end to end: ingest and worker on the real broker and Redis, the page in
a real headless Chromium (Debian's ``chromium``, driven by Playwright; ``make test`` installs
it), and its login, JSON document and cookie rules over plain HTTP.

The browser test leaves a screenshot in test-artifacts/dashboard.png.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from propagator.cli import build_ingest_app
from propagator.sample import sample_session_revoked, signed_headers
from propagator.settings import AdminSettings, DashboardSettings, Settings
from tests.integration.conftest import REPO, SECRET, wait_for
from tests.integration.test_fanout import Subscriber, http_sink, http_subscriber, with_subscribers

pytestmark = pytest.mark.integration

TOKEN = "dashboard-admin-token"
ARTIFACTS = REPO / "test-artifacts"


def _chromium() -> str:
    """The system Chromium; failing (not skipping) without it: this test is the proof."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no chromium on PATH: `make browser` installs Debian's chromium package")


@asynccontextmanager
async def dashboard_service(
    settings: Settings, unique: str, server: TestServer
) -> AsyncIterator[tuple[Settings, TestClient]]:
    """Ingest (with the admin API and the dashboard) for two subscribers: a Redis denylist,
    and an HTTP downstream that refuses some events for good."""
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
    ).model_copy(
        update={
            "admin": AdminSettings(tokens=[TOKEN]),  # type: ignore[list-item]
            "dashboard": DashboardSettings(
                stats_key=f"test:{unique}:dashboard:subscribers",
                stats_interval_s=0.3,
                poll_interval_s=0.5,
            ),
        }
    )
    app = await build_ingest_app(config)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        await wait_for(lambda: _ready(client))
        yield config, client


async def _ready(client: TestClient) -> bool:
    return (await client.get("/readyz")).status == 200


async def _revoke(client: TestClient, event_id: str) -> None:
    body = sample_session_revoked(event_id=event_id)
    resp = await client.post(
        "/webhooks/workos", data=body, headers=signed_headers(SECRET.encode(), body)
    )
    assert 200 == resp.status, await resp.text()


class TestDashboardInABrowser:
    async def test_login_live_revocations_receipts_and_screenshot(
        self, settings: Settings, unique: str
    ) -> None:
        """Signed in with the admin token, the page shows revocations sent while it is open,
        each subscriber's status, worker stats and charts, and the search box opens a receipt."""
        from playwright.async_api import async_playwright, expect

        from tests.integration.test_fanout import worker

        ok_ids = [f"ev-ok-{unique}-{i}" for i in range(4)]
        rejected = f"ev-rejected-{unique}"
        downstream = Subscriber(reject={rejected})
        errors: list[str] = []
        async with (
            http_subscriber(downstream) as server,
            dashboard_service(settings, unique, server) as (config, client),
            worker(config),
            async_playwright() as playwright,
        ):
            browser = await playwright.chromium.launch(
                executable_path=_chromium(), args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                context = await browser.new_context(viewport={"width": 1440, "height": 1000})
                page = await context.new_page()
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                base = str(client.make_url("/dashboard"))

                await page.goto(base)
                await page.fill("#token", "not-the-token")
                await page.click("button[type=submit]")
                await expect(page.get_by_role("alert")).to_contain_text("not an admin token")
                await page.fill("#token", TOKEN)
                await page.click("button[type=submit]")
                await expect(page.locator("#status")).to_contain_text("updated", timeout=15_000)

                cookie = next(c for c in await context.cookies() if c["name"] == "propagator_admin")
                assert (True, "Strict") == (cookie["httpOnly"], cookie["sameSite"])
                assert TOKEN not in cookie["value"]

                # Sent while the page is open: it has to pick them up by itself.
                for event_id in [*ok_ids, rejected]:
                    await _revoke(client, event_id)
                forged = await client.post(
                    "/webhooks/workos",
                    data=b"{}",
                    headers={"WorkOS-Signature": f"t={int(time.time() * 1000)}, v1={'0' * 64}"},
                )
                assert 401 == forged.status

                timeout = 45_000
                for event_id in ok_ids:
                    row = page.locator(f'#revocations tr[data-event-id="{event_id}"]')
                    await expect(row.locator(".badge.applied")).to_have_count(2, timeout=timeout)
                bad = page.locator(f'#revocations tr[data-event-id="{rejected}"]')
                await expect(bad.locator(".badge.applied")).to_have_count(1, timeout=timeout)
                await expect(bad.locator(".badge.dead-lettered")).to_have_count(1, timeout=timeout)

                hooks = page.locator('#subscribers tr[data-subscriber="hooks"]')
                await expect(hooks.locator("td").nth(6)).to_have_text("1", timeout=timeout)
                await expect(hooks.locator(".badge.closed")).to_have_count(1)
                cache = page.locator('#subscribers tr[data-subscriber="cache"]')
                await expect(cache.locator("td").nth(2)).to_have_text("5", timeout=timeout)
                await expect(cache.locator("td").nth(8)).not_to_have_text(
                    "\u2013"
                )  # the page's "no value"
                await expect(page.locator("#ingest-chart .u-legend")).to_contain_text(
                    "workos published"
                )
                await expect(page.locator("#ingest-chart .u-legend")).to_contain_text(
                    "workos invalid_signature"
                )
                await expect(page.locator("#latency-chart .u-legend")).to_contain_text("p99 cache")

                await page.fill("#search-id", rejected)
                await page.click("#search button[type=submit]")
                receipt = page.locator("#receipt")
                await expect(receipt).to_contain_text("Not applied everywhere yet.")
                hooks_receipt = receipt.locator('tr[data-subscriber="hooks"]')
                await expect(hooks_receipt.locator(".badge.dead-lettered")).to_have_count(1)
                await expect(hooks_receipt).to_contain_text("400")
                await expect(hooks_receipt).to_contain_text("SinkRejected")
                await expect(
                    receipt.locator('tr[data-subscriber="cache"] .badge.applied')
                ).to_have_count(1)

                # A few more polls, so that the charts show the burst and the quiet after it.
                polls = int(await page.evaluate("document.body.dataset.polls"))
                await page.wait_for_function(
                    "n => Number(document.body.dataset.polls) >= n", arg=polls + 6, timeout=timeout
                )
                ARTIFACTS.mkdir(exist_ok=True)
                shot = ARTIFACTS / "dashboard.png"
                await page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 10_000

                await page.fill("#search-id", "no-such-event")
                await page.click("#search button[type=submit]")
                await expect(receipt).to_contain_text("no revocation 'no-such-event' is known")
            finally:
                await browser.close()
        assert [] == errors


class TestDashboardAccess:
    async def test_login_cookie_rules(self, settings: Settings, unique: str) -> None:
        """No token: the login form and 401 on the data. A wrong token: refused. The right one
        (form or bearer header): an HttpOnly, SameSite=Strict cookie that opens GETs only."""
        async with (
            http_subscriber(Subscriber()) as server,
            dashboard_service(settings, unique, server) as (_, client),
        ):
            anonymous = await client.get("/dashboard")
            assert 200 == anonymous.status
            assert 'name="token"' in await anonymous.text()
            assert 401 == (await client.get("/admin/dashboard.json")).status
            csp = anonymous.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp

            wrong = await client.post(
                "/dashboard/login", data={"token": "nope"}, allow_redirects=False
            )
            assert 401 == wrong.status
            assert "propagator_admin" not in wrong.cookies

            right = await client.post(
                "/dashboard/login", data={"token": TOKEN}, allow_redirects=False
            )
            assert 303 == right.status
            set_cookie = right.headers["Set-Cookie"]
            assert "HttpOnly" in set_cookie
            assert "SameSite=Strict" in set_cookie
            assert TOKEN not in set_cookie

            page = await client.get("/dashboard")
            assert 'id="revocations"' in await page.text()
            data: dict[str, Any] = await (await client.get("/admin/dashboard.json")).json()
            assert {"cache", "hooks"} == {s["name"] for s in data["subscribers"]}
            # Changes need the bearer token itself, whatever cookie the browser carries.
            purge = await client.post("/admin/dlq/hooks/purge")
            assert 401 == purge.status
            vendored = await client.get("/dashboard/static/uPlot.iife.min.js")
            assert 200 == vendored.status
            assert 404 == (await client.get("/dashboard/static/../settings.py")).status

            client.session.cookie_jar.clear()
            by_header = await client.get("/dashboard", headers={"Authorization": f"Bearer {TOKEN}"})
            assert 'id="revocations"' in await by_header.text()
            assert "propagator_admin" in by_header.cookies

    async def test_json_lists_latest_revocations_with_statuses(
        self, settings: Settings, unique: str
    ) -> None:
        """The JSON document lists revocations newest first with per-subscriber status, the
        ingest counts by source and outcome, and each worker's subscriber stats."""
        from tests.integration.test_fanout import worker

        ids = [f"ev-json-{unique}-{i}" for i in range(3)]
        async with (
            http_subscriber(Subscriber()) as server,
            dashboard_service(settings, unique, server) as (config, client),
            worker(config),
        ):
            for event_id in ids:
                await _revoke(client, event_id)
            auth = {"Authorization": f"Bearer {TOKEN}"}

            async def settled() -> dict[str, Any] | None:
                body: dict[str, Any] = await (
                    await client.get("/admin/dashboard.json", headers=auth)
                ).json()
                statuses = [
                    sorted(s["status"] for s in r["subscribers"].values())
                    for r in body["revocations"]
                ]
                stats = {s["name"]: s for s in body["subscribers"]}
                done = statuses == [["applied", "applied"]] * 3 and all(
                    s["reporting"] and s["applied"] == 3 for s in stats.values()
                )
                return body if done else None

            body = await wait_for(settled)
        assert list(reversed(ids)) == [r["event"]["event_id"] for r in body["revocations"]]
        assert [{"source": "workos", "outcome": "published", "total": 3.0}] == body["ingest"][
            "requests"
        ]
        for stats in body["subscribers"]:
            assert 3 == stats["propagation_seconds"]["count"]
            assert 0 < stats["propagation_seconds"]["p50"] <= stats["propagation_seconds"]["p99"]
            assert (False, 0) == (stats["circuit_open"], stats["dead_letters"])
