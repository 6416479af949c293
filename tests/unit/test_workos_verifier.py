"""The WorkOS signature verifier, against the published vector and hostile variations."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from propagator.errors import SignatureInvalid, TimestampOutOfTolerance
from propagator.sources import WorkOSVerifier, sign_workos

# Published in workos-python tests/test_webhooks.py (last present at f57e7cca).
VECTOR_SECRET = b"2sAZJlbjP8Ce3rwkKEv2GfKef"
VECTOR_TS_MS = 1722443701539
VECTOR_HEADER = (
    "t=1722443701539, v1=bd54a3768f461461c8439c2f97ab0d646ef3976f84d5d5b132d18f2fa89cdad5"
)
VECTOR_BODY = (
    b'{"id":"event_01J44T8116Q5M0RYCFA6KWNXN9","data":{"id":"conn_01EHWNC0FCBHZ3BJ7EGKYXK0E6",'
    b'"name":"Foo Corp\'s Connection","state":"active","object":"connection","status":"linked",'
    b'"domains":[{"id":"conn_domain_01EHWNFTAFCF3CQAE5A9Q0P1YB","domain":"foo-corp.com",'
    b'"object":"connection_domain"}],"created_at":"2021-06-25T19:07:33.155Z",'
    b'"updated_at":"2021-06-25T19:07:33.155Z","external_key":"3QMR4u0Tok6SgwY2AWG6u6mkQ",'
    b'"connection_type":"OktaSAML","organization_id":"org_01EHWNCE74X7JSDV0X3SZ3KJNY"},'
    b'"event":"connection.activated","created_at":"2021-06-25T19:07:33.155Z"}'
)
VECTOR2_HEADER = (
    "t=1722443701539, v1=f82f88dd60d5bc8a803686a27f83ce148b8c37c54490c52b77d00d62da891f1b"
)
VECTOR2_BODY = (
    b'{"id":"event_01J44T8116Q5M0RYCFA6KWNXN9","data":{"id":"meow_123","name":"Meow Corp",'
    b'"object":"kitten","status":"cuteness","created_at":"2021-06-25T19:07:33.155Z",'
    b'"updated_at":"2021-06-25T19:07:33.155Z"},"event":"kitten.created",'
    b'"created_at":"2021-06-25T19:07:33.155Z"}'
)


def at(ts_ms: int, *, secrets: tuple[bytes, ...] = (VECTOR_SECRET,), tolerance_s: float = 180):
    return WorkOSVerifier(secrets=secrets, tolerance_s=tolerance_s, clock=lambda: ts_ms / 1000)


class TestPublishedVectors:
    def test_first_vector_verifies(self) -> None:
        """The SDK's published header and body verify with its secret."""
        at(VECTOR_TS_MS).verify(VECTOR_HEADER, VECTOR_BODY)

    def test_second_vector_verifies(self) -> None:
        """The second published body verifies too."""
        at(VECTOR_TS_MS).verify(VECTOR2_HEADER, VECTOR2_BODY)

    def test_signing_reproduces_the_vector(self) -> None:
        """Our signer produces exactly the header WorkOS sent."""
        assert VECTOR_HEADER == sign_workos(VECTOR_SECRET, VECTOR_BODY, VECTOR_TS_MS)

    def test_wrong_secret_is_refused(self) -> None:
        """The SDK's negative case: secret 'this_is_not_it_123'."""
        with pytest.raises(SignatureInvalid):
            at(VECTOR_TS_MS, secrets=(b"this_is_not_it_123",)).verify(VECTOR_HEADER, VECTOR_BODY)

    def test_header_without_timestamp_is_refused(self) -> None:
        """The SDK's negative case: a header with only v1=."""
        with pytest.raises(SignatureInvalid, match="timestamp"):
            at(VECTOR_TS_MS).verify(VECTOR_HEADER.split(", ")[1], VECTOR_BODY)

    def test_signature_swapped_between_bodies_is_refused(self) -> None:
        """A valid signature of one body does not authenticate another."""
        with pytest.raises(SignatureInvalid):
            at(VECTOR_TS_MS).verify(VECTOR2_HEADER, VECTOR_BODY)


class TestTimestamps:
    def test_stale_by_more_than_tolerance_is_refused(self) -> None:
        """181 s old with the default 180 s tolerance: stale, with its own error."""
        with pytest.raises(TimestampOutOfTolerance):
            at(VECTOR_TS_MS + 181_000).verify(VECTOR_HEADER, VECTOR_BODY)

    def test_just_inside_tolerance_passes(self) -> None:
        """179 s old still verifies."""
        at(VECTOR_TS_MS + 179_000).verify(VECTOR_HEADER, VECTOR_BODY)

    def test_future_beyond_tolerance_is_refused(self) -> None:
        """Like the Python and Go SDKs, a timestamp far in the future is refused."""
        with pytest.raises(TimestampOutOfTolerance):
            at(VECTOR_TS_MS - 181_000).verify(VECTOR_HEADER, VECTOR_BODY)

    def test_seconds_instead_of_milliseconds_is_stale(self) -> None:
        """A sender using seconds produces a timestamp decades in the past."""
        ts_s = VECTOR_TS_MS // 1000
        header = sign_workos(VECTOR_SECRET, VECTOR_BODY, ts_s)
        with pytest.raises(TimestampOutOfTolerance):
            at(VECTOR_TS_MS).verify(header, VECTOR_BODY)

    def test_stale_check_uses_the_configured_tolerance(self) -> None:
        """tolerance_s is honoured: 10 s allows 9 s, refuses 11 s."""
        at(VECTOR_TS_MS + 9_000, tolerance_s=10).verify(VECTOR_HEADER, VECTOR_BODY)
        with pytest.raises(TimestampOutOfTolerance):
            at(VECTOR_TS_MS + 11_000, tolerance_s=10).verify(VECTOR_HEADER, VECTOR_BODY)


class TestHeaderParsing:
    @pytest.mark.parametrize(
        "header",
        [
            "t=1722443701539,v1=bd54a3768f461461c8439c2f97ab0d646ef3976f84d5d5b132d18f2fa89cdad5",
            "  t=1722443701539 ,  v1="
            "bd54a3768f461461c8439c2f97ab0d646ef3976f84d5d5b132d18f2fa89cdad5 ",
            "v1=bd54a3768f461461c8439c2f97ab0d646ef3976f84d5d5b132d18f2fa89cdad5, t=1722443701539",
        ],
    )
    def test_whitespace_and_order_are_tolerated(self, header: str) -> None:
        """As in the Node and Go SDKs, spaces and part order do not matter."""
        at(VECTOR_TS_MS).verify(header, VECTOR_BODY)

    @pytest.mark.parametrize(
        "header",
        [
            "",
            "garbage",
            "t=, v1=abc",
            "t=12ab, v1=bd54",
            "t=1722443701539",
            "t=1722443701539, v1=",
            "t=1722443701539, v0=bd54a3768f461461c8439c2f97ab0d646ef3976f84d5d5b132d18f2fa89cdad5",
            "t=１７２２, v1=bd54",  # noqa: RUF001 - full-width digits are not ASCII
        ],
    )
    def test_malformed_headers_are_refused(self, header: str) -> None:
        """Anything that is not t=<digits>, v1=<sig> is an invalid signature."""
        with pytest.raises(SignatureInvalid):
            at(VECTOR_TS_MS).verify(header, VECTOR_BODY)

    def test_missing_header_is_refused(self) -> None:
        """No header at all."""
        with pytest.raises(SignatureInvalid, match="missing"):
            at(VECTOR_TS_MS).verify(None, VECTOR_BODY)

    def test_uppercase_hex_is_refused(self) -> None:
        """WorkOS sends lowercase hex; the comparison is exact."""
        ts, sig = VECTOR_HEADER.split(", ")
        with pytest.raises(SignatureInvalid):
            at(VECTOR_TS_MS).verify(f"{ts}, {sig.upper().replace('V1=', 'v1=')}", VECTOR_BODY)


class TestRotation:
    def test_any_active_secret_verifies(self) -> None:
        """During rotation both the old and the new secret are accepted."""
        verifier = at(VECTOR_TS_MS, secrets=(b"whsec_new", VECTOR_SECRET))
        verifier.verify(VECTOR_HEADER, VECTOR_BODY)
        new_header = sign_workos(b"whsec_new", VECTOR_BODY, VECTOR_TS_MS)
        verifier.verify(new_header, VECTOR_BODY)

    def test_no_secrets_is_a_configuration_error(self) -> None:
        """A verifier without secrets cannot be built."""
        with pytest.raises(ValueError, match="secret"):
            WorkOSVerifier(secrets=[])

    def test_whsec_prefix_is_part_of_the_key(self) -> None:
        """WorkOS uses the secret string as is: 'whsec_' is not stripped or decoded."""
        body = b"{}"
        digest = hmac.new(b"whsec_abc", f"{VECTOR_TS_MS}.".encode() + body, hashlib.sha256)
        header = f"t={VECTOR_TS_MS}, v1={digest.hexdigest()}"
        at(VECTOR_TS_MS, secrets=(b"whsec_abc",)).verify(header, body)
        with pytest.raises(SignatureInvalid):
            at(VECTOR_TS_MS, secrets=(b"abc",)).verify(header, body)


class TestTamperingProperties:
    @given(position=st.integers(min_value=0), flip=st.integers(min_value=1, max_value=255))
    def test_any_changed_byte_is_refused(self, position: int, flip: int) -> None:
        """Flipping any bit pattern of any body byte breaks the signature."""
        body = bytearray(VECTOR_BODY)
        body[position % len(body)] ^= flip
        with pytest.raises(SignatureInvalid):
            at(VECTOR_TS_MS).verify(VECTOR_HEADER, bytes(body))

    @given(extra=st.binary(min_size=1, max_size=64))
    def test_appended_bytes_are_refused(self, extra: bytes) -> None:
        """A body with anything appended (trailing newline, BOM, payload) fails."""
        with pytest.raises(SignatureInvalid):
            at(VECTOR_TS_MS).verify(VECTOR_HEADER, VECTOR_BODY + extra)

    @given(header=st.text(max_size=200))
    def test_arbitrary_headers_never_crash(self, header: str) -> None:
        """Random header text is refused with a typed error, never an unexpected exception."""
        with pytest.raises((SignatureInvalid, TimestampOutOfTolerance)):
            at(VECTOR_TS_MS).verify(header, VECTOR_BODY)
