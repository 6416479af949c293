"""ASGI integration (Starlette, FastAPI, or any ASGI 3 app): a middleware refusing revoked sessions.

    guard = RevocationGuard.from_url("redis://127.0.0.1:6379/0")
    app = FastAPI(lifespan=guard.lifespan)
    app.add_middleware(RevocationGuardMiddleware, guard=guard)

HTTP requests whose bearer token (or ``cookie_name`` cookie) names a revoked session are
answered ``401 {"error": {"code": "session_revoked", ...}}`` with ``WWW-Authenticate``; a
fail-closed refusal is ``503 revocation_check_unavailable``. A WebSocket handshake for such a
session is closed with code 1008 (policy violation) before it is accepted. Requests without a
readable token, and lifespan events, pass through untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, TypeAlias

from propagator.guard._claims import ClaimsVerifier, bearer_token, cookie_value
from propagator.guard._guard import RevocationGuard
from propagator.guard._http import SessionChecker, refusal

__all__ = ["RevocationGuardMiddleware"]

Scope: TypeAlias = MutableMapping[str, Any]
Message: TypeAlias = MutableMapping[str, Any]
Receive: TypeAlias = Callable[[], Awaitable[Message]]
Send: TypeAlias = Callable[[Message], Awaitable[None]]
ASGIApp: TypeAlias = Callable[[Scope, Receive, Send], Awaitable[None]]

_POLICY_VIOLATION = 1008


class RevocationGuardMiddleware:
    """Wraps an ASGI app; checks each HTTP request's and WebSocket handshake's session."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        guard: RevocationGuard,
        cookie_name: str | None = None,
        verified_claims: ClaimsVerifier | None = None,
    ) -> None:
        self._app = app
        self._cookie_name = cookie_name
        self._checker = SessionChecker(guard=guard, verifier=verified_claims)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        decision = await self._checker.decide(self._token(scope.get("headers") or ()))
        if decision is None or decision.allowed:
            await self._app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": _POLICY_VIOLATION})
        else:
            status, body, headers = refusal(decision)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        *((name.lower().encode(), value.encode()) for name, value in headers),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

    def _token(self, raw_headers: Iterable[tuple[bytes, bytes]]) -> str | None:
        authorization: str | None = None
        cookies: list[str] = []
        for name, value in raw_headers:
            # latin-1 maps every byte, so no header value can make decoding fail.
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"cookie":
                cookies.append(value.decode("latin-1"))
        token = bearer_token(authorization)
        if token is None and self._cookie_name is not None and cookies:
            token = cookie_value("; ".join(cookies), self._cookie_name)
        return token
