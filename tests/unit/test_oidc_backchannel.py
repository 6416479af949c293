"""OIDC Back-Channel Logout: every §2.6 validation rule, accepted and refused."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

import aiohttp
import pytest

from propagator.errors import KeysUnavailable, MalformedPayload, TokenInvalid
from propagator.sources import Delivery
from propagator.sources._jwt import JWKSCache
from propagator.sources.oidc_backchannel import OIDCBackchannelSource
from schemas import RevocationEvent, RevocationScope
from tests.tokens import AUDIENCE, ISSUER, JWKSServer, SigningKey, jwks_server, logout_claims

FORM = "application/x-www-form-urlencoded"


@dataclass
class Env:
    source: OIDCBackchannelSource
    key: SigningKey
    jwks: JWKSServer
    cache: JWKSCache


@pytest.fixture(scope="module")
def key() -> SigningKey:
    return SigningKey.rsa("k1")


@pytest.fixture
async def env(key: SigningKey) -> AsyncIterator[Env]:
    async with jwks_server(key) as jwks, aiohttp.ClientSession() as http:
        cache = JWKSCache(http=http, uri=jwks.uri, min_refresh_interval_s=60)
        source = OIDCBackchannelSource(
            name="keycloak", issuer=ISSUER, audience=AUDIENCE, keys=cache
        )
        yield Env(source, key, jwks, cache)


def delivery(
    token: str | None, *, content_type: str = FORM, extra: dict[str, str] | None = None
) -> Delivery:
    form = {**({"logout_token": token} if token is not None else {}), **(extra or {})}
    return Delivery(
        method="POST",
        headers={},
        body=urlencode(form).encode(),
        content_type=content_type,
        received_at=datetime.now(UTC),
    )


async def receive(env: Env, token: str, **kw: object) -> RevocationEvent:
    [event] = await env.source.receive(delivery(token, **kw))  # type: ignore[arg-type]
    assert isinstance(event, RevocationEvent)
    return event


class TestAccepted:
    async def test_token_with_sid_is_session_scope(self, env: Env) -> None:
        """The spec's example token (sid and sub) revokes that session; jti is the event id."""
        claims = logout_claims()
        event = await receive(env, env.key.sign(claims))
        assert RevocationScope.SESSION == event.scope
        assert claims["sid"] == event.session_id
        assert claims["sub"] == event.user_id
        assert claims["jti"] == event.event_id
        assert datetime.fromtimestamp(claims["iat"], tz=UTC) == event.occurred_at
        assert "oidc-backchannel" == event.source_kind

    async def test_token_with_only_sub_is_user_scope(self, env: Env) -> None:
        """Without sid, every session of iss+sub is logged out."""
        event = await receive(env, env.key.sign(logout_claims(sid=None)))
        assert RevocationScope.USER == event.scope
        assert "248289761001" == event.user_id

    async def test_other_form_values_are_ignored(self, env: Env) -> None:
        """§2.5: other form values MUST be ignored."""
        await receive(env, env.key.sign(logout_claims()), extra={"state": "x"})

    async def test_typ_logout_jwt_is_optional(self, env: Env) -> None:
        """Requiring typ would break deployments; with or without it the token passes."""
        await receive(env, env.key.sign(logout_claims(), typ="logout+jwt"))
        await receive(env, env.key.sign(logout_claims(), typ="JWT"))

    async def test_audience_list_containing_ours(self, env: Env) -> None:
        """aud may be a list that includes this RP."""
        await receive(env, env.key.sign(logout_claims(aud=["other", AUDIENCE])))

    async def test_ec_keys_work(self, env: Env) -> None:
        """ES256 from the allow-list verifies against an EC key in the JWKS."""
        ec_key = SigningKey.ec("ec1")
        env.jwks.keys.append(ec_key)
        await receive(env, ec_key.sign(logout_claims()))


class TestRefused:
    @pytest.mark.parametrize(
        ("overrides", "code"),
        [
            ({"iss": "https://evil.example"}, "invalid_issuer"),
            ({"aud": "someone-else"}, "invalid_audience"),
            ({"exp": int(time.time()) - 3600}, "token_expired"),
            ({"exp": None}, "missing_claim"),
            ({"iat": None}, "missing_claim"),
            ({"jti": None}, "missing_claim"),
            ({"iat": int(time.time()) + 3600}, "token_not_yet_valid"),
            ({"events": None}, "invalid_events"),
            ({"events": {"http://schemas.openid.net/event/other": {}}}, "invalid_events"),
            (
                {"events": {"http://schemas.openid.net/event/backchannel-logout": "yes"}},
                "invalid_events",
            ),
            ({"nonce": "n-0S6_WzA2Mj"}, "nonce_present"),
            ({"sid": None, "sub": None}, "missing_subject"),
            ({"sid": ""}, "invalid_subject"),
            ({"sub": 42}, "invalid_subject"),
        ],
    )
    async def test_claim_rules(self, env: Env, overrides: dict[str, object], code: str) -> None:
        """Each §2.4/§2.6 claim rule refuses its violation with a precise code."""
        with pytest.raises(TokenInvalid) as refused:
            await receive(env, env.key.sign(logout_claims(**overrides)))
        assert code == refused.value.code

    async def test_alg_none_is_refused(self, env: Env) -> None:
        """An unsigned token is never accepted."""
        token = jwt_none(logout_claims())
        with pytest.raises(TokenInvalid) as refused:
            await receive(env, token)
        assert "unsupported_algorithm" == refused.value.code

    async def test_hs256_is_outside_the_allow_list(self, env: Env) -> None:
        """Shared-secret HS256 (the algorithm-confusion vector) is not in the allow-list."""
        import jwt as pyjwt

        token = pyjwt.encode(logout_claims(), "s" * 64, algorithm="HS256", headers={"kid": "k1"})
        with pytest.raises(TokenInvalid) as refused:
            await receive(env, token)
        assert "unsupported_algorithm" == refused.value.code

    async def test_token_signed_by_another_key_with_our_kid_is_refused(self, env: Env) -> None:
        """A forged signature under a known kid fails verification."""
        forger = SigningKey.rsa("k1")
        with pytest.raises(TokenInvalid) as refused:
            await receive(env, forger.sign(logout_claims()))
        assert "invalid_signature" == refused.value.code

    @pytest.mark.parametrize("token", ["", "abc", "a.b.c", "e30.e30.", "😀"])
    async def test_garbage_tokens(self, env: Env, token: str) -> None:
        """Strings that are not JWS are refused as malformed, never a crash."""
        with pytest.raises((TokenInvalid, MalformedPayload)):
            await receive(env, token)

    async def test_wrong_content_type(self, env: Env) -> None:
        """§2.5: the token comes form-encoded."""
        with pytest.raises(MalformedPayload):
            await receive(env, env.key.sign(logout_claims()), content_type="application/json")

    async def test_missing_or_repeated_logout_token(self, env: Env) -> None:
        """Exactly one logout_token."""
        with pytest.raises(MalformedPayload):
            await env.source.receive(delivery(None))
        body = urlencode([("logout_token", "a"), ("logout_token", "b")]).encode()
        twice = Delivery("POST", {}, body, FORM, datetime.now(UTC))
        with pytest.raises(MalformedPayload):
            await env.source.receive(twice)


class TestKeys:
    async def test_keys_are_cached(self, env: Env) -> None:
        """Three tokens, one JWKS fetch."""
        for _ in range(3):
            await receive(env, env.key.sign(logout_claims()))
        assert 1 == env.jwks.fetches

    async def test_rotated_key_is_found_by_refetch(self, key: SigningKey) -> None:
        """A token with a new kid triggers one refetch, then verifies."""
        now = [1000.0]
        async with jwks_server(key) as jwks, aiohttp.ClientSession() as http:
            cache = JWKSCache(
                http=http, uri=jwks.uri, min_refresh_interval_s=60, clock=lambda: now[0]
            )
            source = OIDCBackchannelSource(name="k", issuer=ISSUER, audience=AUDIENCE, keys=cache)
            env = Env(source, key, jwks, cache)
            await receive(env, env.key.sign(logout_claims()))
            rotated = SigningKey.rsa("k2")
            jwks.keys = [rotated]
            now[0] += 61
            await receive(env, rotated.sign(logout_claims()))
            assert 2 == jwks.fetches

    async def test_unknown_kid_refetch_is_rate_limited(self, key: SigningKey) -> None:
        """A flood of made-up kids causes at most one refetch per interval."""
        now = [1000.0]
        async with jwks_server(key) as jwks, aiohttp.ClientSession() as http:
            cache = JWKSCache(
                http=http, uri=jwks.uri, min_refresh_interval_s=60, clock=lambda: now[0]
            )
            source = OIDCBackchannelSource(name="k", issuer=ISSUER, audience=AUDIENCE, keys=cache)
            await source.receive(delivery(key.sign(logout_claims())))
            stranger = SigningKey.rsa("made-up")
            now[0] += 61
            for _ in range(20):
                with pytest.raises(TokenInvalid) as refused:
                    await source.receive(delivery(stranger.sign(logout_claims())))
                assert "unknown_key" == refused.value.code
            assert 2 == jwks.fetches
            now[0] += 61
            with pytest.raises(TokenInvalid):
                await source.receive(delivery(stranger.sign(logout_claims())))
            assert 3 == jwks.fetches

    async def test_unreachable_jwks_is_a_dependency_failure(self, key: SigningKey) -> None:
        """With no keys at all, the sender is told to retry (503), not that it is wrong."""
        async with jwks_server(key) as jwks, aiohttp.ClientSession() as http:
            jwks.status = 500
            cache = JWKSCache(http=http, uri=jwks.uri)
            source = OIDCBackchannelSource(name="k", issuer=ISSUER, audience=AUDIENCE, keys=cache)
            with pytest.raises(KeysUnavailable):
                await source.receive(delivery(key.sign(logout_claims())))

    async def test_none_can_never_be_allowed(self, env: Env) -> None:
        """Configuring 'none' as an algorithm is refused at start-up."""
        with pytest.raises(ValueError, match="none"):
            OIDCBackchannelSource(
                name="x", issuer=ISSUER, audience=AUDIENCE, keys=env.cache, algorithms=["none"]
            )


class TestAnswers:
    async def test_errors_are_400_invalid_request_no_store(self, env: Env) -> None:
        """§2.8: 400 with error=invalid_request and Cache-Control: no-store."""
        reply = env.source.reply_error(TokenInvalid("bad", code="invalid_audience"))
        assert 400 == reply.status
        assert {
            "error": "invalid_request",
            "error_description": "bad",
            "code": "invalid_audience",
        } == reply.body
        assert "no-store" == reply.headers["Cache-Control"]

    async def test_success_is_200_no_store(self, env: Env) -> None:
        """Success is a bare 200 with no-store."""
        reply = env.source.reply([])
        assert (200, None, "no-store") == (reply.status, reply.body, reply.headers["Cache-Control"])


def jwt_none(claims: dict[str, object]) -> str:
    import base64
    import json

    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."
