"""Shared fixtures: a clean environment and structlog state for every test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings read the environment; a developer's PROPAGATOR_* must not leak into tests."""
    import os

    for name in list(os.environ):
        if name.startswith("PROPAGATOR_"):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def load_fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def fixture_bytes(name: str) -> bytes:
    """A fixture as compact JSON bytes, the way a webhook body arrives."""
    return json.dumps(load_fixture(name), separators=(",", ":")).encode()
