"""The admin HTTP API, behind a bearer token: dead-letter operations per subscriber.

    GET  /admin/dlq/{subscriber}               list (since, until, event_id, error_class)
    GET  /admin/dlq/{subscriber}/{part}/{offset} one dead letter, with its record
    POST /admin/dlq/{subscriber}/replay        {since, until, event_id, error_class, dry_run}
    POST /admin/dlq/{subscriber}/purge         delete every dead letter up to now
    GET  /admin/users/{user_id}/sessions       the user's session inventory and watermark
    GET  /admin/revocations/{event_id}         the event and, per subscriber, its status

Registered only when at least one admin token is configured. Besides the bearer token, a GET
may carry the dashboard's login cookie (``AdminSessions``); changes always need the token, so
a page elsewhere cannot make a logged-in browser replay or purge anything.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from redis.asyncio import Redis

from consumers.config import SubscriberConfig
from consumers.dlq import DeadLetterQueue, Selector
from consumers.receipts import ReceiptProjection
from propagator.errors import MalformedPayload, RequestRejected, Unauthorized, map_redis_errors
from propagator.inventory import SessionInventory
from propagator.kafka import Sender
from schemas import RevocationEvent

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
QUEUES: web.AppKey[Mapping[str, DeadLetterQueue]] = web.AppKey("dead_letter_queues")
PRODUCER: web.AppKey[Sender] = web.AppKey("admin_producer")
ADMIN_INVENTORY: web.AppKey[SessionInventory] = web.AppKey("admin_inventory")
ADMIN_REDIS: web.AppKey[Redis] = web.AppKey("admin_redis")
WATERMARK_KEY: web.AppKey[str] = web.AppKey("user_watermark_key")
PROJECTION: web.AppKey[ReceiptProjection] = web.AppKey("receipt_projection")
SUBSCRIBERS: web.AppKey[Sequence[SubscriberConfig]] = web.AppKey("subscribers")


class UnknownRevocation(RequestRejected):
    status = 404
    code = "unknown_revocation"


class UnknownSubscriber(RequestRejected):
    status = 404
    code = "unknown_subscriber"


SESSION_COOKIE = "propagator_admin"
_SAFE_METHODS = frozenset({"GET", "HEAD"})


class AdminSessions:
    """The dashboard's login cookie: ``{expiry}.{HMAC-SHA256(admin token, expiry)}``.

    Keyed by the admin tokens themselves, with no server-side state: every ingest replica
    accepts it, and removing a token from the configuration ends the sessions it opened.
    """

    def __init__(self, tokens: Sequence[str], *, ttl_s: int = 8 * 3600) -> None:
        self._tokens = [t.encode() for t in tokens]
        self.ttl_s = ttl_s

    def token_valid(self, given: str) -> bool:
        sent = given.strip().encode("utf-8", "replace")
        # Compare against every token so the time taken says nothing about which matched.
        matched = [hmac.compare_digest(sent, token) for token in self._tokens]
        return any(matched)

    def bearer_valid(self, authorization: str) -> bool:
        scheme, _, sent = authorization.partition(" ")
        return scheme.lower() == "bearer" and self.token_valid(sent)

    def issue(self, token: str, *, now: float | None = None) -> str:
        """A cookie value for a browser that proved it holds ``token`` (checked by the caller)."""
        expiry = str(int((time.time() if now is None else now) + self.ttl_s))
        return f"{expiry}.{_sign(token.strip().encode(), expiry)}"

    def cookie_valid(self, value: str | None, *, now: float | None = None) -> bool:
        expiry, _, signature = (value or "").partition(".")
        if not expiry.isdigit() or int(expiry) <= (time.time() if now is None else now):
            return False
        matched = [hmac.compare_digest(signature, _sign(token, expiry)) for token in self._tokens]
        return any(matched)


def _sign(token: bytes, expiry: str) -> str:
    return hmac.new(token, f"propagator-dashboard:{expiry}".encode(), hashlib.sha256).hexdigest()


def bearer_auth(tokens: Sequence[str]) -> Middleware:
    """Refuse /admin/ requests without one of the tokens (compared in constant time); a GET
    may instead carry a valid dashboard login cookie."""
    sessions = AdminSessions(tokens)

    @web.middleware
    async def middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
        if request.path.startswith("/admin/"):
            by_cookie = request.method in _SAFE_METHODS and sessions.cookie_valid(
                request.cookies.get(SESSION_COOKIE)
            )
            if not by_cookie and not sessions.bearer_valid(
                request.headers.get("Authorization", "")
            ):
                raise Unauthorized("a valid admin bearer token is required")
        return await handler(request)

    return middleware


def _queue(request: web.Request) -> DeadLetterQueue:
    name = request.match_info["subscriber"]
    queue = request.app[QUEUES].get(name)
    if queue is None:
        raise UnknownSubscriber(f"no subscriber named {name!r}")
    return queue


def _time(value: Any, field: str) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise MalformedPayload(f"{field} is not an RFC 3339 time") from exc
    if parsed.tzinfo is None:
        raise MalformedPayload(f"{field} needs a UTC offset")
    return parsed


def _selector(values: Mapping[str, Any]) -> Selector:
    return Selector(
        since=_time(values.get("since"), "since"),
        until=_time(values.get("until"), "until"),
        event_id=values.get("event_id") or None,
        error_class=values.get("error_class") or None,
    )


async def list_dead_letters(request: web.Request) -> web.Response:
    letters = await _queue(request).read(_selector(request.query))
    return web.json_response(
        {"count": len(letters), "dead_letters": [x.summary() for x in letters]}
    )


async def show_dead_letter(request: web.Request) -> web.Response:
    try:
        partition, offset = int(request.match_info["partition"]), int(request.match_info["offset"])
    except ValueError as exc:
        raise MalformedPayload("partition and offset are integers") from exc
    letter = await _queue(request).show(partition, offset)
    if letter is None:
        raise web.HTTPNotFound()
    return web.json_response(letter.detail())


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise MalformedPayload("the body is not JSON") from exc
    if not isinstance(body, dict):
        raise MalformedPayload("the body is a JSON object")
    return body


async def replay_dead_letters(request: web.Request) -> web.Response:
    body = await _body(request)
    queue = _queue(request)
    letters = await queue.read(_selector(body))
    dry_run = bool(body.get("dry_run", False))
    replayed = 0 if dry_run else await queue.replay(request.app[PRODUCER], letters)
    return web.json_response({"matched": len(letters), "replayed": replayed, "dry_run": dry_run})


async def purge_dead_letters(request: web.Request) -> web.Response:
    return web.json_response({"purged": await _queue(request).purge()})


async def user_sessions(request: web.Request) -> web.Response:
    """What was active for a user, what was revoked and when (support staff's view)."""
    user_id = request.match_info["user_id"]
    inventory = request.app[ADMIN_INVENTORY]
    with map_redis_errors():
        sessions = await inventory.sessions(user_id)
        watermark = await request.app[ADMIN_REDIS].get(
            request.app[WATERMARK_KEY].format(user_id=user_id)
        )
    revoked_all_before = None
    if watermark is not None:
        revoked_all_before = datetime.fromtimestamp(int(watermark) / 1000, tz=UTC).isoformat()
    return web.json_response(
        {
            "user_id": user_id,
            "sessions": sessions,
            "active": sum(1 for s in sessions if s.get("status") == "active"),
            "all_sessions_revoked_before": revoked_all_before,
        }
    )


def revocation_status(
    event: dict[str, Any],
    receipts: Mapping[str, dict[str, Any]],
    subscribers: Sequence[SubscriberConfig],
) -> dict[str, Any]:
    """Per subscriber the event should reach: applied, retrying, dead-lettered or pending."""
    parsed = RevocationEvent.model_validate(event)
    statuses: dict[str, dict[str, Any]] = {}
    for sub in subscribers:
        if not sub.filter.matches(parsed):
            continue
        receipt = receipts.get(sub.name)
        if receipt is None:
            statuses[sub.name] = {"status": "pending"}
        else:
            statuses[sub.name] = {
                "status": receipt["outcome"],
                **{
                    k: receipt.get(k)
                    for k in ("at", "attempts", "latency_s", "error", "http_status")
                },
            }
    return {
        "event": event,
        "subscribers": statuses,
        "applied_everywhere": all(s["status"] == "applied" for s in statuses.values()),
    }


async def revocation(request: web.Request) -> web.Response:
    event, receipts = await request.app[PROJECTION].lookup(request.match_info["event_id"])
    if event is None:
        raise UnknownRevocation(f"no revocation {request.match_info['event_id']!r} is known")
    return web.json_response(revocation_status(event, receipts, request.app[SUBSCRIBERS]))


def register_admin(
    app: web.Application,
    *,
    queues: Mapping[str, DeadLetterQueue],
    producer: Sender,
    inventory: SessionInventory,
    redis: Redis,
    user_watermark_key: str,
    projection: ReceiptProjection,
    subscribers: Sequence[SubscriberConfig],
) -> None:
    app[QUEUES] = queues
    app[PRODUCER] = producer
    app[ADMIN_INVENTORY] = inventory
    app[ADMIN_REDIS] = redis
    app[WATERMARK_KEY] = user_watermark_key
    app[PROJECTION] = projection
    app[SUBSCRIBERS] = subscribers
    app.router.add_get("/admin/revocations/{event_id}", revocation)
    app.router.add_get("/admin/users/{user_id}/sessions", user_sessions)
    app.router.add_get("/admin/dlq/{subscriber}", list_dead_letters)
    app.router.add_get("/admin/dlq/{subscriber}/{partition}/{offset}", show_dead_letter)
    app.router.add_post("/admin/dlq/{subscriber}/replay", replay_dead_letters)
    app.router.add_post("/admin/dlq/{subscriber}/purge", purge_dead_letters)
