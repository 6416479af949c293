"""The canonical event model and the JSON Schema files generated from it."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas import SCHEMA_VERSION, RevocationEvent, RevocationScope
from schemas._export import JSON_DIR, generate, render

NOW = datetime(2026, 12, 3, tzinfo=UTC)


def make(**overrides: object) -> RevocationEvent:
    fields: dict[str, object] = {
        "event_id": "event_1",
        "source": "workos",
        "source_kind": "workos",
        "type": "session.revoked",
        "scope": RevocationScope.SESSION,
        "session_id": "session_1",
        "user_id": "user_1",
        "occurred_at": NOW,
        "received_at": NOW,
        "payload_sha256": "0" * 64,
    }
    fields.update(overrides)
    return RevocationEvent.model_validate(fields)


class TestSchemaFiles:
    def test_files_match_the_models(self) -> None:
        """schemas/json/ holds exactly what the models generate (run `python -m schemas`)."""
        expected = {name: render(doc) for name, doc in generate().items()}
        actual = {path.name: path.read_text() for path in JSON_DIR.glob("*.json")}
        assert expected == actual

    def test_schema_declares_its_version_and_required_fields(self) -> None:
        """Other languages rely on the required list and the version constant."""
        doc = generate()["revocation-event.v1.json"]
        assert {"event_id", "source", "source_kind", "type", "scope", "occurred_at"} <= set(
            doc["required"]
        )
        assert SCHEMA_VERSION == doc["properties"]["schema_version"]["const"]


class TestModel:
    def test_round_trip_through_bytes(self) -> None:
        """What ingest writes, the workers read back unchanged."""
        event = make(organization_id="org_1")
        assert event == RevocationEvent.from_bytes(event.to_bytes())

    def test_unknown_fields_are_ignored(self) -> None:
        """A later minor revision may add fields; version-1 readers keep working."""
        raw = json.loads(make().to_bytes())
        raw["added_later"] = True
        assert make() == RevocationEvent.model_validate(raw)

    @pytest.mark.parametrize(
        ("scope", "missing"),
        [
            (RevocationScope.SESSION, "session_id"),
            (RevocationScope.USER, "user_id"),
            (RevocationScope.ORGANIZATION, "organization_id"),
        ],
    )
    def test_each_scope_requires_its_subject(self, scope: RevocationScope, missing: str) -> None:
        """A revocation names what it revokes."""
        with pytest.raises(ValidationError, match=missing):
            make(scope=scope, **{missing: None})

    def test_naive_times_are_refused(self) -> None:
        """Times without an offset are ambiguous and refused."""
        with pytest.raises(ValidationError):
            make(occurred_at=datetime(2026, 1, 1))

    def test_other_schema_versions_are_refused(self) -> None:
        """A version-2 record is not silently read as version 1."""
        with pytest.raises(ValidationError):
            make(schema_version=2)

    @pytest.mark.parametrize(
        ("overrides", "key"),
        [
            ({}, "user_1"),
            ({"user_id": None}, "session_1"),
            (
                {
                    "scope": RevocationScope.ORGANIZATION,
                    "organization_id": "org_1",
                    "user_id": None,
                },
                "org_1",
            ),
        ],
    )
    def test_partition_key_prefers_the_user(self, overrides: dict[str, object], key: str) -> None:
        """Keyed by user so one user's events stay in order; else by org, then session."""
        assert key == make(**overrides).partition_key
