"""Signed-JWT verification for the token-based kinds (OIDC Back-Channel Logout, SSF/CAEP).

Keys come from the issuer's JWKS, fetched with the shared aiohttp session, cached, and
refetched when a token names an unknown ``kid`` — at most once per ``min_refresh_interval_s``,
so a flood of tokens with made-up key ids cannot turn into a flood of fetches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import aiohttp
import jwt
import structlog

from propagator.errors import KeysUnavailable, TokenInvalid

_log = structlog.get_logger(__name__)

# Asymmetric algorithms only: a shared-secret HS256 token cannot be told from a forgery
# made with a leaked client secret, and allowing it invites algorithm-confusion attacks.
DEFAULT_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


def allow_list(algorithms: Sequence[str]) -> tuple[str, ...]:
    """The algorithms a token may use; 'none' is refused at start-up, never at run time."""
    if any(a.lower() == "none" for a in algorithms):
        raise ValueError("'none' can never be an allowed algorithm")
    return tuple(algorithms)


class JWKSConfig(Protocol):
    @property
    def jwks_uri(self) -> str: ...
    @property
    def jwks_max_age_s(self) -> float: ...
    @property
    def jwks_min_refresh_interval_s(self) -> float: ...


class JWKSCache:
    """An issuer's signing keys, fetched from ``uri`` and kept for ``max_age_s``."""

    def __init__(
        self,
        *,
        http: aiohttp.ClientSession,
        uri: str,
        max_age_s: float = 3600.0,
        min_refresh_interval_s: float = 30.0,
        timeout_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if min_refresh_interval_s < 0 or max_age_s <= 0:
            raise ValueError("intervals must be positive")
        self._http = http
        self._uri = uri
        self._max_age_s = max_age_s
        self._min_refresh_interval_s = min_refresh_interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._keys: list[jwt.PyJWK] = []
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def key_for(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key that signed a token, refetching once (rate-limited) for an unknown kid."""
        if self._fetched_at is None or self._clock() - self._fetched_at > self._max_age_s:
            await self._refresh(force=self._fetched_at is None)
        key = self._find(kid, alg)
        if key is None and await self._refresh(force=False):
            key = self._find(kid, alg)
        if key is None:
            raise TokenInvalid(f"no signing key with kid {kid!r} for {alg}", code="unknown_key")
        return key

    @classmethod
    def from_config(cls, config: JWKSConfig, *, http: aiohttp.ClientSession) -> JWKSCache:
        return cls(
            http=http,
            uri=config.jwks_uri,
            max_age_s=config.jwks_max_age_s,
            min_refresh_interval_s=config.jwks_min_refresh_interval_s,
        )

    def _find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        usable = [
            k
            for k in self._keys
            if k.public_key_use in (None, "sig") and (k.algorithm_name in (alg, None))
        ]
        if kid is None:
            # Without a kid, only an unambiguous single key may be used.
            return usable[0] if len(usable) == 1 else None
        return next((k for k in usable if k.key_id == kid), None)

    async def _refresh(self, *, force: bool) -> bool:
        """Fetch the JWKS unless one was attempted too recently; True when keys were replaced."""
        async with self._lock:
            now = self._clock()
            if (
                not force
                and self._attempted_at is not None
                and now - self._attempted_at < self._min_refresh_interval_s
            ):
                return False
            self._attempted_at = now
            self.fetches += 1
            try:
                keys = await self._fetch()
            except KeysUnavailable as exc:
                return self._keep_old_keys(exc)
            self._keys = keys
            self._fetched_at = now
            return True

    async def _fetch(self) -> list[jwt.PyJWK]:
        try:
            async with self._http.get(self._uri, timeout=self._timeout) as resp:
                status = resp.status
                document = await resp.json(content_type=None) if status == 200 else None
            if document is None:
                raise KeysUnavailable(f"the JWKS endpoint answered {status}")
            return list(jwt.PyJWKSet.from_dict(document).keys)
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWTError) as exc:
            raise KeysUnavailable(f"cannot fetch the JWKS: {type(exc).__name__}") from exc

    def _keep_old_keys(self, error: KeysUnavailable) -> bool:
        if not self._keys:
            raise error
        _log.warning("jwks.refresh_failed", uri=self._uri, error=error.message)
        return False


_PYJWT_CODES: list[tuple[type[jwt.PyJWTError], str]] = [
    (jwt.ExpiredSignatureError, "token_expired"),
    (jwt.ImmatureSignatureError, "token_not_yet_valid"),
    (jwt.InvalidAudienceError, "invalid_audience"),
    (jwt.InvalidIssuerError, "invalid_issuer"),
    (jwt.InvalidSignatureError, "invalid_signature"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidAlgorithmError, "unsupported_algorithm"),
    (jwt.InvalidIssuedAtError, "invalid_iat"),
    (jwt.exceptions.InvalidSubjectError, "invalid_subject"),
    (jwt.exceptions.InvalidJTIError, "invalid_claims"),
    (jwt.DecodeError, "malformed_token"),
]


async def verify_token(
    token: str,
    *,
    keys: JWKSCache,
    issuer: str,
    audience: str | Sequence[str],
    algorithms: Sequence[str],
    required: Sequence[str],
    leeway_s: float,
    expected_typ: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The verified claims of a compact JWS, or TokenInvalid with a precise code."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenInvalid("not a compact JWS", code="malformed_token") from exc
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none" or alg not in algorithms:
        raise TokenInvalid(f"algorithm {alg!r} is not allowed", code="unsupported_algorithm")
    if expected_typ is not None:
        typ = header.get("typ")
        if not isinstance(typ, str) or typ.lower() not in expected_typ:
            raise TokenInvalid(f"header typ {typ!r} is not {expected_typ[0]}", code="invalid_type")
    kid = header.get("kid")
    key = await keys.key_for(kid if isinstance(kid, str) else None, alg)
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[alg],
            audience=list(audience) if not isinstance(audience, str) else audience,
            issuer=issuer,
            leeway=leeway_s,
            options={"require": list(required)},
        )
    except jwt.PyJWTError as exc:
        code = next((c for cls, c in _PYJWT_CODES if isinstance(exc, cls)), "invalid_token")
        raise TokenInvalid(f"token refused: {exc}", code=code) from exc
    return claims
