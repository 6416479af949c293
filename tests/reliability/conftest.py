"""Fixtures for the reliability suite, and the report it writes.

Every scenario records its counts with the ``report`` fixture. The rows are printed at the end
of the run and, when RELIABILITY_REPORT names a file (``make test-reliability`` sets it to
docs/reliability.md), written there as a table.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.integration.conftest import _real_services  # noqa: F401 - fail when services are missing
from tests.reliability.harness import Counts, HttpSubscriber, Observer

_ROWS: list[Counts] = []


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
def report() -> Callable[[Counts], None]:
    def add(counts: Counts) -> None:
        _ROWS.append(counts)
        print(f"reliability: {counts.row()}", file=sys.stderr)

    return add


@pytest.fixture
def http_subscriber() -> HttpSubscriber:
    return HttpSubscriber()


@pytest.fixture
async def shared_observer(unique: str, http_subscriber: HttpSubscriber) -> AsyncIterator[Observer]:
    """An observer on the shared test Redis; removes every key of the test afterwards."""
    from tests.reliability.harness import REDIS_URL

    observer = Observer(REDIS_URL, unique, http_subscriber)
    yield observer
    await observer.close()


_HEADER = (
    "| scenario | events sent | accepted | applied | lost | duplicated | recovery (s) "
    "| duration (s) | notes |\n|---|---|---|---|---|---|---|---|---|\n"
)


def _table() -> str:
    lines = []
    for c in _ROWS:
        recovery = "" if c.recovery_s is None else f"{c.recovery_s:.1f}"
        lines.append(
            f"| {c.scenario} | {c.sent} | {c.accepted} | {c.applied} | {c.lost} | "
            f"{c.duplicated} | {recovery} | {c.duration_s:.1f} | {c.notes} |"
        )
    return _HEADER + "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _ROWS:
        terminalreporter.write_sep("-", "reliability counts")
        terminalreporter.write(_table())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    target = os.environ.get("RELIABILITY_REPORT")
    if not target or not _ROWS:
        return
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        "# Reliability report\n\n"
        "Written by the suite itself (`tests/reliability/`), with:\n\n"
        "```sh\nmake test-reliability\n```\n\n"
        f"Run: {when}, pytest exit status {int(exitstatus)}. Every scenario runs the real "
        "`propagator ingest` and `worker` processes, a real Kafka broker and Redis, and a "
        "local HTTP subscriber. **accepted**: answered 2xx; **applied**: present at every "
        "subscriber (Redis denylist, Redis session store, HTTP); **lost**: accepted but not "
        "applied; **duplicated**: deliveries beyond the first (HTTP subscriber and denylist "
        "notices); **recovery**: from the end of the fault until every accepted event was "
        "applied.\n\n" + _table()
    )
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    Path(target).write_text(text)
