"""aiohttp integration: a middleware that refuses revoked sessions, and a one-call setup.

    app = web.Application()
    setup_guard(app, RevocationGuard.from_url("redis://127.0.0.1:6379/0"))

A request whose bearer token (or ``cookie_name`` cookie) names a revoked session is answered
``401 {"error": {"code": "session_revoked", ...}}`` with ``WWW-Authenticate``; a fail-closed
refusal is ``503 revocation_check_unavailable``. A request without a readable token goes on
to the handler: authenticating it stays the application's job.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from propagator.guard._claims import ClaimsVerifier, bearer_token
from propagator.guard._guard import RevocationGuard
from propagator.guard._http import SessionChecker, refusal

__all__ = ["revocation_middleware", "setup_guard"]


def revocation_middleware(
    guard: RevocationGuard,
    *,
    cookie_name: str | None = None,
    verified_claims: ClaimsVerifier | None = None,
) -> Middleware:
    """A middleware checking each request's session with ``guard``.

    ``verified_claims``, when given, turns the raw token into verified claims (or ``None``
    for a token it refuses); otherwise the JWT's claims are read without verification.
    """
    checker = SessionChecker(guard=guard, verifier=verified_claims)

    @web.middleware
    async def refuse_revoked_sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
        token = bearer_token(request.headers.get("Authorization"))
        if token is None and cookie_name is not None:
            token = request.cookies.get(cookie_name)
        decision = await checker.decide(token)
        if decision is None or decision.allowed:
            return await handler(request)
        status, body, headers = refusal(decision)
        return web.Response(
            status=status, body=body, headers=dict(headers), content_type="application/json"
        )

    return refuse_revoked_sessions


def setup_guard(
    app: web.Application,
    guard: RevocationGuard,
    *,
    cookie_name: str | None = None,
    verified_claims: ClaimsVerifier | None = None,
) -> None:
    """Install the middleware and start and stop ``guard`` with ``app``."""
    app.middlewares.append(
        revocation_middleware(guard, cookie_name=cookie_name, verified_claims=verified_claims)
    )

    async def guard_lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with guard:
            yield

    app.cleanup_ctx.append(guard_lifecycle)
