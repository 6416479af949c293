"""The ingest HTTP service: receive → verify → parse → publish, answering only after the ack.

Routes:
    POST /webhooks/{name}   a configured webhook source (revocations are published; session
                            announcements are recorded in the session inventory)
    GET  /webhooks/{name}   a provider's one-time verification handshake (Okta)
    GET  /healthz           the process is alive
    GET  /readyz            the producer holds a live broker connection
    GET  /metrics           Prometheus metrics
    GET  /openapi.yaml      the OpenAPI document of this API
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib.resources import files

import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from structlog.contextvars import bind_contextvars, clear_contextvars

from propagator import tracing
from propagator.admin import bearer_auth
from propagator.broker import Connection
from propagator.dedupe import PublishOnce
from propagator.errors import (
    BrokerUnavailable,
    DependencyUnavailable,
    PayloadTooLarge,
    PropagatorError,
    RateLimited,
    UnknownSource,
    map_redis_errors,
)
from propagator.inventory import SessionInventory
from propagator.metrics import IngestMetrics
from propagator.ratelimit import RateLimiter
from propagator.settings import IngestSettings
from propagator.sources import Delivery, Ignored, Outcome, Reply, Result, SessionSeen, Source

_log = structlog.get_logger(__name__)

SOURCES: web.AppKey[Mapping[str, Source]] = web.AppKey("sources")
PUBLISHER: web.AppKey[PublishOnce] = web.AppKey("publisher")
LIMITER: web.AppKey[RateLimiter] = web.AppKey("limiter")
BROKER: web.AppKey[Connection] = web.AppKey("broker")
METRICS: web.AppKey[IngestMetrics] = web.AppKey("metrics")
SETTINGS: web.AppKey[IngestSettings] = web.AppKey("ingest_settings")
INVENTORY: web.AppKey[SessionInventory | None] = web.AppKey("inventory")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The whole body must arrive within this; headers are bounded by the server's keep-alive timeout.
BODY_READ_TIMEOUT_S = 10.0


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


@web.middleware
async def _errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Every failure becomes a JSON body with a stable code; nothing leaks a traceback."""
    # Requests on one keep-alive connection share a task, hence a context: start clean.
    clear_contextvars()
    traceparent = tracing.continue_or_start(request.headers.get(tracing.HEADER))
    tracing.current.set(traceparent)
    trace_id = tracing.trace_id(traceparent)
    # Without the caller's X-Request-Id, the trace id (random per request) names the request.
    bind_contextvars(request_id=request.headers.get("X-Request-Id") or trace_id, trace_id=trace_id)
    try:
        return await handler(request)
    except PropagatorError as exc:
        _log.info("request.rejected", status=exc.status, code=exc.code, reason=exc.message)
        return error_response(exc.status, exc.code, exc.message, _retry_after(request, exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return error_response(exc.status, code, exc.reason, allow)
    except Exception:  # noqa: BLE001 - the last line of defence: log it, answer 500
        _log.exception("request.failed")
        return error_response(500, "internal_error", "internal error")


async def _read_bounded(request: web.Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it is known to exceed the limit."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body of {request.content_length} bytes exceeds {limit}")
    if request.content.is_eof():
        # The whole body arrived with the headers (a webhook usually does): no wait, no timer.
        body = request.content.read_nowait()
        if len(body) > limit:
            raise PayloadTooLarge(f"body exceeds {limit} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        # A sender dribbling its body (slowloris) would hold the handler forever otherwise.
        async with asyncio.timeout(BODY_READ_TIMEOUT_S):
            async for chunk in request.content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"body exceeds {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise web.HTTPRequestTimeout() from None
    return b"".join(chunks)


def _client_address(request: web.Request) -> str:
    if request.app[SETTINGS].rate_limit.trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        first = forwarded.split(",")[0].strip()
        if first:
            return first
    return request.remote or "unknown"


def _render(reply: Reply, extra_headers: Mapping[str, str] | None = None) -> web.Response:
    headers = {**reply.headers, **(extra_headers or {})}
    if reply.body is None:
        return web.Response(status=reply.status, headers=headers)
    return web.json_response(reply.body, status=reply.status, headers=headers)


def _source(request: web.Request) -> Source:
    name = request.match_info["name"]
    source = request.app[SOURCES].get(name)
    if source is None:
        raise UnknownSource(f"no webhook source named {name!r}")
    bind_contextvars(source=name)
    return source


async def receive_webhook(request: web.Request) -> web.Response:
    source = _source(request)
    name = source.name
    metrics = request.app[METRICS]
    received_at = datetime.now(UTC)
    try:
        request.app[LIMITER].check(name, _client_address(request))
        body = await _read_bounded(request, request.app[SETTINGS].max_body_bytes)
        delivery = Delivery(
            method=request.method,
            headers=request.headers,
            body=body,
            content_type=request.content_type,
            received_at=received_at,
        )
        # Nothing is parsed, let alone published, before the delivery is authenticated.
        outcomes = await source.receive(delivery)
        results = [await _publish(request, outcome) for outcome in outcomes]
    except PropagatorError as exc:
        metrics.requests.labels(name, exc.code).inc()
        log = _log.warning if exc.status >= 500 else _log.info
        log("webhook.rejected", status=exc.status, code=exc.code, reason=exc.message)
        return _render(source.reply_error(exc), _retry_after(request, exc))
    outcome = results[0].status if len(results) == 1 else "accepted"
    metrics.requests.labels(name, outcome).inc()
    return _render(source.reply(results))


async def _publish(request: web.Request, outcome: Outcome) -> Result:
    metrics = request.app[METRICS]
    source = request.match_info["name"]
    # Bound until the next outcome's (the next request starts with a clean context).
    bind_contextvars(event_id=outcome.event_id)
    inventory = request.app[INVENTORY]
    if isinstance(outcome, SessionSeen) and inventory is not None:
        with map_redis_errors():
            await inventory.seen(outcome, datetime.now(UTC).isoformat())
        _log.info("webhook.session_recorded", type=outcome.type)
        return Result(outcome.event_id, outcome.type, "recorded")
    if isinstance(outcome, Ignored | SessionSeen):
        metrics.ignored.labels(source).inc()
        _log.info("webhook.ignored", type=outcome.type)
        return Result(outcome.event_id, outcome.type, "ignored")
    if not request.app[BROKER].started:
        raise BrokerUnavailable("not connected to the broker yet")
    started = time.perf_counter()
    status = await request.app[PUBLISHER].publish(outcome)
    if status == "duplicate":
        metrics.duplicates.labels(source).inc()
    else:
        metrics.publish_seconds.observe(time.perf_counter() - started)
    _log.info(f"webhook.{status}", type=outcome.type, scope=outcome.scope.value)
    return Result(outcome.event_id, outcome.type, status)


def _retry_after(request: web.Request, exc: PropagatorError) -> dict[str, str]:
    if isinstance(exc, RateLimited):
        return {"Retry-After": str(exc.retry_after_s)}
    if isinstance(exc, DependencyUnavailable):
        return {"Retry-After": str(request.app[SETTINGS].retry_after_s)}
    return {}


async def webhook_challenge(request: web.Request) -> web.Response:
    """The GET handshake some providers make once (Okta's verification challenge)."""
    source = _source(request)
    delivery = Delivery(
        method="GET",
        headers=request.headers,
        body=b"",
        content_type=request.content_type,
        received_at=datetime.now(UTC),
    )
    try:
        reply = source.challenge(delivery)
    except PropagatorError as exc:
        return _render(source.reply_error(exc))
    if reply is None:
        raise web.HTTPMethodNotAllowed("GET", ["POST"])
    return _render(reply)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    if await request.app[BROKER].ready():
        return web.json_response({"status": "ready"})
    return error_response(503, "not_ready", "the producer has no live broker connection")


async def openapi_document(request: web.Request) -> web.Response:
    body = files("propagator").joinpath("openapi.yaml").read_bytes()
    return web.Response(body=body, content_type="application/yaml")


async def metrics_endpoint(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(
    *,
    settings: IngestSettings,
    sources: Mapping[str, Source],
    publisher: PublishOnce,
    broker: Connection,
    limiter: RateLimiter,
    metrics: IngestMetrics,
    admin_tokens: Sequence[str] = (),
    inventory: SessionInventory | None = None,
) -> web.Application:
    """The ingest application; every I/O client is passed in and owned by the caller."""
    middlewares: list[Middleware] = [_errors]
    if admin_tokens:
        middlewares.append(bearer_auth(admin_tokens))
    app = web.Application(middlewares=middlewares, client_max_size=settings.max_body_bytes)
    app[SOURCES] = sources
    app[PUBLISHER] = publisher
    app[LIMITER] = limiter
    app[BROKER] = broker
    app[METRICS] = metrics
    app[SETTINGS] = settings
    app[INVENTORY] = inventory
    app.router.add_post("/webhooks/{name}", receive_webhook)
    app.router.add_get("/webhooks/{name}", webhook_challenge)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/openapi.yaml", openapi_document)

    async def _broker_lifecycle(app: web.Application) -> AsyncIterator[None]:
        broker.start()
        yield
        await publisher.settle()  # the last "done" marks, while Redis is still open
        await broker.close()

    app.cleanup_ctx.append(_broker_lifecycle)
    return app
