"""Okta event hooks: a shared ``Authorization`` value, a GET handshake, batches of events.

Okta signs nothing: it sends the configured ``Authorization`` header value, compared here
in constant time (several values may be active, for rotation). The one-time verification
``GET`` echoes ``x-okta-verification-challenge``. One delivery carries several events in
``data.events``; each ``user.session.clear``, ``user.session.end`` and user deactivation or
deletion becomes a user-scope revocation, published one by one.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from propagator.errors import MalformedPayload, Unauthorized
from propagator.sources._base import Delivery, Ignored, Outcome, Reply, WebhookSource
from propagator.sources._mapping import as_datetime, summarise
from propagator.sources._secrets import SecretList, read_secrets
from schemas import RevocationEvent, RevocationScope

KIND = "okta"
CHALLENGE_HEADER = "x-okta-verification-challenge"

DEFAULT_EVENT_TYPES = (
    "user.session.clear",
    "user.session.end",
    "user.lifecycle.deactivate",
    "user.lifecycle.delete.initiated",
    "user.lifecycle.delete.completed",
)


class OktaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    kind: Literal["okta"]
    # The Authorization header value(s) configured on the Okta event hook.
    authorization: SecretList = Field(default_factory=list)
    authorization_file: Path | None = None
    event_types: list[str] = Field(default_factory=lambda: list(DEFAULT_EVENT_TYPES))


def _user_of(event: dict[str, Any]) -> str | None:
    targets = event.get("target")
    if isinstance(targets, list):
        for target in targets:
            if isinstance(target, dict) and target.get("type") == "User":
                found = target.get("id")
                if isinstance(found, str) and found:
                    return found
    # A user ending their own session is the actor, with no target.
    actor = event.get("actor")
    if isinstance(actor, dict) and actor.get("type") == "User":
        found = actor.get("id")
        if isinstance(found, str) and found:
            return found
    return None


class OktaSource(WebhookSource):
    kind = KIND

    def __init__(
        self, *, name: str, authorization: Sequence[str], event_types: Sequence[str]
    ) -> None:
        if not authorization:
            raise ValueError("an Okta source needs at least one Authorization value")
        self._name = name
        self._authorization = tuple(a.encode() for a in authorization)
        self._event_types = frozenset(event_types)

    @property
    def name(self) -> str:
        return self._name

    def _authenticate(self, delivery: Delivery) -> None:
        sent = delivery.headers.get("Authorization", "").encode("utf-8", "replace")
        if not any(hmac.compare_digest(sent, expected) for expected in self._authorization):
            raise Unauthorized("the Authorization header does not match the event hook's")

    def challenge(self, delivery: Delivery) -> Reply | None:
        value = delivery.headers.get(CHALLENGE_HEADER)
        if value is None:
            return None
        self._authenticate(delivery)
        return Reply(200, {"verification": value})

    async def receive(self, delivery: Delivery) -> Sequence[Outcome]:
        self._authenticate(delivery)
        try:
            document = json.loads(delivery.body)
        except (ValueError, RecursionError) as exc:
            raise MalformedPayload("body is not JSON") from exc
        data = document.get("data") if isinstance(document, dict) else None
        events = data.get("events") if isinstance(data, dict) else None
        if not isinstance(events, list) or not events:
            raise MalformedPayload("an event hook delivery has a non-empty data.events list")
        digest = hashlib.sha256(delivery.body).hexdigest()
        return [self._outcome(event, delivery.received_at, digest) for event in events]

    def _outcome(self, event: Any, received_at: datetime, digest: str) -> Outcome:
        if not isinstance(event, dict):
            raise MalformedPayload("each event is an object")
        uuid, event_type = event.get("uuid"), event.get("eventType")
        if not isinstance(uuid, str) or not uuid or not isinstance(event_type, str):
            raise MalformedPayload("each event has a string uuid and eventType")
        if event_type not in self._event_types:
            return Ignored(event_id=uuid, type=event_type)
        published = as_datetime(event.get("published"))
        if published is None:
            raise MalformedPayload(f"event {uuid[:64]} has no valid 'published' time")
        try:
            return RevocationEvent(
                event_id=uuid,
                source=self._name,
                source_kind=KIND,
                type=event_type,
                scope=RevocationScope.USER,
                user_id=_user_of(event),
                occurred_at=published,
                received_at=received_at,
                payload_sha256=digest,
            )
        except ValidationError as exc:
            raise MalformedPayload(f"{event_type}: {summarise(exc)}") from exc


def build(config: OktaConfig) -> OktaSource:
    return OktaSource(
        name=config.name,
        authorization=read_secrets(config.authorization, config.authorization_file),
        event_types=config.event_types,
    )
