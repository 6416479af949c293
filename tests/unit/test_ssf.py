"""SSF / CAEP session-revoked SETs pushed per RFC 8935."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from propagator.errors import MalformedPayload, TokenInvalid, Unauthorized
from propagator.sources import Delivery, Ignored
from propagator.sources._jwt import JWKSCache
from propagator.sources.ssf import SSFSource
from schemas import RevocationEvent, RevocationScope
from tests.tokens import AUDIENCE, ISSUER, SESSION_REVOKED, SigningKey, jwks_server, set_claims

KEY = SigningKey.rsa("ssf1")


@pytest.fixture
async def source() -> AsyncIterator[SSFSource]:
    async with jwks_server(KEY) as jwks, aiohttp.ClientSession() as http:
        yield SSFSource(
            name="caep",
            issuer=ISSUER,
            audience=AUDIENCE,
            keys=JWKSCache(http=http, uri=jwks.uri),
            authorization="Bearer stream-token",
        )


def push(
    token: str, *, auth: str = "Bearer stream-token", content_type: str = "application/secevent+jwt"
) -> Delivery:
    return Delivery(
        "POST", {"Authorization": auth}, token.encode(), content_type, datetime.now(UTC)
    )


def sign(claims: dict[str, Any], typ: str = "secevent+jwt") -> str:
    return KEY.sign(claims, typ=typ)


async def one(source: SSFSource, delivery: Delivery) -> RevocationEvent:
    [event] = await source.receive(delivery)
    assert isinstance(event, RevocationEvent)
    return event


class TestSubjects:
    async def test_spec_example_opaque_subject_is_session_scope(self, source: SSFSource) -> None:
        """The CAEP spec's example: an opaque subject, the session, with event_timestamp."""
        claims = set_claims()
        event = await one(source, push(sign(claims)))
        assert RevocationScope.SESSION == event.scope
        assert "dMTlD|1600802906337.16|16008.16" == event.session_id
        assert claims["jti"] == event.event_id
        assert datetime.fromtimestamp(1615304991, tz=UTC) == event.occurred_at
        assert SESSION_REVOKED == event.type

    @pytest.mark.parametrize(
        ("sub_id", "scope", "session", "user", "org"),
        [
            (
                {"format": "email", "email": "user@example.com"},
                RevocationScope.USER,
                None,
                "user@example.com",
                None,
            ),
            (
                {"format": "iss_sub", "iss": ISSUER, "sub": "u-1"},
                RevocationScope.USER,
                None,
                "u-1",
                None,
            ),
            (
                {"format": "account", "uri": "acct:u@example.com"},
                RevocationScope.USER,
                None,
                "acct:u@example.com",
                None,
            ),
            (
                {
                    "format": "complex",
                    "session": {"format": "opaque", "id": "s-1"},
                    "user": {"format": "iss_sub", "iss": ISSUER, "sub": "u-1"},
                    "tenant": {"format": "opaque", "id": "123456789"},
                },
                RevocationScope.SESSION,
                "s-1",
                "u-1",
                "123456789",
            ),
            (
                {
                    "format": "complex",
                    "user": {"format": "email", "email": "a@b.c"},
                    "device": {"format": "opaque", "id": "d"},
                },
                RevocationScope.USER,
                None,
                "a@b.c",
                None,
            ),
        ],
    )
    async def test_subject_formats(
        self,
        source: SSFSource,
        sub_id: dict[str, Any],
        scope: RevocationScope,
        session: str | None,
        user: str | None,
        org: str | None,
    ) -> None:
        """opaque, email, iss_sub, account and complex subjects map to their scope."""
        event = await one(source, push(sign(set_claims(sub_id))))
        assert (scope, session, user, org) == (
            event.scope,
            event.session_id,
            event.user_id,
            event.organization_id,
        )

    @pytest.mark.parametrize(
        "sub_id",
        [
            {"format": "phone_number", "phone_number": "+1"},
            {"format": "complex", "device": {"format": "opaque", "id": "d"}},
            {"format": "opaque"},
            "not-an-object",
        ],
    )
    async def test_unusable_subjects_are_refused(self, source: SSFSource, sub_id: Any) -> None:
        """A subject that names no session or user cannot be propagated."""
        with pytest.raises(TokenInvalid) as refused:
            await source.receive(push(sign(set_claims(sub_id=None) | {"sub_id": sub_id})))
        assert "invalid_subject" == refused.value.code

    async def test_other_event_types_are_acknowledged(self, source: SSFSource) -> None:
        """A credential-change SET is verified and ignored, still 202."""
        claims = set_claims(
            events={"https://schemas.openid.net/secevent/caep/event-type/credential-change": {}}
        )
        [outcome] = await source.receive(push(sign(claims)))
        assert isinstance(outcome, Ignored)


class TestRefused:
    @pytest.mark.parametrize(
        ("claims", "code"),
        [
            (set_claims(iss="https://other.example"), "invalid_issuer"),
            (set_claims(aud="https://other.example/caep"), "invalid_audience"),
            (set_claims(events={}), "invalid_events"),
            (set_claims(events=None), "invalid_events"),
            (set_claims(jti=None), "missing_claim"),
        ],
    )
    async def test_claims(self, source: SSFSource, claims: dict[str, Any], code: str) -> None:
        """iss, aud, events and jti are checked."""
        with pytest.raises(TokenInvalid) as refused:
            await source.receive(push(sign(claims)))
        assert code == refused.value.code

    @pytest.mark.parametrize("typ", ["JWT", "logout+jwt"])
    async def test_typ_must_be_secevent(self, source: SSFSource, typ: str) -> None:
        """A token of another type is not a SET, even when correctly signed."""
        with pytest.raises(TokenInvalid) as refused:
            await source.receive(push(sign(set_claims(), typ=typ)))
        assert "invalid_type" == refused.value.code

    async def test_application_prefixed_typ_is_accepted(self, source: SSFSource) -> None:
        """RFC 8417 allows the full media type in typ."""
        await one(source, push(sign(set_claims(), typ="application/secevent+jwt")))

    async def test_wrong_authorization_is_refused_first(self, source: SSFSource) -> None:
        """The stream's Authorization value is required before anything else is looked at."""
        with pytest.raises(Unauthorized):
            await source.receive(push("garbage", auth="Bearer wrong"))

    async def test_wrong_content_type(self, source: SSFSource) -> None:
        """RFC 8935: the body is application/secevent+jwt."""
        with pytest.raises(MalformedPayload):
            await source.receive(push(sign(set_claims()), content_type="application/json"))


class TestAnswers:
    async def test_success_is_202_without_body(self, source: SSFSource) -> None:
        """RFC 8935: 202 Accepted."""
        assert (202, None) == (source.reply([]).status, source.reply([]).body)

    @pytest.mark.parametrize(
        ("error", "status", "err"),
        [
            (TokenInvalid("x", code="invalid_issuer"), 400, "invalid_issuer"),
            (TokenInvalid("x", code="invalid_audience"), 400, "invalid_audience"),
            (TokenInvalid("x", code="unknown_key"), 400, "invalid_key"),
            (TokenInvalid("x", code="invalid_signature"), 400, "invalid_key"),
            (TokenInvalid("x", code="token_expired"), 400, "invalid_request"),
            (MalformedPayload("x"), 400, "invalid_request"),
            (Unauthorized("x"), 401, "authentication_failed"),
        ],
    )
    def test_errors_use_the_iana_codes(
        self, source: SSFSource, error: Exception, status: int, err: str
    ) -> None:
        """Errors are {"err", "description"} with the registry's codes."""
        reply = source.reply_error(error)  # type: ignore[arg-type]
        assert status == reply.status
        assert {"err": err, "description": "x"} == reply.body
