"""W3C traceparent handling."""

from __future__ import annotations

import pytest

from propagator import tracing

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class TestTraceparent:
    def test_a_valid_caller_trace_is_continued(self) -> None:
        """Same trace id and flags, a new span id."""
        continued = tracing.continue_or_start(GOOD)
        assert tracing.valid(continued)
        assert "4bf92f3577b34da6a3ce929d0e0e4736" == tracing.trace_id(continued)
        assert continued.endswith("-01")
        assert continued != GOOD

    @pytest.mark.parametrize(
        "junk",
        [
            None,
            "",
            "garbage",
            "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
            GOOD.upper(),
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ],
    )
    def test_junk_starts_a_new_trace(self, junk: str | None) -> None:
        """A missing or malformed header never propagates; a fresh trace starts."""
        started = tracing.continue_or_start(junk)
        assert tracing.valid(started)
        assert "4bf92f3577b34da6a3ce929d0e0e4736" != tracing.trace_id(started)
