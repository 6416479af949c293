"""Okta event hooks and the generic HMAC source."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from propagator.errors import (
    MalformedPayload,
    SignatureInvalid,
    TimestampOutOfTolerance,
    Unauthorized,
)
from propagator.sources import Delivery, HMACConfig, Ignored
from propagator.sources.generic_hmac import HMACSource, HMACVerifier
from propagator.sources.okta import OktaSource
from schemas import RevocationEvent, RevocationScope

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def okta_event(
    event_type: str, uuid: str, user: str = "00u1", as_actor: bool = False
) -> dict[str, object]:
    principal = {"id": user, "type": "User", "alternateId": "a@b.c"}
    event: dict[str, object] = {
        "uuid": uuid,
        "published": "2026-12-03T11:59:00.000Z",
        "eventType": event_type,
        "actor": principal if as_actor else {"id": "admin", "type": "User"},
    }
    if not as_actor:
        event["target"] = [{"id": "app1", "type": "AppInstance"}, principal]
    return event


def okta_delivery(events: list[dict[str, object]], auth: str = "hook-secret") -> Delivery:
    body = json.dumps(
        {"eventType": "com.okta.event_hook", "eventId": "e", "data": {"events": events}}
    ).encode()
    return Delivery("POST", {"Authorization": auth}, body, "application/json", NOW)


class TestOkta:
    source = OktaSource(
        name="okta",
        authorization=["old-secret", "hook-secret"],
        event_types=["user.session.clear", "user.session.end", "user.lifecycle.deactivate"],
    )

    async def test_batch_publishes_each_mapped_event(self) -> None:
        """A batch with a clear, an end by the user, and an unrelated event."""
        outcomes = await self.source.receive(
            okta_delivery(
                [
                    okta_event("user.session.clear", "u1", user="00uA"),
                    okta_event("user.session.end", "u2", user="00uB", as_actor=True),
                    okta_event("user.account.update_profile", "u3"),
                ]
            )
        )
        first, second, third = outcomes
        assert isinstance(first, RevocationEvent)
        assert isinstance(second, RevocationEvent)
        assert (RevocationScope.USER, "00uA", "u1") == (first.scope, first.user_id, first.event_id)
        assert "00uB" == second.user_id
        assert Ignored(event_id="u3", type="user.account.update_profile") == third
        assert datetime(2026, 12, 3, 11, 59, tzinfo=UTC) == first.occurred_at

    @pytest.mark.parametrize("auth", ["", "hook-secre", "hook-secret ", "Bearer hook-secret"])
    async def test_wrong_authorization_is_401(self, auth: str) -> None:
        """Only the exact configured value passes."""
        with pytest.raises(Unauthorized):
            await self.source.receive(
                okta_delivery([okta_event("user.session.clear", "u1")], auth=auth)
            )

    async def test_rotated_value_passes(self) -> None:
        """Either active value is accepted."""
        await self.source.receive(
            okta_delivery([okta_event("user.session.clear", "u1")], auth="old-secret")
        )

    def test_verification_challenge_is_echoed(self) -> None:
        """The one-time GET answers {"verification": <header value>}."""
        delivery = Delivery(
            "GET",
            {"Authorization": "hook-secret", "x-okta-verification-challenge": "abc"},
            b"",
            "",
            NOW,
        )
        reply = self.source.challenge(delivery)
        assert reply is not None
        assert (200, {"verification": "abc"}) == (reply.status, reply.body)

    def test_challenge_needs_the_authorization_too(self) -> None:
        """An unauthenticated caller cannot use the handshake as an echo service."""
        delivery = Delivery("GET", {"x-okta-verification-challenge": "abc"}, b"", "", NOW)
        with pytest.raises(Unauthorized):
            self.source.challenge(delivery)

    @pytest.mark.parametrize(
        "events",
        [
            [],
            [{"uuid": "x"}],
            ["not-an-object"],
            [okta_event("user.session.clear", "u") | {"published": "yesterday"}],
            [okta_event("user.session.clear", "u") | {"target": [], "actor": {"type": "Client"}}],
        ],
    )
    async def test_malformed_batches(self, events: list[object]) -> None:
        """Empty batches, events without uuid, times or a user are 400s."""
        with pytest.raises(MalformedPayload):
            await self.source.receive(okta_delivery(events))  # type: ignore[arg-type]


def hmac_source(**overrides: object) -> HMACSource:
    fields: dict[str, object] = {
        "name": "inhouse",
        "kind": "hmac",
        "secrets": ["k3y"],
        "signature_header": "X-Hub-Signature-256",
        "signature_prefix": "sha256=",
        "event_types": {
            "session.killed": {"scope": "session", "session_id": "session", "user_id": "user"}
        },
    }
    fields.update(overrides)
    config = HMACConfig.model_validate(fields)
    verifier = HMACVerifier(config=config, secrets=[b"k3y"], clock=lambda: NOW.timestamp())
    return HMACSource(name="inhouse", config=config, verifier=verifier)


BODY = b'{"id": "evt-1", "type": "session.killed", "session": "s-1", "user": "u-1"}'


class TestGenericHMAC:
    async def test_github_style_signature(self) -> None:
        """sha256=<hex> of the raw body, GitHub-style."""
        source = hmac_source()
        signature = source._verifier.sign(b"k3y", BODY)
        [event] = await source.receive(
            Delivery("POST", {"X-Hub-Signature-256": signature}, BODY, "application/json", NOW)
        )
        assert isinstance(event, RevocationEvent)
        assert ("evt-1", "s-1", "u-1") == (event.event_id, event.session_id, event.user_id)

    async def test_timestamped_base64_template(self) -> None:
        """'{timestamp}.{body}' in base64 with a timestamp header and tolerance."""
        source = hmac_source(
            signed_content="{timestamp}.{body}",
            timestamp_header="X-Ts",
            encoding="base64",
            signature_prefix="",
        )
        ts = str(int(NOW.timestamp()))
        signature = source._verifier.sign(b"k3y", BODY, ts)
        headers = {"X-Hub-Signature-256": signature, "X-Ts": ts}
        [event] = await source.receive(Delivery("POST", headers, BODY, "application/json", NOW))
        assert isinstance(event, RevocationEvent)
        stale = str(int(NOW.timestamp()) - 3600)
        headers = {"X-Hub-Signature-256": source._verifier.sign(b"k3y", BODY, stale), "X-Ts": stale}
        with pytest.raises(TimestampOutOfTolerance):
            await source.receive(Delivery("POST", headers, BODY, "application/json", NOW))

    @pytest.mark.parametrize("signature", ["", "sha256=", "sha256=00", "sha1=abc"])
    async def test_bad_signatures(self, signature: str) -> None:
        """Missing, empty, wrong or wrongly prefixed signatures are refused."""
        with pytest.raises(SignatureInvalid):
            await hmac_source().receive(
                Delivery("POST", {"X-Hub-Signature-256": signature}, BODY, "", NOW)
            )

    @pytest.mark.parametrize(
        "fields",
        [
            {"signed_content": "no body"},
            {"signed_content": "{timestamp}.{body}"},
            {"signed_content": "{body}{other}"},
            {"id_path": None},
        ],
    )
    def test_unusable_configurations_fail_at_start(self, fields: dict[str, object]) -> None:
        """Templates that cannot be computed are configuration errors."""
        with pytest.raises(ValidationError):
            hmac_source(**fields)
