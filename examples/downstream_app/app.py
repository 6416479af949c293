"""A downstream aiohttp service protected by the revocation guard.

The service authenticates its own users with HS256 JWTs carrying WorkOS's claims (``sid``,
``sub``, ``org_id``, ``iat``); that stays its job. The guard adds one thing: a token whose
session was revoked (or whose user or organization was, after it was issued) is refused with
401 ``session_revoked`` within milliseconds of the identity provider's webhook, long before
the token would expire.

Run it next to ``make run`` (same Redis, same key prefix)::

    export DOWNSTREAM_JWT_SECRET=$(openssl rand -hex 32)
    .venv/bin/python -m examples.downstream_app &
    TOKEN=$(.venv/bin/python -m examples.downstream_app token session_demo user_demo)
    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8090/me          # 200
    .venv/bin/propagator send-sample --session-id session_demo
    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8090/me          # 401 session_revoked
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import jwt
from aiohttp import web

from propagator.guard import RevocationGuard, bearer_token
from propagator.guard.aiohttp import setup_guard

_CLAIMS_REQUIRED = ["sid", "sub", "iat", "exp"]


def mint_token(
    secret: str,
    *,
    session_id: str,
    user_id: str,
    organization_id: str | None = None,
    issued_at: int | None = None,
    lifetime_s: int = 3600,
) -> str:
    """A token as the identity provider would issue it, for trying the example out."""
    iat = int(time.time()) if issued_at is None else issued_at
    claims: dict[str, Any] = {"sid": session_id, "sub": user_id, "iat": iat}
    claims["exp"] = iat + lifetime_s
    if organization_id is not None:
        claims["org_id"] = organization_id
    return jwt.encode(claims, secret, algorithm="HS256")


def create_app(*, guard: RevocationGuard, jwt_secret: str) -> web.Application:
    """The service: ``GET /me`` for signed-in users, ``GET /healthz`` for anyone."""

    def verified_claims(token: str) -> Mapping[str, Any] | None:
        try:
            claims: dict[str, Any] = jwt.decode(
                token, jwt_secret, algorithms=["HS256"], options={"require": _CLAIMS_REQUIRED}
            )
        except jwt.InvalidTokenError:
            return None
        return claims

    async def me(request: web.Request) -> web.Response:
        # The service's own authentication: the guard only ever refuses, it never admits.
        token = bearer_token(request.headers.get("Authorization"))
        claims = verified_claims(token) if token else None
        if claims is None:
            return web.json_response(
                {"error": {"code": "unauthenticated", "message": "a valid token is required"}},
                status=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return web.json_response(
            {"user": claims["sub"], "session": claims["sid"], "organization": claims.get("org_id")}
        )

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_get("/me", me)
    app.router.add_get("/healthz", healthz)
    setup_guard(app, guard, verified_claims=verified_claims)
    return app
