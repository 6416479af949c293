"""Standard Webhooks (Svix, Clerk): the published vectors, rotation, mapping."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from propagator.errors import MalformedPayload, SignatureInvalid, TimestampOutOfTolerance
from propagator.sources import Ignored, SessionSeen, StandardWebhooksConfig
from propagator.sources._mapping import EventMapping
from propagator.sources.standard_webhooks import (
    DEFAULT_EVENT_TYPES,
    StandardWebhooksSource,
    StandardWebhooksVerifier,
    decode_secret,
    sign_standard,
)
from schemas import RevocationEvent, RevocationScope

# Vector SW-1: test_sign_function in the reference libraries (Python, JS, Go, Java, …).
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TS = 1614265330
PAYLOAD = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
WRONG = [
    "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=",
    "v1,R3PTzyfHASBKHH98a7yexTwaJ4yNIcGhFQc1yuN+BPU=",
]
DECOYS = [
    "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
    "v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
    "v1,tFtCZ5RDCPxzWQRWXWPgrCgE2frDBe9gjpbWQxnVfsQ=",
    "v1,Mm7xgUVICxZfQ3bgf0h0Dof65L/IFx+PnZvnDWPCX6Q=",
    "v1,9DfC1c3eeOrXB6w/5dIDydLNQaEyww5KalE5jLBZucE=",
]


def verifier(*secrets: str, now: float = TS, tolerance_s: float = 300) -> StandardWebhooksVerifier:
    keys = [decode_secret(s) for s in (secrets or (SECRET,))]
    return StandardWebhooksVerifier(keys=keys, tolerance_s=tolerance_s, clock=lambda: now)


def headers(
    signature: str, *, msg_id: str = MSG_ID, ts: int = TS, prefix: str = "webhook"
) -> dict[str, str]:
    return {
        f"{prefix}-id": msg_id,
        f"{prefix}-timestamp": str(ts),
        f"{prefix}-signature": signature,
    }


class TestVectors:
    def test_sign_reproduces_the_published_signature(self) -> None:
        """SW-1: our signer gives the reference libraries' signature."""
        assert EXPECTED == sign_standard(decode_secret(SECRET), MSG_ID, TS, PAYLOAD)

    def test_published_signature_verifies(self) -> None:
        """SW-1 verifies and yields its id and timestamp."""
        assert (MSG_ID, TS) == verifier().verify(headers(EXPECTED), PAYLOAD)

    @pytest.mark.parametrize("wrong", WRONG)
    def test_wrong_signatures_are_refused(self, wrong: str) -> None:
        """The reference libraries' wrong-signature fixtures are refused."""
        with pytest.raises(SignatureInvalid):
            verifier().verify(headers(wrong), PAYLOAD)

    def test_any_valid_v1_among_decoys_passes(self) -> None:
        """A multi-signature header passes when one v1 is valid, wherever it stands."""
        signature = " ".join([*DECOYS[:2], EXPECTED, *DECOYS[2:]])
        verifier().verify(headers(signature), PAYLOAD)

    def test_only_decoys_are_refused(self) -> None:
        """Decoys alone, including a v2 with the right bytes, do not pass."""
        with pytest.raises(SignatureInvalid):
            verifier().verify(headers(" ".join(DECOYS)), PAYLOAD)

    @pytest.mark.parametrize(
        "secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaS", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwBr"]
    )
    def test_unpadded_secrets_work(self, secret: str) -> None:
        """Secrets without base64 padding decode, sign and verify."""
        key = decode_secret(f"whsec_{secret}")
        signature = sign_standard(key, MSG_ID, TS, PAYLOAD)
        verifier(f"whsec_{secret}").verify(headers(signature), PAYLOAD)

    def test_supabase_style_prefix_is_stripped(self) -> None:
        """A secret shown as 'v1,whsec_…' is the same secret."""
        verifier("v1," + SECRET).verify(headers(EXPECTED), PAYLOAD)

    def test_secret_that_is_not_base64_is_a_configuration_error(self) -> None:
        """A mistyped secret fails at start-up, not at the first webhook."""
        with pytest.raises(ValueError, match="base64"):
            decode_secret("whsec_not*base64!")


class TestHeadersAndTime:
    def test_svix_header_names_work(self) -> None:
        """Clerk sends svix-id, svix-timestamp and svix-signature."""
        verifier().verify(headers(EXPECTED, prefix="svix"), PAYLOAD)

    @pytest.mark.parametrize("skew", [-301, 301])
    def test_five_minutes_either_way(self, skew: int) -> None:
        """Too old and too new are both refused."""
        with pytest.raises(TimestampOutOfTolerance):
            verifier(now=TS + skew).verify(headers(EXPECTED), PAYLOAD)

    def test_within_tolerance_passes(self) -> None:
        """299 s late still verifies."""
        verifier(now=TS + 299).verify(headers(EXPECTED), PAYLOAD)

    @pytest.mark.parametrize("ts", ["161426533.0", "invalid timestamp", "-161426533", ""])
    def test_bad_timestamps_are_refused(self, ts: str) -> None:
        """Timestamps the reference libraries refuse are refused."""
        hdrs = headers(EXPECTED)
        hdrs["webhook-timestamp"] = ts
        with pytest.raises(SignatureInvalid):
            verifier().verify(hdrs, PAYLOAD)

    def test_changed_id_breaks_the_signature(self) -> None:
        """The message id is signed: another id is a forgery."""
        with pytest.raises(SignatureInvalid):
            verifier().verify(headers(EXPECTED, msg_id="msg_other"), PAYLOAD)

    def test_rotation_accepts_old_and_new(self) -> None:
        """With two active secrets, signatures by either pass."""
        new = "whsec_" + "A" * 32
        both = verifier(new, SECRET)
        both.verify(headers(EXPECTED), PAYLOAD)
        both.verify(headers(sign_standard(decode_secret(new), MSG_ID, TS, PAYLOAD)), PAYLOAD)

    @given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
    def test_any_changed_body_byte_is_refused(self, position: int, flip: int) -> None:
        """Flipping any byte of the body breaks the signature."""
        body = bytearray(PAYLOAD)
        body[position % len(body)] ^= flip
        with pytest.raises(SignatureInvalid):
            verifier().verify(headers(EXPECTED), bytes(body))

    @given(position=st.integers(min_value=3), flip=st.integers(min_value=1, max_value=127))
    def test_any_changed_signature_char_is_refused(self, position: int, flip: int) -> None:
        """Changing any character of the signature is refused."""
        chars = list(EXPECTED)
        index = 3 + position % (len(chars) - 3)
        changed = chr(ord(chars[index]) ^ flip)
        chars[index] = changed
        with pytest.raises((SignatureInvalid, TimestampOutOfTolerance)):
            verifier().verify(headers("".join(chars)), PAYLOAD)

    @given(delta=st.integers(min_value=1, max_value=10**6))
    def test_any_changed_timestamp_is_refused(self, delta: int) -> None:
        """The timestamp is signed: any other value fails, stale or not."""
        with pytest.raises((SignatureInvalid, TimestampOutOfTolerance)):
            verifier(now=TS + delta).verify(headers(EXPECTED, ts=TS + delta), PAYLOAD)


def clerk(event_type: str, data: dict[str, object]) -> bytes:
    return json.dumps(
        {
            "type": event_type,
            "object": "event",
            "data": data,
            "timestamp": 1716883200,
            "instance_id": "ins_123",
        }
    ).encode()


RECEIVED = datetime(2026, 1, 1, tzinfo=UTC)


class TestMapping:
    source = StandardWebhooksSource(
        name="clerk", verifier=verifier(), event_types=DEFAULT_EVENT_TYPES
    )

    @pytest.mark.parametrize("event_type", ["session.revoked", "session.ended", "session.removed"])
    def test_clerk_session_events_are_session_scope(self, event_type: str) -> None:
        """Clerk's session.revoked, .ended and .removed revoke that session."""
        body = clerk(
            event_type,
            {"object": "session", "id": "sess_1", "user_id": "user_1", "status": "revoked"},
        )
        event = self.source.parse(body, "msg_1", TS, RECEIVED)
        assert isinstance(event, RevocationEvent)
        assert (RevocationScope.SESSION, "sess_1", "user_1") == (
            event.scope,
            event.session_id,
            event.user_id,
        )
        assert "msg_1" == event.event_id
        assert datetime.fromtimestamp(TS, tz=UTC) == event.occurred_at
        assert "standard-webhooks" == event.source_kind

    def test_other_types_are_ignored(self) -> None:
        """user.created is acknowledged, not published."""
        outcome = self.source.parse(clerk("user.created", {"id": "u"}), "msg_2", TS, RECEIVED)
        assert Ignored(event_id="msg_2", type="user.created") == outcome

    def test_session_created_feeds_the_inventory(self) -> None:
        """Clerk's session.created is a session to remember, with its client details."""
        body = clerk(
            "session.created",
            {
                "object": "session",
                "id": "sess_9",
                "user_id": "user_9",
                "created_at": 1716883200123,
                "last_active_organization_id": "org_9",
                "latest_activity": {
                    "ip_address": "203.0.113.9",
                    "browser_name": "Firefox",
                    "browser_version": "130",
                    "device_type": "Macintosh",
                },
            },
        )
        seen = self.source.parse(body, "msg_3", TS, RECEIVED)
        assert isinstance(seen, SessionSeen)
        assert ("sess_9", "user_9", "org_9") == (
            seen.session_id,
            seen.user_id,
            seen.organization_id,
        )
        assert ("203.0.113.9", "Firefox 130", "Macintosh") == (
            seen.ip_address,
            seen.user_agent,
            seen.device,
        )
        assert seen.created_at.startswith("2024-05-28T08:00:00.123")

    def test_operator_mapping_adds_a_user_scope_type(self) -> None:
        """An operator maps Clerk's user.deleted to user scope."""
        config = StandardWebhooksConfig.model_validate(
            {
                "name": "clerk",
                "kind": "standard-webhooks",
                "secrets": [SECRET],
                "event_types": {"user.deleted": "user", "session.ended": None},
            }
        )
        source = StandardWebhooksSource(
            name="clerk", verifier=verifier(), event_types=config.mappings()
        )
        event = source.parse(
            clerk("user.deleted", {"id": "user_9", "deleted": True}), "m", TS, RECEIVED
        )
        assert isinstance(event, RevocationEvent)
        assert (RevocationScope.USER, "user_9") == (event.scope, event.user_id)
        assert isinstance(
            source.parse(clerk("session.ended", {"id": "s"}), "m2", TS, RECEIVED), Ignored
        )

    def test_custom_paths(self) -> None:
        """Paths can point anywhere in the body, e.g. Stytch's shape."""
        mapping = EventMapping.model_validate(
            {"scope": "session", "session_id": "session.session_id", "user_id": "session.user_id"}
        )
        source = StandardWebhooksSource(
            name="stytch", verifier=verifier(), event_types={"x.revoked": mapping}
        )
        body = json.dumps(
            {"type": "x.revoked", "session": {"session_id": "s7", "user_id": "u7"}}
        ).encode()
        event = source.parse(body, "m", TS, RECEIVED)
        assert isinstance(event, RevocationEvent)
        assert ("s7", "u7") == (event.session_id, event.user_id)

    @pytest.mark.parametrize(
        "body",
        [
            b"",
            b"nope",
            b"[]",
            b'{"type": 5}',
            b'{"type": "session.revoked", "data": {"user_id": "u"}}',
            b'{"type": "session.revoked", "data": {"id": {"x": 1}, "user_id": "u"}}',
            b"[" * 100_000,
        ],
    )
    def test_malformed_bodies_are_400(self, body: bytes) -> None:
        """Not JSON, no type, no session id, nested ids, deep nesting: all MalformedPayload."""
        with pytest.raises(MalformedPayload):
            self.source.parse(body, "m", TS, RECEIVED)
