"""The wire contract: the canonical revocation event that ingest publishes to Kafka.

Downstream teams in other languages read the JSON Schema files in ``schemas/json/``;
Python code imports the pydantic models from here. A test keeps the two in sync.
"""

from schemas._revocation import (
    SCHEMA_VERSION,
    RevocationEvent,
    RevocationScope,
)

__all__ = ["SCHEMA_VERSION", "RevocationEvent", "RevocationScope"]
