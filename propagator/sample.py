"""A correctly signed sample WorkOS ``session.revoked``, for trying the service out."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime

from propagator.sources.workos import sign_workos


def sample_session_revoked(
    *, session_id: str | None = None, user_id: str | None = None, event_id: str | None = None
) -> bytes:
    """A ``session.revoked`` body in the shape of the WorkOS SDK fixture, with fresh ids."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    suffix = uuid.uuid4().hex[:26].upper()
    event = {
        "object": "event",
        "id": event_id or f"event_{suffix}",
        "event": "session.revoked",
        "data": {
            "object": "session",
            "id": session_id or f"session_{suffix}",
            "user_id": user_id or "user_01E4ZCR3C56J083X43JQXF3JK5",
            "organization_id": "org_01H945H0YD4F97JN9MATX7BYAG",
            "ip_address": "198.51.100.42",
            "user_agent": "Mozilla/5.0",
            "auth_method": "sso",
            "status": "revoked",
            "expires_at": now,
            "ended_at": now,
            "created_at": now,
            "updated_at": now,
        },
        "created_at": now,
    }
    return json.dumps(event, separators=(",", ":")).encode()


def signed_headers(secret: bytes, body: bytes, timestamp_ms: int | None = None) -> dict[str, str]:
    ts = timestamp_ms if timestamp_ms is not None else int(time.time() * 1000)
    return {"Content-Type": "application/json", "WorkOS-Signature": sign_workos(secret, body, ts)}
