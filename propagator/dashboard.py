"""The live dashboard: one page, no build step, polling one JSON document.

    GET  /dashboard                 the page (admin token as a bearer header, or the login
                                    cookie); without either, the login form
    POST /dashboard/login           form field ``token`` → the cookie (HttpOnly, SameSite=Strict)
    POST /dashboard/logout          clears the cookie
    GET  /dashboard/static/{name}   the page's script and styles, and the vendored uPlot
    GET  /admin/dashboard.json      what the page shows (behind the admin middleware)

The data: ingest's own metrics registry; the workers' per-subscriber snapshots from Redis
(consumers/stats.py); the latest revocations and their receipts from the receipt projection.
Registered with the admin API, only when an admin token is configured.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from consumers.config import SubscriberConfig
from consumers.receipts import ReceiptProjection
from consumers.stats import StatsBoard, histogram_quantile
from propagator.admin import SESSION_COOKIE, AdminSessions, revocation_status
from propagator.errors import DependencyUnavailable
from propagator.settings import DashboardSettings

_log = structlog.get_logger(__name__)

SESSIONS: web.AppKey[AdminSessions] = web.AppKey("dashboard_sessions")
SETTINGS: web.AppKey[DashboardSettings] = web.AppKey("dashboard_settings")
REGISTRY: web.AppKey[CollectorRegistry] = web.AppKey("dashboard_ingest_registry")
BOARD: web.AppKey[StatsBoard] = web.AppKey("dashboard_stats_board")
PROJECTION: web.AppKey[ReceiptProjection] = web.AppKey("dashboard_projection")
SUBSCRIBERS: web.AppKey[Sequence[SubscriberConfig]] = web.AppKey("dashboard_subscribers")

_STATIC = files("propagator").joinpath("static")
_ASSETS = {
    "dashboard.js": "text/javascript",
    "dashboard.css": "text/css",
    "uPlot.iife.min.js": "text/javascript",
    "uPlot.min.css": "text/css",
}
_PAGE_HEADERS = {
    # Everything the page loads comes from here: no CDN, no inline script.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def _template(name: str, **values: str) -> str:
    text = _STATIC.joinpath(name).read_text()
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    return text


def _login_page(error: str = "", status: int = 200) -> web.Response:
    message = f'<p class="error" role="alert">{html.escape(error)}</p>' if error else ""
    return web.Response(
        text=_template("login.html", error=message),
        status=status,
        content_type="text/html",
        headers=_PAGE_HEADERS,
    )


def _with_session(request: web.Request, response: web.Response, token: str) -> web.Response:
    sessions = request.app[SESSIONS]
    response.set_cookie(
        SESSION_COOKIE,
        sessions.issue(token),
        max_age=sessions.ttl_s,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.secure,
    )
    return response


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


async def page(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS]
    authorization = request.headers.get("Authorization", "")
    by_header = sessions.bearer_valid(authorization)
    if not by_header and not sessions.cookie_valid(request.cookies.get(SESSION_COOKIE)):
        return _login_page()
    poll_ms = str(int(request.app[SETTINGS].poll_interval_s * 1000))
    response = web.Response(
        text=_template("dashboard.html", poll_ms=poll_ms),
        content_type="text/html",
        headers=_PAGE_HEADERS,
    )
    if by_header:
        # The page's own requests cannot send the header: give the browser the cookie.
        return _with_session(request, response, authorization.partition(" ")[2])
    return response


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    token = form.get("token")
    if not isinstance(token, str) or not request.app[SESSIONS].token_valid(token):
        _log.info("dashboard.login_refused")
        return _login_page("That token is not an admin token.", status=401)
    _log.info("dashboard.login")
    return _with_session(request, _see_other("/dashboard"), token)


async def logout(request: web.Request) -> web.Response:
    response = _see_other("/dashboard")
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = _ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound()
    return web.Response(
        body=_STATIC.joinpath(name).read_bytes(),
        content_type=content_type,
        headers={"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"},
    )


def ingest_summary(registry: CollectorRegistry) -> dict[str, Any]:
    """Request totals by source and outcome, and publish latency, from ingest's registry."""
    requests: list[dict[str, Any]] = []
    buckets: list[list[float]] = []
    count = 0.0
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "propagator_ingest_requests_total":
                requests.append({**sample.labels, "total": sample.value})
            elif sample.name == "propagator_ingest_publish_seconds_bucket":
                buckets.append([float(sample.labels["le"]), sample.value])
            elif sample.name == "propagator_ingest_publish_seconds_count":
                count = sample.value
    publish = {k: histogram_quantile(q, buckets) for k, q in _QUANTILES.items()}
    return {"requests": requests, "publish_seconds": {**publish, "count": count}}


def subscriber_summary(name: str, snapshot: dict[str, Any] | None) -> dict[str, Any]:
    """What the page shows per subscriber; ``reporting`` is false when no worker is heard."""
    if snapshot is None:
        return {"name": name, "reporting": False}
    latency = snapshot["propagation_seconds"]
    sink = snapshot["sink_seconds"]
    return {
        "name": name,
        "reporting": True,
        "processes": snapshot["processes"],
        "updated_at": datetime.fromtimestamp(snapshot["at"], UTC).isoformat(),
        "applied": snapshot["applied"],
        "lag_records": snapshot["lag_records"],
        "lag_seconds": snapshot["lag_seconds"],
        "retries": snapshot["retries"],
        "dead_letters": snapshot["dead_letters"],
        "dead_letter_depth": snapshot["dead_letter_depth"],
        "circuit_open": snapshot["circuit_open"] >= 1,
        "propagation_seconds": {
            **{k: histogram_quantile(q, latency["buckets"]) for k, q in _QUANTILES.items()},
            "count": latency["count"],
        },
        "sink_p99_seconds": histogram_quantile(0.99, sink["buckets"]),
    }


async def data(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    subscribers = request.app[SUBSCRIBERS]
    problems: list[str] = []
    try:
        snapshots = await request.app[BOARD].read(max_age_s=settings.stats_max_age_s)
    except DependencyUnavailable as exc:
        snapshots = {}
        problems.append(f"worker stats unavailable: {exc.message}")
    try:
        latest = await request.app[PROJECTION].latest(settings.latest)
    except DependencyUnavailable as exc:
        latest = []
        problems.append(f"receipts unavailable: {exc.message}")
    names = [s.name for s in subscribers] + sorted(set(snapshots) - {s.name for s in subscribers})
    body = {
        "generated_at": datetime.now(UTC).isoformat(),
        "problems": problems,
        "ingest": ingest_summary(request.app[REGISTRY]),
        "subscribers": [subscriber_summary(n, snapshots.get(n)) for n in names],
        "revocations": [
            revocation_status(event, receipts, subscribers) for event, receipts in latest
        ],
    }
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def register_dashboard(
    app: web.Application,
    *,
    tokens: Sequence[str],
    settings: DashboardSettings,
    ingest_registry: CollectorRegistry,
    board: StatsBoard,
    projection: ReceiptProjection,
    subscribers: Sequence[SubscriberConfig],
) -> None:
    app[SESSIONS] = AdminSessions(tokens, ttl_s=settings.session_ttl_s)
    app[SETTINGS] = settings
    app[REGISTRY] = ingest_registry
    app[BOARD] = board
    app[PROJECTION] = projection
    app[SUBSCRIBERS] = subscribers
    app.router.add_get("/dashboard", page)
    app.router.add_post("/dashboard/login", login)
    app.router.add_post("/dashboard/logout", logout)
    app.router.add_get("/dashboard/static/{name}", asset)
    app.router.add_get("/admin/dashboard.json", data)
