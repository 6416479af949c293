"""Secrets as configured for a source: inline (comma-separated in env) and/or a file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr
from pydantic_settings import NoDecode


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


# Several active secrets at once, for rotation. From the environment: "a,b".
SecretList = Annotated[list[SecretStr], NoDecode, BeforeValidator(_split)]


def read_secrets(secrets: Sequence[SecretStr], secret_file: Path | None) -> list[str]:
    """Every active secret: the inline ones, then one per non-empty line of the file."""
    found = [s.get_secret_value() for s in secrets]
    if secret_file is not None:
        lines = secret_file.read_text(encoding="utf-8").splitlines()
        found.extend(line.strip() for line in lines if line.strip())
    return found
