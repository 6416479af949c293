"""The downstream guard: refuse revoked sessions at an application's boundary.

Install with ``pip install 'propagator[guard]'``. This package needs only ``redis`` and the
standard library; the aiohttp and ASGI middlewares live in ``propagator.guard.aiohttp`` and
``propagator.guard.asgi`` and import their framework only when imported themselves.

    guard = RevocationGuard.from_url("redis://127.0.0.1:6379/0")
    async with guard:
        decision = await guard.check(claims["sid"], claims["sub"], claims.get("org_id"),
                                     issued_at=claims["iat"])
        if not decision.allowed:
            ...  # 401 when decision.revoked, else 503 (fail-closed)
"""

from propagator.guard._blocking import BlockingRevocationGuard
from propagator.guard._claims import Claims, ClaimsVerifier, bearer_token
from propagator.guard._contract import DEFAULT_PREFIX, DenylistKeys
from propagator.guard._decision import Decision, Reason
from propagator.guard._guard import GuardStats, RevocationGuard

__all__ = [
    "DEFAULT_PREFIX",
    "BlockingRevocationGuard",
    "Claims",
    "ClaimsVerifier",
    "Decision",
    "DenylistKeys",
    "GuardStats",
    "Reason",
    "RevocationGuard",
    "bearer_token",
]
