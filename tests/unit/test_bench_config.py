"""The bench's --set: settings handed to every service a run starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench._config import Plan, Run, parse_override


def test_a_known_setting_is_parsed() -> None:
    assert ("worker.fetch_min_bytes", "65536") == parse_override("worker.fetch_min_bytes=65536")


@pytest.mark.parametrize(
    "text", ["worker.no_such_setting=1", "worker.fetch_min_bytes", "=1", "worker..x=1"]
)
def test_an_unknown_or_malformed_setting_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a known setting"):
        parse_override(text)


def test_overrides_reach_every_service_environment(tmp_path: Path) -> None:
    run = Run.make(
        repo=tmp_path,
        plan=Plan.make(quick=True),
        overrides=[("worker.fetch_max_wait_ms", "5"), ("kafka.linger_ms", "0")],
    )
    env = run.service_env(topic="t", port=1234)
    assert "5" == env["PROPAGATOR_WORKER__FETCH_MAX_WAIT_MS"]
    assert "0" == env["PROPAGATOR_KAFKA__LINGER_MS"]
    assert "t" == env["PROPAGATOR_KAFKA__TOPIC"]
