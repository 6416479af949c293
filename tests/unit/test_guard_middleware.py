"""The aiohttp and ASGI middlewares, with a real guard over a fake Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from redis.exceptions import ConnectionError as RedisConnectionError

from propagator.guard import RevocationGuard
from propagator.guard.aiohttp import revocation_middleware, setup_guard
from propagator.guard.asgi import RevocationGuardMiddleware
from tests.unit.guard_fakes import FakeRedis, make_guard, unsigned_jwt

T = 1_700_000_000

MALFORMED = [
    "not-a-jwt",
    "a.b.c",
    "a.!!!.c",
    "eyJhbGciOiJub25lIn0.W10.x",  # payload is a JSON array
    "eyJhbGciOiJub25lIn0.eyJzaWQiOjF9.x",  # sid is a number
    "." * 5000,
    "é.ü.ß",
]


def token(sid: str = "session_1", sub: str = "user_1", iat: int = T, **extra: Any) -> str:
    return unsigned_jwt({"sid": sid, "sub": sub, "iat": iat, **extra})


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


@pytest.fixture
def redis() -> FakeRedis:
    return FakeRedis()


@pytest.fixture
async def guard(redis: FakeRedis) -> AsyncIterator[RevocationGuard]:
    async with make_guard(redis) as guard:
        yield guard


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": "world"})


@pytest.fixture
async def aiohttp_client(guard: RevocationGuard) -> AsyncIterator[TestClient]:
    async def claims_from_header(raw: str) -> Mapping[str, Any] | None:
        return None if raw == "refused" else json.loads(raw)

    app = web.Application(middlewares=[revocation_middleware(guard, cookie_name="session")])
    app.router.add_get("/", hello)
    # A second app shows the verified-claims hook: here the "token" is the claims' JSON.
    verified = web.Application(
        middlewares=[revocation_middleware(guard, verified_claims=claims_from_header)]
    )
    verified.router.add_get("/", hello)
    app.add_subapp("/verified", verified)
    async with TestClient(TestServer(app)) as client:
        yield client


async def error_code(resp: Any) -> str:
    body = await resp.json()
    assert {"code", "message"} <= set(body["error"])
    code: str = body["error"]["code"]
    return code


class TestAiohttpMiddleware:
    async def test_allowed_session_reaches_the_handler(self, aiohttp_client: TestClient) -> None:
        """A token for a session nobody revoked is served."""
        resp = await aiohttp_client.get("/", headers=bearer(token()))
        assert 200 == resp.status
        assert {"hello": "world"} == await resp.json()

    async def test_revoked_session_is_401_session_revoked(
        self, aiohttp_client: TestClient, redis: FakeRedis
    ) -> None:
        """A revoked session is refused with the documented body and WWW-Authenticate."""
        redis.revoke_session("session_1")
        resp = await aiohttp_client.get("/", headers=bearer(token()))
        assert 401 == resp.status
        assert "session_revoked" == await error_code(resp)
        assert resp.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
        assert "application/json" == resp.content_type

    async def test_user_watermark_refuses_earlier_tokens_only(
        self, aiohttp_client: TestClient, redis: FakeRedis
    ) -> None:
        """After a password reset, tokens issued before it are refused, later ones served."""
        redis.raise_watermark("user", "user_1", T * 1000)
        assert 401 == (await aiohttp_client.get("/", headers=bearer(token(iat=T - 1)))).status
        assert 200 == (await aiohttp_client.get("/", headers=bearer(token(iat=T)))).status

    async def test_cookie_is_read_when_there_is_no_bearer_token(
        self, aiohttp_client: TestClient, redis: FakeRedis
    ) -> None:
        """The configured cookie carries the token just as well."""
        redis.revoke_session("session_1")
        resp = await aiohttp_client.get("/", headers={"Cookie": f"session={token()}"})
        assert 401 == resp.status

    async def test_request_without_a_token_is_left_to_the_app(
        self, aiohttp_client: TestClient, guard: RevocationGuard
    ) -> None:
        """No token, nothing to check: the application's own authentication decides."""
        assert 200 == (await aiohttp_client.get("/")).status
        assert 0 == guard.stats.checks

    @pytest.mark.parametrize("raw", MALFORMED)
    async def test_malformed_token_never_causes_a_500(
        self, aiohttp_client: TestClient, guard: RevocationGuard, raw: str
    ) -> None:
        """An unreadable token names no session; it passes to the app, which refuses it."""
        resp = await aiohttp_client.get("/", headers=bearer(raw))
        assert 200 == resp.status
        assert 0 == guard.stats.checks

    async def test_fail_closed_is_503_not_401(
        self, aiohttp_client: TestClient, redis: FakeRedis
    ) -> None:
        """A Redis outage must not look like a revocation, which would sign the user out."""
        redis.unavailable = RedisConnectionError("down")
        resp = await aiohttp_client.get("/", headers=bearer(token()))
        assert 503 == resp.status
        assert "revocation_check_unavailable" == await error_code(resp)
        assert "Retry-After" in resp.headers

    async def test_verified_claims_callable_supplies_the_claims(
        self, aiohttp_client: TestClient, redis: FakeRedis
    ) -> None:
        """With verified_claims the middleware checks what it returns, not the raw token."""
        redis.revoke_session("session_verified")
        revoked = json.dumps({"sid": "session_verified", "iat": T})
        allowed = json.dumps({"sid": "session_other", "iat": T})
        assert 401 == (await aiohttp_client.get("/verified/", headers=bearer(revoked))).status
        assert 200 == (await aiohttp_client.get("/verified/", headers=bearer(allowed))).status

    async def test_token_the_verifier_refuses_is_left_to_the_app(
        self, aiohttp_client: TestClient, guard: RevocationGuard
    ) -> None:
        """verified_claims returning None means no session to check."""
        assert 200 == (await aiohttp_client.get("/verified/", headers=bearer("refused"))).status
        assert 0 == guard.stats.checks


class TestAiohttpSetup:
    async def test_setup_guard_runs_the_guard_with_the_app(self, redis: FakeRedis) -> None:
        """setup_guard installs the middleware and starts and stops the guard with the app."""
        redis.revoke_session("session_1")
        guard = make_guard(redis)
        app = web.Application()
        app.router.add_get("/", hello)
        setup_guard(app, guard)
        async with TestClient(TestServer(app)) as client:
            assert guard.live
            assert 401 == (await client.get("/", headers=bearer(token()))).status
        assert redis.current.closed


@dataclass
class AsgiCall:
    """One request driven through an ASGI app by hand, as a server would."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    app_called: bool = False

    @property
    def status(self) -> int:
        status: int = self.sent[0]["status"]
        return status

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])

    @property
    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))
        return body


async def call_asgi(
    middleware_options: dict[str, Any],
    headers: list[tuple[bytes, bytes]],
    scope_type: str = "http",
) -> AsgiCall:
    call = AsgiCall()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        call.app_called = True
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b'{"hello": "world"}'})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        call.sent.append(message)

    scope = {"type": scope_type, "path": "/", "headers": headers}
    await RevocationGuardMiddleware(app, **middleware_options)(scope, receive, send)
    return call


class TestAsgiMiddleware:
    async def test_allowed_session_reaches_the_app(self, guard: RevocationGuard) -> None:
        """A token for a session nobody revoked is passed on."""
        call = await call_asgi(
            {"guard": guard}, [(b"authorization", b"Bearer " + token().encode())]
        )
        assert call.app_called
        assert 200 == call.status

    async def test_revoked_session_is_401_session_revoked(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """The refusal carries the JSON body, its length and WWW-Authenticate."""
        redis.revoke_session("session_1")
        call = await call_asgi(
            {"guard": guard}, [(b"authorization", b"Bearer " + token().encode())]
        )
        assert not call.app_called
        assert 401 == call.status
        assert "session_revoked" == call.body["error"]["code"]
        assert b"application/json" == call.headers[b"content-type"]
        assert str(len(call.sent[1]["body"])).encode() == call.headers[b"content-length"]
        assert call.headers[b"www-authenticate"].startswith(b"Bearer ")

    async def test_cookie_across_several_cookie_headers(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """HTTP/2 may split cookies over several headers; the named one is still found."""
        redis.revoke_session("session_1")
        headers = [(b"cookie", b"theme=dark"), (b"cookie", b"session=" + token().encode())]
        call = await call_asgi({"guard": guard, "cookie_name": "session"}, headers)
        assert 401 == call.status

    async def test_verified_claims_callable_supplies_the_claims(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """A synchronous verifier works too."""
        redis.revoke_session("session_verified")

        def verify(raw: str) -> Mapping[str, Any] | None:
            return {"sid": "session_verified", "iat": T} if raw == "good" else None

        options = {"guard": guard, "verified_claims": verify}
        assert 401 == (await call_asgi(options, [(b"authorization", b"Bearer good")])).status
        assert (await call_asgi(options, [(b"authorization", b"Bearer bad")])).app_called

    async def test_fail_closed_is_503(self, guard: RevocationGuard, redis: FakeRedis) -> None:
        """A Redis outage is answered 503 revocation_check_unavailable."""
        redis.unavailable = RedisConnectionError("down")
        call = await call_asgi(
            {"guard": guard}, [(b"authorization", b"Bearer " + token().encode())]
        )
        assert 503 == call.status
        assert "revocation_check_unavailable" == call.body["error"]["code"]

    @pytest.mark.parametrize("raw", [*MALFORMED, "\udcff"])
    async def test_malformed_token_passes_to_the_app(
        self, guard: RevocationGuard, raw: str
    ) -> None:
        """Unreadable tokens (even undecodable header bytes) reach the app; nothing raises."""
        value = b"Bearer " + raw.encode("utf-8", "surrogateescape")
        call = await call_asgi({"guard": guard}, [(b"authorization", value)])
        assert call.app_called

    async def test_revoked_websocket_handshake_is_closed(
        self, guard: RevocationGuard, redis: FakeRedis
    ) -> None:
        """A WebSocket for a revoked session is closed with 1008 before the app sees it."""
        redis.revoke_session("session_1")
        call = await call_asgi(
            {"guard": guard}, [(b"authorization", b"Bearer " + token().encode())], "websocket"
        )
        assert not call.app_called
        assert [{"type": "websocket.close", "code": 1008}] == call.sent

    async def test_lifespan_passes_through_unchecked(self, guard: RevocationGuard) -> None:
        """Only HTTP and WebSocket scopes are checked."""
        call = await call_asgi({"guard": guard}, [], "lifespan")
        assert call.app_called
        assert 0 == guard.stats.checks
