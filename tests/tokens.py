"""Test-only signing keys, a local JWKS endpoint, and token builders."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec, rsa

ISSUER = "https://idp.example.test"
AUDIENCE = "propagator-rp"
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
SESSION_REVOKED = "https://schemas.openid.net/secevent/caep/event-type/session-revoked"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any

    @classmethod
    def rsa(cls, kid: str | None = None) -> SigningKey:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return cls(kid or uuid.uuid4().hex[:8], "RS256", key)

    @classmethod
    def ec(cls, kid: str | None = None) -> SigningKey:
        return cls(kid or uuid.uuid4().hex[:8], "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.alg)
        public = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**public, "kid": self.kid, "use": "sig", "alg": self.alg}

    def sign(self, claims: dict[str, Any], **header: Any) -> str:
        return jwt.encode(
            claims, self.private, algorithm=self.alg, headers={"kid": self.kid, **header}
        )


@dataclass
class JWKSServer:
    """A local JWKS endpoint whose key set a test can change, counting fetches."""

    keys: list[SigningKey]
    fetches: int = 0
    status: int = 200
    server: TestServer | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/jwks.json"))

    async def _handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response({"keys": [k.jwk() for k in self.keys]})


@asynccontextmanager
async def jwks_server(*keys: SigningKey) -> AsyncIterator[JWKSServer]:
    state = JWKSServer(list(keys))
    app = web.Application()
    app.router.add_get("/jwks.json", state._handle)
    state.server = TestServer(app)
    await state.server.start_server()
    try:
        yield state
    finally:
        await state.server.close()


def logout_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "248289761001",
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 120,
        "jti": uuid.uuid4().hex,
        "sid": "08a5019c-17e1-4977-8f42-65a12843ea02",
        "events": {LOGOUT_EVENT: {}},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def set_claims(sub_id: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "jti": uuid.uuid4().hex,
        "iat": int(time.time()),
        "aud": AUDIENCE,
        "txn": "8675309",
        "sub_id": sub_id or {"format": "opaque", "id": "dMTlD|1600802906337.16|16008.16"},
        "events": {SESSION_REVOKED: {"event_timestamp": 1615304991}},
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}
