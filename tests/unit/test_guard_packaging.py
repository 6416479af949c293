"""The guard's packaging promises: a small import, and a curated public surface."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest

import propagator.guard

# What a downstream application must not pull in by importing the guard: the service's
# dependencies, and the ingest and fan-out sides of this repository.
FORBIDDEN = (
    "aiokafka",
    "aiohttp",
    "structlog",
    "pydantic",
    "pydantic_settings",
    "prometheus_client",
    "tenacity",
    "jwt",
    "yaml",
    "consumers",
    "schemas",
)


def imported_after(statement: str) -> list[str]:
    """The modules loaded by a fresh interpreter that runs ``statement``."""
    script = f"{statement}; import sys, json; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    modules: list[str] = json.loads(result.stdout)
    return modules


def offending(modules: list[str], allowed_own: tuple[str, ...]) -> list[str]:
    return [
        name
        for name in modules
        if name.split(".")[0] in FORBIDDEN
        or (name.startswith("propagator.") and not name.startswith(allowed_own))
    ]


class TestImportWeight:
    def test_core_imports_only_redis_and_the_standard_library(self) -> None:
        """`import propagator.guard` loads no service dependency and no other propagator module."""
        modules = imported_after("import propagator.guard")
        assert "propagator.guard._guard" in modules  # the probe really imported the guard
        assert "redis.asyncio" in modules
        assert [] == offending(modules, ("propagator.guard",))

    def test_asgi_middleware_adds_no_framework(self) -> None:
        """The ASGI middleware is plain ASGI: no Starlette, no aiohttp."""
        modules = imported_after("import propagator.guard.asgi")
        assert "propagator.guard.asgi" in modules
        assert [] == offending(modules, ("propagator.guard",))
        assert not [m for m in modules if m.split(".")[0] in ("starlette", "fastapi")]

    def test_aiohttp_middleware_imports_aiohttp_only_when_asked(self) -> None:
        """aiohttp comes with propagator.guard.aiohttp, and nothing else from the service."""
        modules = imported_after("import propagator.guard.aiohttp")
        assert "aiohttp" in modules
        assert [] == [
            m
            for m in offending(modules, ("propagator.guard",))
            if m != "aiohttp" and not m.startswith("aiohttp.")
        ]

    def test_propagator_package_init_stays_empty(self) -> None:
        """propagator/__init__.py imports nothing, or the guard would drag the service in."""
        modules = imported_after("import propagator")
        assert [] == [m for m in modules if m.startswith("propagator.")]


class TestPublicSurface:
    def test_all_lists_exactly_the_public_names(self) -> None:
        """__all__ and the package's public names agree, so the API cannot drift unnoticed."""
        public = {
            name
            for name, value in vars(propagator.guard).items()
            if not name.startswith("_") and not isinstance(value, types.ModuleType)
        }
        assert public == set(propagator.guard.__all__)

    @pytest.mark.parametrize("name", propagator.guard.__all__)
    def test_public_names_are_documented(self, name: str) -> None:
        """Every exported class says what it is for."""
        value = getattr(propagator.guard, name)
        if isinstance(value, type):
            assert value.__doc__
            assert value.__module__.startswith("propagator.guard._")
