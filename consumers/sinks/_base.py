"""The shape every sink has."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from schemas import RevocationEvent


class Sink(Protocol):
    """Applies revocations to one downstream.

    ``apply`` must be idempotent and must return only once the downstream confirmed the
    change. It raises ``SinkUnavailable`` (retriable) or ``SinkRejected`` (permanent).
    """

    @property
    def kind(self) -> str: ...

    async def apply(self, events: Sequence[RevocationEvent]) -> None: ...
