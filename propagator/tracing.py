"""W3C Trace Context: a ``traceparent`` that travels from the webhook request, through the
Kafka record's headers, to every sink call.

This is propagation only, with no dependency: a tracing backend joins the spans it sees by
their trace id. (An OpenTelemetry exporter can adopt the same header.)
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from contextvars import ContextVar
from types import MappingProxyType

HEADER = "traceparent"
_VALID = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")

# The trace of the request being served (ingest).
current: ContextVar[str | None] = ContextVar("traceparent", default=None)
# The trace of each event in the batch being applied (workers), by event id.
by_event: ContextVar[Mapping[str, str]] = ContextVar(
    "traceparent_by_event", default=MappingProxyType({})
)


def valid(value: str | None) -> bool:
    return value is not None and _VALID.match(value) is not None


def continue_or_start(value: str | None) -> str:
    """The caller's trace, as a new span of it; or a new trace when it sent none (or junk)."""
    if value is not None and valid(value):
        return child(value)
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child(traceparent: str) -> str:
    """A new span id in the same trace, keeping the flags."""
    version, trace_id, _, flags = traceparent.split("-")
    return f"{version}-{trace_id}-{secrets.token_hex(8)}-{flags}"


def trace_id(traceparent: str) -> str:
    return traceparent.split("-")[1]
