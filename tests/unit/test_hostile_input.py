"""No input gives a 500: every source kind refuses garbage with a typed error and a code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from propagator.app import create_app
from propagator.dedupe import PublishOnce
from propagator.errors import PropagatorError
from propagator.metrics import IngestMetrics
from propagator.ratelimit import RateLimiter
from propagator.settings import IngestSettings
from propagator.sources import Delivery, Source, SourceConfig, build_source
from tests.unit.test_app import FakeBroker, FakePublisher

CONFIGS: list[dict[str, Any]] = [
    {"name": "workos", "kind": "workos", "secrets": ["s"]},
    {
        "name": "clerk",
        "kind": "standard-webhooks",
        "secrets": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"],
    },
    {
        "name": "keycloak",
        "kind": "oidc-backchannel",
        "issuer": "https://i",
        "audience": "a",
        "jwks_uri": "http://127.0.0.1:1/jwks",
    },
    {
        "name": "caep",
        "kind": "ssf",
        "issuer": "https://i",
        "audience": "a",
        "jwks_uri": "http://127.0.0.1:1/jwks",
    },
    {"name": "okta", "kind": "okta", "authorization": ["secret"]},
    {"name": "inhouse", "kind": "hmac", "secrets": ["s"], "event_types": {"x": "user"}},
]


class _NoHTTP:
    """JWKS must never be fetched for input that is not even a well-formed token."""

    def get(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("garbage input reached the JWKS fetch")


def sources() -> dict[str, Source]:
    from pydantic import TypeAdapter

    adapter: TypeAdapter[SourceConfig] = TypeAdapter(SourceConfig)
    built = {}
    for raw in CONFIGS:
        config = adapter.validate_python(raw)
        built[config.name] = build_source(config, http=_NoHTTP())  # type: ignore[arg-type]
    return built


SOURCES = sources()
HEADER_NAMES = st.sampled_from(
    [
        "WorkOS-Signature",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "svix-signature",
        "Authorization",
        "X-Signature",
        "Content-Type",
    ]
)


class TestSourcesNeverCrash:
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        name=st.sampled_from(sorted(SOURCES)),
        body=st.one_of(st.binary(max_size=512), st.text(max_size=512).map(str.encode)),
        headers=st.dictionaries(HEADER_NAMES, st.text(max_size=200), max_size=6),
        content_type=st.sampled_from(
            [
                "",
                "application/json",
                "application/x-www-form-urlencoded",
                "application/secevent+jwt",
                "text/plain",
            ]
        ),
    )
    def test_arbitrary_deliveries_raise_only_typed_errors(
        self, name: str, body: bytes, headers: dict[str, str], content_type: str
    ) -> None:
        """Random bodies and headers are refused with a PropagatorError (a status and a code)."""
        delivery = Delivery("POST", headers, body, content_type, datetime.now(UTC))
        with pytest.raises(PropagatorError) as refused:
            asyncio.run(SOURCES[name].receive(delivery))
        assert 400 <= refused.value.status < 500
        assert refused.value.code


NASTY_BODIES = [
    b"",
    b"\xff\xfe\x00garbage",
    b"[" * 50_000 + b"]" * 50_000,
    b'{"id": 1' + b"0" * 5000 + b"}",
    b'{"type": "session.revoked", "data": {"id": 1e999}}',
    b"logout_token=" + b"%ff" * 100,
    b"\x00" * 1000,
]


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    app = create_app(
        settings=IngestSettings(),
        sources=SOURCES,
        publisher=PublishOnce(publisher=FakePublisher(), claims=None),
        broker=FakeBroker(),
        limiter=RateLimiter(per_source=None, per_client=None),
        metrics=IngestMetrics(CollectorRegistry()),
    )
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


class TestHTTPNeverCrashes:
    @pytest.mark.parametrize("name", sorted(SOURCES))
    @pytest.mark.parametrize("body", NASTY_BODIES, ids=range(len(NASTY_BODIES)))
    @pytest.mark.parametrize(
        "content_type",
        ["application/json", "application/x-www-form-urlencoded", "application/secevent+jwt"],
    )
    async def test_nasty_bodies(
        self, client: TestClient, name: str, body: bytes, content_type: str
    ) -> None:
        """Non-UTF-8, deep JSON, huge numbers, NULs and empty bodies: 4xx with a JSON body."""
        resp = await client.post(
            f"/webhooks/{name}", data=body, headers={"Content-Type": content_type}
        )
        assert 400 <= resp.status < 500, await resp.text()
        assert await resp.json()

    @pytest.mark.parametrize("name", sorted(SOURCES))
    async def test_malformed_signature_headers(self, client: TestClient, name: str) -> None:
        """Header values with odd characters are refused, not crashed on."""
        headers = {
            "WorkOS-Signature": "t=9" * 300,
            "webhook-id": "x",
            "webhook-timestamp": "1" * 40,
            "webhook-signature": "v1," + "=" * 500,
            "Authorization": "\u00e9" * 50,
            "X-Signature": "zz",
        }
        resp = await client.post(f"/webhooks/{name}", data=b"{}", headers=headers)
        assert 400 <= resp.status < 500


def _signed_headers(name: str, body: bytes) -> dict[str, str]:
    import hashlib
    import hmac
    import time

    from propagator.sources import sign_workos
    from propagator.sources.standard_webhooks import decode_secret, sign_standard

    if name == "workos":
        return {"WorkOS-Signature": sign_workos(b"s", body, int(time.time() * 1000))}
    if name == "clerk":
        now = int(time.time())
        key = decode_secret(CONFIGS[1]["secrets"][0])
        return {
            "webhook-id": "m",
            "webhook-timestamp": str(now),
            "webhook-signature": sign_standard(key, "m", now, body),
        }
    if name == "okta":
        return {"Authorization": "secret"}
    return {"X-Signature": hmac.new(b"s", body, hashlib.sha256).hexdigest()}


class TestAuthenticatedGarbage:
    @pytest.mark.parametrize("name", ["workos", "clerk", "okta", "inhouse"])
    @pytest.mark.parametrize("body", NASTY_BODIES, ids=range(len(NASTY_BODIES)))
    async def test_correctly_signed_garbage_is_a_400(
        self, client: TestClient, name: str, body: bytes
    ) -> None:
        """A sender with a valid secret but a broken body gets 400 malformed_payload, never 500."""
        headers = {"Content-Type": "application/json", **_signed_headers(name, body)}
        resp = await client.post(f"/webhooks/{name}", data=body, headers=headers)
        assert 400 == resp.status, await resp.text()
        assert "malformed_payload" == (await resp.json())["error"]["code"]
