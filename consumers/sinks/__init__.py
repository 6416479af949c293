"""Sinks apply revocations to one downstream. Every sink is idempotent: applying twice is safe."""

from consumers.sinks._base import Sink
from consumers.sinks.redis_denylist import RedisDenylistSink

__all__ = ["RedisDenylistSink", "Sink"]
