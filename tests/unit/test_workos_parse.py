"""Mapping WorkOS events to the canonical revocation event."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

import pytest

from propagator.errors import MalformedPayload
from propagator.sources import Ignored, SessionSeen, WorkOSSource, WorkOSVerifier
from schemas import RevocationEvent, RevocationScope
from tests.conftest import fixture_bytes, load_fixture

RECEIVED = datetime(2026, 1, 15, 12, 0, 1, tzinfo=UTC)


@pytest.fixture
def source() -> WorkOSSource:
    return WorkOSSource(name="workos-prod", verifier=WorkOSVerifier(secrets=[b"s"]))


class TestSessionRevoked:
    def test_sdk_fixture_maps_to_a_session_scope_event(self, source: WorkOSSource) -> None:
        """The SDK's session.revoked fixture becomes a canonical session-scope event."""
        body = fixture_bytes("workos_session_revoked.json")
        event = source.parse(body, RECEIVED)
        assert isinstance(event, RevocationEvent)
        assert "event_01EHZNVPK3SFK441A1RGBFSHRT" == event.event_id
        assert RevocationScope.SESSION == event.scope
        assert "session_01H93ZY4F80QPBEZ1R5B2SHQG8" == event.session_id
        assert "user_01E4ZCR3C56J083X43JQXF3JK5" == event.user_id
        assert "org_01H945H0YD4F97JN9MATX7BYAG" == event.organization_id
        assert "workos-prod" == event.source
        assert "workos" == event.source_kind
        assert "session.revoked" == event.type
        assert RECEIVED == event.received_at
        assert datetime(2026, 1, 15, 12, 0, tzinfo=UTC) == event.occurred_at
        assert hashlib.sha256(body).hexdigest() == event.payload_sha256
        assert "user_01E4ZCR3C56J083X43JQXF3JK5" == event.partition_key

    def test_older_shape_without_status_is_accepted(self, source: WorkOSSource) -> None:
        """The older session shape (no auth_method, status, expires_at, ended_at) still maps."""
        data = load_fixture("workos_session_created_legacy.json")
        data["event"] = "session.revoked"
        event = source.parse(json.dumps(data).encode(), RECEIVED)
        assert isinstance(event, RevocationEvent)
        assert "session_01HSCBECW0D7AY8CA45AYKA64G" == event.session_id
        assert "user_01HQGXWZW8BSHRG3HVK2QF7XBX" == event.user_id

    def test_ended_at_is_the_revocation_time_when_present(self, source: WorkOSSource) -> None:
        """A non-null ended_at is when the session ended, so it is occurred_at."""
        data = load_fixture("workos_session_revoked.json")
        data["data"]["ended_at"] = "2026-01-15T11:59:30.000Z"
        event = source.parse(json.dumps(data).encode(), RECEIVED)
        assert isinstance(event, RevocationEvent)
        assert datetime(2026, 1, 15, 11, 59, 30, tzinfo=UTC) == event.occurred_at

    def test_event_without_organization_is_accepted(self, source: WorkOSSource) -> None:
        """organization_id is optional in WorkOS's session object."""
        data = load_fixture("workos_session_revoked.json")
        del data["data"]["organization_id"]
        event = source.parse(json.dumps(data).encode(), RECEIVED)
        assert isinstance(event, RevocationEvent)
        assert event.organization_id is None


class TestOtherEvents:
    def test_session_created_feeds_the_inventory(self, source: WorkOSSource) -> None:
        """session.created is not a revocation: it is a session for the inventory."""
        seen = source.parse(fixture_bytes("workos_session_created.json"), RECEIVED)
        assert isinstance(seen, SessionSeen)
        assert ("session_01H93ZY4F80QPBEZ1R5B2SHQG8", "user_01E4ZCR3C56J083X43JQXF3JK5") == (
            seen.session_id,
            seen.user_id,
        )
        assert ("198.51.100.42", "sso") == (seen.ip_address, seen.device)
        assert (seen.user_agent or "").startswith("Mozilla/5.0")
        assert "2026-01-15T12:00:00+00:00" == seen.created_at

    def test_legacy_session_created_parses(self, source: WorkOSSource) -> None:
        """The docs' older session.created example (no auth_method, status) parses too."""
        seen = source.parse(fixture_bytes("workos_session_created_legacy.json"), RECEIVED)
        assert isinstance(seen, SessionSeen)
        assert "session_01HSCBECW0D7AY8CA45AYKA64G" == seen.session_id

    def test_other_types_are_ignored(self, source: WorkOSSource) -> None:
        """A verified event of a type we do not act on is acknowledged, not published."""
        body = envelope("user.updated", {"object": "user", "id": "user_1"})
        assert Ignored(event_id="event_x", type="user.updated") == source.parse(body, RECEIVED)


class TestMalformed:
    @pytest.mark.parametrize(
        "body",
        [
            b"",
            b"not json",
            b"[]",
            b'{"id": "event_1"}',
            b'{"id": "event_1", "event": "session.revoked", "data": {}, "created_at": "x"}',
            b'{"id": "e", "event": "session.revoked", "data": [], '
            b'"created_at": "2026-01-01T00:00:00Z"}',
        ],
    )
    def test_not_an_event(self, source: WorkOSSource, body: bytes) -> None:
        """Bodies that are not a WorkOS event envelope are malformed."""
        with pytest.raises(MalformedPayload):
            source.parse(body, RECEIVED)

    @pytest.mark.parametrize("missing", ["id", "user_id"])
    def test_session_revoked_without_required_field(
        self, source: WorkOSSource, missing: str
    ) -> None:
        """A session.revoked without data.id or data.user_id cannot be propagated."""
        data = load_fixture("workos_session_revoked.json")
        del data["data"][missing]
        with pytest.raises(MalformedPayload, match=missing):
            source.parse(json.dumps(data).encode(), RECEIVED)

    def test_created_at_without_timezone_is_malformed(self, source: WorkOSSource) -> None:
        """Times must carry an offset; a naive time is ambiguous."""
        data = load_fixture("workos_session_revoked.json")
        data["created_at"] = "2026-01-15T12:00:00"
        with pytest.raises(MalformedPayload):
            source.parse(json.dumps(data).encode(), RECEIVED)

    def test_oversized_id_is_malformed_not_a_crash(self, source: WorkOSSource) -> None:
        """Limits of the canonical schema surface as a 400, not an internal error."""
        data = load_fixture("workos_session_revoked.json")
        data["data"]["id"] = "s" * 10_000
        with pytest.raises(MalformedPayload):
            source.parse(json.dumps(data).encode(), RECEIVED)


def envelope(event_type: str, data: dict[str, object]) -> bytes:
    return json.dumps(
        {
            "object": "event",
            "id": "event_x",
            "event": event_type,
            "data": data,
            "created_at": "2026-02-01T10:00:00.000Z",
        }
    ).encode()


class TestUserAndOrganizationScope:
    @pytest.mark.parametrize(
        ("event_type", "data", "scope", "user_id", "org_id"),
        [
            (
                "user.deleted",
                {"object": "user", "id": "user_1", "email": "a@b.c"},
                RevocationScope.USER,
                "user_1",
                None,
            ),
            (
                "password_reset.succeeded",
                {
                    "object": "password_reset",
                    "id": "password_reset_1",
                    "user_id": "user_2",
                    "email": "a@b.c",
                },
                RevocationScope.USER,
                "user_2",
                None,
            ),
            (
                "organization_membership.deleted",
                {
                    "object": "organization_membership",
                    "id": "om_1",
                    "user_id": "user_3",
                    "organization_id": "org_3",
                    "status": "inactive",
                },
                RevocationScope.USER,
                "user_3",
                "org_3",
            ),
            (
                "dsync.user.deleted",
                {
                    "object": "directory_user",
                    "id": "directory_user_4",
                    "user_id": "user_4",
                    "organization_id": "org_4",
                },
                RevocationScope.USER,
                "user_4",
                "org_4",
            ),
            (
                "dsync.user.deleted",
                {"object": "directory_user", "id": "directory_user_5", "organization_id": "org_5"},
                RevocationScope.USER,
                "directory_user_5",
                "org_5",
            ),
            (
                "organization.deleted",
                {"object": "organization", "id": "org_6", "name": "X"},
                RevocationScope.ORGANIZATION,
                None,
                "org_6",
            ),
        ],
    )
    def test_event_maps_to_its_scope(
        self,
        source: WorkOSSource,
        event_type: str,
        data: dict[str, object],
        scope: RevocationScope,
        user_id: str | None,
        org_id: str | None,
    ) -> None:
        """Deleting a user, resetting a password or removing a membership ends all its sessions."""
        event = source.parse(envelope(event_type, data), RECEIVED)
        assert isinstance(event, RevocationEvent)
        assert scope == event.scope
        assert user_id == event.user_id
        assert org_id == event.organization_id
        assert event.session_id is None
        assert datetime(2026, 2, 1, 10, 0, tzinfo=UTC) == event.occurred_at

    @pytest.mark.parametrize(
        "event_type", ["user.deleted", "password_reset.succeeded", "organization.deleted"]
    )
    def test_missing_subject_is_malformed(self, source: WorkOSSource, event_type: str) -> None:
        """A user- or organization-scope event that names no subject is a 400."""
        with pytest.raises(MalformedPayload):
            source.parse(envelope(event_type, {"object": "x"}), RECEIVED)
