"""The http sink: Standard Webhooks signing, status mapping, Retry-After, SSRF guard."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from consumers.sinks.http import (
    GuardedResolver,
    HttpSink,
    TargetForbidden,
    _retry_after,
    check_target,
)
from propagator.errors import SinkDown, SinkRejected, SinkUnavailable
from propagator.sources.standard_webhooks import decode_secret
from schemas import RevocationEvent, RevocationScope

WHSEC = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def event() -> RevocationEvent:
    now = datetime.now(UTC)
    return RevocationEvent(
        event_id="event_h",
        source="workos",
        source_kind="workos",
        type="session.revoked",
        scope=RevocationScope.SESSION,
        session_id="s",
        user_id="u",
        occurred_at=now,
        received_at=now,
        payload_sha256="0" * 64,
    )


@pytest.fixture
async def target() -> AsyncIterator[tuple[TestServer, list[web.Response], list[dict[str, object]]]]:
    answers: list[web.Response] = []
    verified: list[dict[str, object]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        verified.append(Webhook(WHSEC).verify(body, dict(request.headers)))
        return answers.pop(0) if answers else web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield server, answers, verified
    await server.close()


async def deliver(server: TestServer) -> None:
    async with aiohttp.ClientSession() as http:
        sink = HttpSink(http=http, url=str(server.make_url("/hook")), key=decode_secret(WHSEC))
        await sink.apply([event()])


class TestDelivery:
    async def test_signed_so_a_standard_library_verifies_it(self, target) -> None:  # type: ignore[no-untyped-def]
        """The reference Standard Webhooks verifier accepts our signature; id = event id."""
        server, _, verified = target
        await deliver(server)
        assert "event_h" == verified[0]["event_id"]

    @pytest.mark.parametrize("status", [408, 429, 500, 502, 503])
    async def test_retriable_statuses(self, target, status: int) -> None:  # type: ignore[no-untyped-def]
        """408, 429 and 5xx are retriable, with the status kept."""
        server, answers, _ = target
        answers.append(web.Response(status=status, headers={"Retry-After": "7"}))
        with pytest.raises(SinkUnavailable) as failed:
            await deliver(server)
        assert (status, 7.0) == (failed.value.http_status, failed.value.retry_after_s)

    @pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
    async def test_other_4xx_are_permanent(self, target, status: int) -> None:  # type: ignore[no-untyped-def]
        """Other 4xx will not get better by retrying."""
        server, answers, _ = target
        answers.append(web.Response(status=status))
        with pytest.raises(SinkRejected) as failed:
            await deliver(server)
        assert status == failed.value.http_status

    async def test_connection_refused_is_down(self) -> None:
        """Nobody listening: the downstream is down, which opens the circuit."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        async with aiohttp.ClientSession() as http:
            sink = HttpSink(
                http=http, url=f"http://127.0.0.1:{port}/x", key=b"k", connect_timeout_s=0.5
            )
            with pytest.raises(SinkDown):
                await sink.apply([event()])


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [("5", 5.0), ("0", 0.0), ("99999", 600.0), ("soon", None), (None, None), ("-3", 0.0)],
    )
    def test_parsing_is_bounded(self, value: str | None, expected: float | None) -> None:
        """Seconds or an HTTP date, clamped to [0, max]; nonsense is ignored."""
        assert expected == _retry_after(value, 600.0)


class _Fixed(AbstractResolver):
    def __init__(self, *addresses: str) -> None:
        self._addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(hostname=host, host=a, port=port, family=family, proto=0, flags=0)
            for a in self._addresses
        ]

    async def close(self) -> None:
        return None


class TestSSRFGuard:
    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1/x",
            "http://10.0.0.5/x",
            "http://169.254.169.254/latest",
            "http://[::1]/x",
            "http://192.168.1.1/",
            "http://localhost/x",
            "ftp://example.com/x",
            "http:///nohost",
        ],
    )
    def test_forbidden_literal_targets_fail_at_start(self, url: str) -> None:
        """Loopback, private, link-local (cloud metadata) and non-http targets are refused."""
        with pytest.raises(ValueError, match=r"refused|private|http"):
            check_target(url, allow=[])

    def test_allow_list_admits_a_private_target(self) -> None:
        """An in-cluster subscriber is allowed when listed."""
        check_target("http://10.0.0.5/x", allow=["10.0.0.5"])
        check_target("https://hooks.example.com/x", allow=[])

    async def test_names_resolving_to_private_addresses_are_refused(self) -> None:
        """DNS that answers with a private address is refused at connection time."""
        resolver = GuardedResolver(allow=[], inner=_Fixed("10.1.2.3", "127.0.0.1"))
        with pytest.raises(TargetForbidden):
            await resolver.resolve("evil.example.com", 80)

    async def test_public_addresses_pass_and_private_ones_are_dropped(self) -> None:
        """Mixed answers keep only the public addresses."""
        resolver = GuardedResolver(allow=[], inner=_Fixed("10.1.2.3", "93.184.215.14"))
        assert ["93.184.215.14"] == [
            r["host"] for r in await resolver.resolve("mixed.example.com", 80)
        ]

    async def test_allow_listed_name_passes(self) -> None:
        """A listed host name may resolve privately."""
        resolver = GuardedResolver(allow=["billing.internal"], inner=_Fixed("10.1.2.3"))
        assert ["10.1.2.3"] == [r["host"] for r in await resolver.resolve("billing.internal", 80)]
