"""The ``http`` sink: POSTs each canonical event to a subscriber, signed as Standard Webhooks.

Subscribers verify the request with any Standard Webhooks library (``webhook-id`` is the
event id, so their own dedupe works). 2xx is success; 408, 429 and 5xx are retried
(``Retry-After`` honoured within bounds); other 4xx are permanent. Targets on private,
loopback, link-local or reserved addresses are refused unless allow-listed, both when the
sink is built and at every connection (so DNS rebinding cannot get around it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import socket
import time
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import Literal
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from propagator import tracing
from propagator.errors import SinkRejected, SinkUnavailable, map_http_errors
from propagator.sources.standard_webhooks import decode_secret
from schemas import RevocationEvent

KIND = "http"
_RETRIABLE = {408, 429}


class HttpSinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["http"]
    url: str
    # A Standard Webhooks secret (whsec_<base64>), shared with the subscriber.
    secret: SecretStr
    connect_timeout_s: float = Field(default=3.0, gt=0)
    read_timeout_s: float = Field(default=10.0, gt=0)
    max_retry_after_s: float = Field(default=600.0, gt=0)
    # Hosts or addresses that may resolve to private ranges (an in-cluster subscriber).
    allow_private: list[str] = Field(default_factory=list)


def _forbidden(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_reserved
        or ip.is_multicast
        or ip.is_unspecified
    )


class TargetForbidden(OSError):
    """The subscriber's address is in a range the SSRF guard refuses."""


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default resolver, then drops addresses the guard refuses."""

    def __init__(self, *, allow: Sequence[str], inner: AbstractResolver | None = None) -> None:
        self._allow = {a.lower() for a in allow}
        self._inner = inner or aiohttp.ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if host.lower() in self._allow:
            return results
        allowed = [r for r in results if r["host"] in self._allow or not _forbidden(r["host"])]
        if not allowed:
            raise TargetForbidden(f"{host} resolves only to private or reserved addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def check_target(url: str, allow: Sequence[str]) -> None:
    """Refuse at start-up a URL that is not http(s) or names a forbidden literal address."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"subscriber URL must be http(s) with a host: {url!r}")
    host = parts.hostname
    allowed = {a.lower() for a in allow}
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host.lower() == "localhost" and "localhost" not in allowed:
            raise ValueError("localhost is refused unless allow-listed") from None
        return  # a name: checked by GuardedResolver at every connection
    if host not in allowed and _forbidden(host):
        raise ValueError(f"{host} is a private or reserved address; allow-list it to use it")


def make_http_session(allow: Sequence[str]) -> aiohttp.ClientSession:
    """The worker's one shared client session, with the SSRF guard in its resolver."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(allow=allow), limit=100)
    return aiohttp.ClientSession(connector=connector)


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def _retry_after(value: str | None, ceiling: float) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, min(seconds, ceiling))


class HttpSink:
    """Delivers events one request each, in order, through the shared client session."""

    kind = KIND

    def __init__(
        self,
        *,
        http: aiohttp.ClientSession,
        url: str,
        key: bytes,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
        max_retry_after_s: float = 600.0,
    ) -> None:
        self._http = http
        self._url = url
        self._key = key
        self._timeout = aiohttp.ClientTimeout(
            total=connect_timeout_s + read_timeout_s,
            connect=connect_timeout_s,
            sock_read=read_timeout_s,
        )
        self._max_retry_after_s = max_retry_after_s

    async def apply(self, events: Sequence[RevocationEvent]) -> None:
        for event in events:
            await self._deliver(event)

    async def _deliver(self, event: RevocationEvent) -> None:
        body = event.to_bytes()
        now = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": event.event_id,
            "webhook-timestamp": str(now),
            "webhook-signature": sign(self._key, event.event_id, now, body),
        }
        traceparent = tracing.by_event.get().get(event.event_id)
        if traceparent is not None:
            headers[tracing.HEADER] = tracing.child(traceparent)
        with map_http_errors():
            async with self._http.post(
                self._url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as resp:
                status = resp.status
                retry_after = _retry_after(resp.headers.get("Retry-After"), self._max_retry_after_s)
                await resp.read()
        if 200 <= status < 300:
            return
        if status in _RETRIABLE or status >= 500:
            raise SinkUnavailable(
                f"subscriber answered {status}",
                code="http_retriable_status",
                http_status=status,
                retry_after_s=retry_after,
            )
        raise SinkRejected(
            f"subscriber answered {status}", code="http_rejected", http_status=status
        )


def build(config: HttpSinkConfig, *, http: aiohttp.ClientSession) -> HttpSink:
    check_target(config.url, config.allow_private)
    return HttpSink(
        http=http,
        url=config.url,
        key=decode_secret(config.secret.get_secret_value()),
        connect_timeout_s=config.connect_timeout_s,
        read_timeout_s=config.read_timeout_s,
        max_retry_after_s=config.max_retry_after_s,
    )
