"""A generic HMAC-SHA256 source for in-house systems: header, encoding and signed content set
by configuration.

``signed_content`` is a template over ``{timestamp}``, ``{id}`` and ``{body}`` (the raw body
bytes); for example GitHub-style ``{body}`` with header ``X-Hub-Signature-256`` and prefix
``sha256=``, or Stripe-like ``{timestamp}.{body}`` with a timestamp header and a tolerance.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from propagator.errors import MalformedPayload, SignatureInvalid, TimestampOutOfTolerance
from propagator.sources._base import Delivery, Ignored, Outcome, WebhookSource
from propagator.sources._mapping import EventMapping, build_event, lookup
from propagator.sources._secrets import SecretList, read_secrets

KIND = "hmac"


class HMACConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    kind: Literal["hmac"]
    secrets: SecretList = Field(default_factory=list)
    secret_file: Path | None = None
    signature_header: str = "X-Signature"
    signature_prefix: str = ""
    encoding: Literal["hex", "base64"] = "hex"
    signed_content: str = "{body}"
    timestamp_header: str | None = None
    timestamp_unit: Literal["s", "ms"] = "s"
    tolerance_s: float = Field(default=300.0, gt=0)
    id_header: str | None = None
    id_path: str | None = "id"
    type_path: str = "type"
    event_types: dict[str, EventMapping] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _template_is_usable(self) -> Self:
        if self.signed_content.count("{body}") != 1:
            raise ValueError("signed_content must contain {body} exactly once")
        if "{timestamp}" in self.signed_content and self.timestamp_header is None:
            raise ValueError("signed_content uses {timestamp}: set timestamp_header")
        if "{id}" in self.signed_content and self.id_header is None:
            raise ValueError("signed_content uses {id}: set id_header")
        try:
            self.signed_content.format(body="", timestamp="", id="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError("signed_content may use only {body}, {timestamp} and {id}") from exc
        if self.id_header is None and self.id_path is None:
            raise ValueError("set id_header or id_path: events need an id")
        return self


class HMACVerifier:
    """Checks a configurable HMAC-SHA256 signature against every active secret."""

    def __init__(
        self,
        *,
        config: HMACConfig,
        secrets: Sequence[bytes],
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secrets:
            raise ValueError("an HMAC source needs at least one secret")
        self._config = config
        self._secrets = tuple(secrets)
        self._clock = clock
        before, after = config.signed_content.split("{body}")
        self._before, self._after = before, after

    def signed_bytes(self, body: bytes, timestamp: str, msg_id: str) -> bytes:
        fill = {"timestamp": timestamp, "id": msg_id}
        return self._before.format(**fill).encode() + body + self._after.format(**fill).encode()

    def sign(self, secret: bytes, body: bytes, timestamp: str = "", msg_id: str = "") -> str:
        digest = hmac.new(
            secret, self.signed_bytes(body, timestamp, msg_id), hashlib.sha256
        ).digest()
        encoded = (
            digest.hex() if self._config.encoding == "hex" else base64.b64encode(digest).decode()
        )
        return self._config.signature_prefix + encoded

    def verify(self, headers: Mapping[str, str], body: bytes) -> tuple[str, str, float | None]:
        """Return the (timestamp, header id, timestamp in seconds) that were verified."""
        config = self._config
        provided = headers.get(config.signature_header, "").strip()
        if not provided.startswith(config.signature_prefix) or provided == config.signature_prefix:
            raise SignatureInvalid(f"missing or malformed {config.signature_header}")
        timestamp, seconds = "", None
        if config.timestamp_header is not None:
            timestamp = headers.get(config.timestamp_header, "").strip()
            if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 15:
                raise SignatureInvalid(f"{config.timestamp_header} is not an integer")
            seconds = int(timestamp) / (1000 if config.timestamp_unit == "ms" else 1)
            if abs(self._clock() - seconds) > config.tolerance_s:
                raise TimestampOutOfTolerance(f"{config.timestamp_header} is outside the tolerance")
        msg_id = headers.get(config.id_header, "") if config.id_header else ""
        candidate = provided.encode("utf-8", "replace")
        for secret in self._secrets:
            expected = self.sign(secret, body, timestamp, msg_id).encode()
            if hmac.compare_digest(expected, candidate):
                return timestamp, msg_id, seconds
        raise SignatureInvalid("the signature matches no active secret")


class HMACSource(WebhookSource):
    kind = KIND

    def __init__(self, *, name: str, config: HMACConfig, verifier: HMACVerifier) -> None:
        self._name = name
        self._config = config
        self._verifier = verifier

    @property
    def name(self) -> str:
        return self._name

    async def receive(self, delivery: Delivery) -> Sequence[Outcome]:
        _, header_id, seconds = self._verifier.verify(delivery.headers, delivery.body)
        try:
            document: Any = json.loads(delivery.body)
        except (ValueError, RecursionError) as exc:
            raise MalformedPayload("body is not JSON") from exc
        event_id = header_id or lookup(document, self._config.id_path)
        event_type = lookup(document, self._config.type_path)
        if not isinstance(event_id, str | int) or isinstance(event_id, bool) or event_id == "":
            raise MalformedPayload("the event has no id")
        if not isinstance(event_type, str):
            raise MalformedPayload(f"no string at {self._config.type_path}")
        mapping = self._config.event_types.get(event_type)
        if mapping is None:
            return [Ignored(event_id=str(event_id), type=event_type)]
        sent_at = datetime.fromtimestamp(seconds, tz=UTC) if seconds is not None else None
        return [
            build_event(
                document,
                mapping,
                event_id=str(event_id),
                event_type=event_type,
                source=self._name,
                source_kind=KIND,
                body=delivery.body,
                received_at=delivery.received_at,
                default_occurred_at=sent_at or delivery.received_at,
            )
        ]


def build(config: HMACConfig) -> HMACSource:
    secrets = [s.encode() for s in read_secrets(config.secrets, config.secret_file)]
    return HMACSource(
        name=config.name, config=config, verifier=HMACVerifier(config=config, secrets=secrets)
    )
