"""Generates the JSON Schema files in ``schemas/json/`` from the pydantic models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from schemas._revocation import RevocationEvent

JSON_DIR = Path(__file__).parent / "json"

_MODELS: dict[str, type[RevocationEvent]] = {
    "revocation-event.v1.json": RevocationEvent,
}


def generate() -> dict[str, dict[str, Any]]:
    """The JSON Schema documents, by file name."""
    return {
        name: {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            **model.model_json_schema(),
        }
        for name, model in _MODELS.items()
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, document in generate().items():
        path = directory / name
        path.write_text(render(document))
        written.append(path)
    return written
