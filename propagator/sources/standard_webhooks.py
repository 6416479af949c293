"""Standard Webhooks (Svix, Clerk, Stytch, Supabase …): ``webhook-*`` or ``svix-*`` headers.

The signature is HMAC-SHA256 over ``"{id}.{timestamp}.{raw body}"``, keyed by the
base64-decoded secret (``whsec_`` prefix stripped, padding optional), sent base64-encoded as
``v1,<sig>``; the header may carry several space-separated signatures, and any valid ``v1``
passes. Timestamps are seconds, accepted within 5 minutes either way, as the reference
libraries do. The ``webhook-id`` is the event id, so redeliveries deduplicate.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from propagator.errors import MalformedPayload, SignatureInvalid, TimestampOutOfTolerance
from propagator.sources._base import Delivery, Ignored, Outcome, SessionSeen, WebhookSource
from propagator.sources._mapping import EventMapping, as_datetime, build_event, lookup
from propagator.sources._secrets import SecretList, read_secrets
from schemas import RevocationScope

KIND = "standard-webhooks"

# Clerk's session events; operators add or override types per source.
DEFAULT_EVENT_TYPES: dict[str, EventMapping] = {
    "session.revoked": EventMapping(scope=RevocationScope.SESSION),
    "session.ended": EventMapping(scope=RevocationScope.SESSION),
    "session.removed": EventMapping(scope=RevocationScope.SESSION),
}


class StandardWebhooksConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    kind: Literal["standard-webhooks"]
    secrets: SecretList = Field(default_factory=list)
    secret_file: Path | None = None
    tolerance_s: float = Field(default=300.0, gt=0)
    # Merged over the Clerk defaults; map a type to null to ignore it.
    event_types: dict[str, EventMapping | None] = Field(default_factory=dict)

    def mappings(self) -> dict[str, EventMapping]:
        merged: dict[str, EventMapping | None] = {**DEFAULT_EVENT_TYPES, **self.event_types}
        return {k: v for k, v in merged.items() if v is not None}


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a ``whsec_`` secret: base64, padded or not (Supabase's ``v1,`` too)."""
    value = secret.strip()
    value = value.removeprefix("v1,").removeprefix("whsec_")
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a Standard Webhooks secret must be base64 after 'whsec_'") from exc


def sign_standard(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value a Standard Webhooks sender sends (one ``v1``)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


class StandardWebhooksVerifier:
    """Checks the Standard Webhooks signature against every active key, in constant time."""

    def __init__(
        self,
        *,
        keys: Sequence[bytes],
        tolerance_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not keys:
            raise ValueError("a Standard Webhooks source needs at least one secret")
        self._keys = tuple(keys)
        self._tolerance_s = tolerance_s
        self._clock = clock

    def verify(self, headers: Mapping[str, str], body: bytes) -> tuple[str, int]:
        """Return the verified (message id, timestamp); raise when forged or stale."""
        # Svix's SDK reads its own names first and falls back to the standard ones.
        msg_id = headers.get("svix-id") or headers.get("webhook-id")
        stamp = headers.get("svix-timestamp") or headers.get("webhook-timestamp")
        signature = headers.get("svix-signature") or headers.get("webhook-signature")
        if not msg_id or not stamp or not signature:
            raise SignatureInvalid("missing webhook-id, webhook-timestamp or webhook-signature")
        stamp = stamp.strip()
        if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
            raise SignatureInvalid("webhook-timestamp is not an integer of seconds")
        timestamp = int(stamp)
        if abs(self._clock() - timestamp) > self._tolerance_s:
            raise TimestampOutOfTolerance(
                f"webhook-timestamp is outside the {self._tolerance_s:.0f}s tolerance"
            )
        candidates = []
        for part in signature.split(" "):
            version, sep, value = part.partition(",")
            if sep and version == "v1" and value:
                candidates.append(value.encode("utf-8", "replace"))
        if not candidates:
            raise SignatureInvalid("webhook-signature has no v1 signature")
        signed = f"{msg_id}.{timestamp}.".encode() + body
        for key in self._keys:
            expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
            if any(hmac.compare_digest(expected, candidate) for candidate in candidates):
                return msg_id, timestamp
        raise SignatureInvalid("no v1 signature matches an active secret")


class StandardWebhooksSource(WebhookSource):
    kind = KIND

    def __init__(
        self,
        *,
        name: str,
        verifier: StandardWebhooksVerifier,
        event_types: Mapping[str, EventMapping],
    ) -> None:
        self._name = name
        self._verifier = verifier
        self._event_types = dict(event_types)

    @property
    def name(self) -> str:
        return self._name

    async def receive(self, delivery: Delivery) -> Sequence[Outcome]:
        msg_id, timestamp = self._verifier.verify(delivery.headers, delivery.body)
        return [self.parse(delivery.body, msg_id, timestamp, delivery.received_at)]

    def parse(self, body: bytes, msg_id: str, timestamp: int, received_at: datetime) -> Outcome:
        try:
            document: Any = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise MalformedPayload("body is not JSON") from exc
        event_type = document.get("type") if isinstance(document, dict) else None
        if not isinstance(event_type, str) or not event_type:
            raise MalformedPayload("body has no string 'type'")
        mapping = self._event_types.get(event_type)
        if mapping is None and event_type == "session.created":
            return self._session_seen(document, msg_id, timestamp)
        if mapping is None:
            return Ignored(event_id=msg_id, type=event_type)
        return build_event(
            document,
            mapping,
            event_id=msg_id,
            event_type=event_type,
            source=self._name,
            source_kind=KIND,
            body=body,
            received_at=received_at,
            default_occurred_at=datetime.fromtimestamp(timestamp, tz=UTC),
        )

    def _session_seen(self, document: Any, msg_id: str, timestamp: int) -> SessionSeen:
        """Clerk's session.created: its SessionJSON, with the latest activity's client details."""
        session_id = lookup(document, "data.id")
        user_id = lookup(document, "data.user_id")
        if not isinstance(session_id, str) or not isinstance(user_id, str):
            raise MalformedPayload("session.created needs data.id and data.user_id")
        activity = lookup(document, "data.latest_activity")
        activity = activity if isinstance(activity, dict) else {}
        created = as_datetime(lookup(document, "data.created_at"))
        org = lookup(document, "data.last_active_organization_id")
        browser = " ".join(
            str(activity[k]) for k in ("browser_name", "browser_version") if activity.get(k)
        )
        return SessionSeen(
            event_id=msg_id,
            type="session.created",
            source=self._name,
            session_id=session_id,
            user_id=user_id,
            organization_id=org if isinstance(org, str) else None,
            ip_address=activity.get("ip_address")
            if isinstance(activity.get("ip_address"), str)
            else None,
            user_agent=browser or None,
            device=activity.get("device_type")
            if isinstance(activity.get("device_type"), str)
            else None,
            created_at=(created or datetime.fromtimestamp(timestamp, tz=UTC)).isoformat(),
        )


def build(config: StandardWebhooksConfig) -> StandardWebhooksSource:
    keys = [decode_secret(s) for s in read_secrets(config.secrets, config.secret_file)]
    return StandardWebhooksSource(
        name=config.name,
        verifier=StandardWebhooksVerifier(keys=keys, tolerance_s=config.tolerance_s),
        event_types=config.mappings(),
    )


__all__ = [
    "StandardWebhooksConfig",
    "StandardWebhooksSource",
    "StandardWebhooksVerifier",
    "build",
    "decode_secret",
    "sign_standard",
]
