"""Reading sessions from requests: unverified JWT claims, bearer headers and cookies."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from propagator.guard import Claims
from propagator.guard._claims import bearer_token, cookie_value
from tests.unit.guard_fakes import unsigned_jwt


def with_payload(payload: bytes) -> str:
    body = base64.urlsafe_b64encode(payload).rstrip(b"=").decode()
    return f"eyJhbGciOiJIUzI1NiJ9.{body}.sig"


class TestClaimsFromJwt:
    def test_workos_access_token_claims(self) -> None:
        """sid, sub, org_id and iat are taken from a WorkOS-shaped access token."""
        token = unsigned_jwt(
            {"sid": "session_1", "sub": "user_1", "org_id": "org_1", "iat": 1700000000}
        )
        assert Claims("session_1", "user_1", "org_1", 1700000000.0) == Claims.from_jwt(token)

    def test_token_without_sid_still_names_its_user(self) -> None:
        """Without sid the user and organization watermarks can still be checked."""
        assert Claims(None, "user_1", None, 5.0) == Claims.from_jwt(
            unsigned_jwt({"sub": "user_1", "iat": 5})
        )

    def test_token_naming_nobody_is_none(self) -> None:
        """A JWT with none of sid, sub, org_id has nothing to check."""
        assert Claims.from_jwt(unsigned_jwt({"iat": 5, "scope": "read"})) is None

    @pytest.mark.parametrize(
        "claims",
        [
            {"sid": 7, "sub": ["u"], "org_id": {"o": 1}},
            {"sid": "", "sub": ""},
        ],
    )
    def test_claims_of_the_wrong_type_count_as_absent(self, claims: dict[str, object]) -> None:
        """Identifiers must be non-empty strings."""
        assert Claims.from_jwt(unsigned_jwt(claims)) is None

    @pytest.mark.parametrize("iat", ["1700000000", True, None, 10**400, [1]])
    def test_unusable_iat_is_none(self, iat: object) -> None:
        """An iat that is not a finite number is unknown, which any watermark refuses."""
        claims = Claims.from_jwt(unsigned_jwt({"sid": "s", "iat": iat}))
        assert claims is not None
        assert claims.issued_at is None

    @pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
    def test_non_finite_iat_is_none(self, literal: bytes) -> None:
        """Python's json accepts NaN and Infinity; neither may pass a watermark."""
        claims = Claims.from_jwt(with_payload(b'{"sid": "s", "iat": ' + literal + b"}"))
        assert claims is not None
        assert claims.issued_at is None

    @pytest.mark.parametrize(
        "token",
        [
            "",
            "opaque-api-key",
            "a.b",
            "a.b.c.d",
            "a.!!!!.c",
            with_payload(b"\xff\xfe"),
            with_payload(b"[1, 2]"),
            with_payload(b'"sid"'),
            with_payload(b"[" * 5_000 + b"]" * 5_000),  # RecursionError, within the size limit
            unsigned_jwt({"sid": "s" * 20_000}),
        ],
        ids=[
            "empty",
            "opaque",
            "two-parts",
            "four-parts",
            "bad-base64",
            "not-utf8",
            "json-array",
            "json-string",
            "deeply-nested",
            "oversized",
        ],
    )
    def test_malformed_tokens_are_none(self, token: str) -> None:
        """Anything that is not a readable JWT yields None, never an exception."""
        assert Claims.from_jwt(token) is None

    @given(st.text(max_size=300))
    def test_never_raises_on_any_text(self, token: str) -> None:
        """Whatever a client sends, decoding returns Claims or None."""
        result = Claims.from_jwt(token)
        assert result is None or isinstance(result, Claims)

    @given(
        st.dictionaries(
            st.sampled_from(["sid", "sub", "org_id", "iat", "exp"]),
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
        )
    )
    def test_never_raises_on_any_claim_values(self, claims: dict[str, object]) -> None:
        """Claims of any JSON type give Claims with well-typed fields, or None."""
        token = with_payload(json.dumps(claims).encode())
        result = Claims.from_jwt(token)
        if result is not None:
            assert result.issued_at is None or isinstance(result.issued_at, float)
            assert result.session_id is None or isinstance(result.session_id, str)


class TestBearerToken:
    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("Bearer abc.def.ghi", "abc.def.ghi"),
            ("bearer   abc", "abc"),
            ("BEARER abc ", "abc"),
            ("Basic dXNlcjpwYXNz", None),
            ("Bearer", None),
            ("Bearer ", None),
            ("", None),
            (None, None),
        ],
    )
    def test_parses_the_authorization_header(
        self, header: str | None, expected: str | None
    ) -> None:
        """Only the Bearer scheme (case-insensitive) yields a token."""
        assert expected == bearer_token(header)


class TestCookieValue:
    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("session=abc", "abc"),
            ("theme=dark; session=abc; x=1", "abc"),
            ('session="abc"', "abc"),
            ("xsession=abc; session=def", "def"),
            ("session=", None),
            ("theme=dark", None),
            ("garbage;;;==; =", None),
            (None, None),
        ],
    )
    def test_finds_the_named_cookie(self, header: str | None, expected: str | None) -> None:
        """The named cookie's value, leniently parsed; nothing else matches."""
        assert expected == cookie_value(header, "session")
