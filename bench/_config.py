"""One run's identity, durations and the environment its service processes get.

Everything a run creates is named after its run id: topics ``bench.{run}.*``, consumer
groups ``bench.{run}.*`` and Redis keys ``bench:{run}:*`` in database 14, so that runs never
see each other's data, nor the tests' (database 15) or a developer's (database 0).
"""

from __future__ import annotations

import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from propagator.settings import Settings

REDIS_DB = 14


def parse_override(text: str) -> tuple[str, str]:
    """``section.key=value`` for --set; a name the settings do not know is refused."""
    name, sep, value = text.partition("=")
    path = name.strip().split(".")
    if not sep or not all(path) or not _has_setting(*path):
        raise ValueError(f"not a known setting=value: {text!r}")
    return name.strip(), value


def _has_setting(*path: str) -> bool:
    """Whether the checkout's settings know ``path`` (a setting it lacks would be refused)."""
    model: type[BaseModel] = Settings
    for name in path:
        field = model.model_fields.get(name)
        if field is None:
            return False
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return True


@dataclass(frozen=True, slots=True)
class Plan:
    """How long each phase runs: the full suite stays under 10 minutes, --quick under 2."""

    quick: bool
    throughput_s: float  # each closed-loop wrk run
    paced_s: float  # each fixed-rate ingest run
    e2e_s: float  # each fixed-rate end-to-end run (and its round-trip baseline)
    ladder_s: float  # each step of the search for the highest sustained rate
    ladder_steps: int
    prefill: int  # records in a pre-filled topic
    window_s: float  # how long a worker's apply rate is measured
    redis_benchmark: int  # SET requests redis-benchmark sends
    guard_s: float  # each guard figure
    # --quick takes part 6's one-process figures from parts 1 and 3 instead of measuring again.
    reuse_single: bool

    @classmethod
    def make(cls, *, quick: bool) -> Plan:
        if quick:
            return cls(
                quick=True,
                throughput_s=2,
                paced_s=1.5,
                e2e_s=1.5,
                ladder_s=1.5,
                ladder_steps=0,
                prefill=20_000,
                window_s=2,
                redis_benchmark=50_000,
                guard_s=0.3,
                reuse_single=True,
            )
        return cls(
            quick=False,
            throughput_s=10,
            paced_s=8,
            e2e_s=8,
            ladder_s=5,
            ladder_steps=5,
            prefill=100_000,
            window_s=10,
            redis_benchmark=200_000,
            guard_s=2.0,
            reuse_single=False,
        )


@dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    repo: Path
    results_dir: Path
    bootstrap: str
    redis_port: int
    secret: str
    plan: Plan
    python: str = sys.executable
    # --set: settings given to every service this run starts, as (dotted name, value).
    overrides: tuple[tuple[str, str], ...] = ()

    @classmethod
    def make(cls, *, repo: Path, plan: Plan, overrides: Sequence[tuple[str, str]] = ()) -> Run:
        # The Makefile exports the ports its services use; the bench follows them.
        kafka_port = int(os.environ.get("KAFKA_PORT", "9092"))
        redis_port = int(os.environ.get("REDIS_PORT", "6379"))
        run_id = time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(2)
        return cls(
            run_id=run_id,
            repo=repo,
            results_dir=repo / "bench" / "results",
            bootstrap=f"127.0.0.1:{kafka_port}",
            redis_port=redis_port,
            secret="whsec_bench_" + secrets.token_urlsafe(18),
            plan=plan,
            overrides=tuple(overrides),
        )

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/{REDIS_DB}"

    @property
    def log_dir(self) -> Path:
        return self.results_dir / f"{self.run_id}-logs"

    @property
    def key_pattern(self) -> str:
        """Every Redis key this run creates matches it."""
        return f"bench:{self.run_id}:*"

    def key_prefix(self, tag: str) -> str:
        return f"bench:{self.run_id}:{tag}:"

    def topic(self, tag: str) -> str:
        return f"bench.{self.run_id}.{tag}"

    @property
    def topic_prefix(self) -> str:
        return f"bench.{self.run_id}."

    def subscriber(self, tag: str) -> str:
        return f"bench-{self.run_id}-{tag}"

    def service_env(
        self, *, topic: str, port: int = 0, subscriber: str = "unused", denylist: str = "denylist"
    ) -> dict[str, str]:
        """The environment of one ``propagator`` process; nothing of the caller's leaks in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROPAGATOR_")}
        env.update(
            {
                "PROPAGATOR_KAFKA__BOOTSTRAP_SERVERS": self.bootstrap,
                "PROPAGATOR_KAFKA__TOPIC": topic,
                "PROPAGATOR_KAFKA__TOPIC_PARTITIONS": "6",
                "PROPAGATOR_REDIS__URL": self.redis_url,
                "PROPAGATOR_WORKOS__SECRETS": self.secret,
                "PROPAGATOR_INGEST__PORT": str(port),
                "PROPAGATOR_INGEST__DEDUPE_KEY_PREFIX": self.key_prefix("dedupe"),
                # Short TTLs: keys left by a killed run expire on their own.
                "PROPAGATOR_INGEST__DEDUPE_TTL_S": "900",
                "PROPAGATOR_INGEST__RATE_LIMIT__PER_SOURCE_RPS": "0",
                "PROPAGATOR_INGEST__RATE_LIMIT__PER_CLIENT_RPS": "0",
                "PROPAGATOR_DENYLIST__KEY_PREFIX": self.key_prefix(denylist),
                "PROPAGATOR_DENYLIST__MAX_SESSION_LIFETIME_S": "900",
                "PROPAGATOR_WORKER__SUBSCRIBER": subscriber,
                "PROPAGATOR_LOG__LEVEL": "WARNING",
                "PROPAGATOR_LOG__FORMAT": "json",
            }
        )
        # Settings this checkout may or may not have (others are adding them): every shared
        # name goes under this run's, and no fixed port is bound.
        optional = {
            ("inventory", "key_prefix"): self.key_prefix(f"{denylist}-sessions"),
            ("receipts", "projection_prefix"): self.key_prefix(f"{denylist}-receipts"),
            ("dashboard", "stats_key"): self.key_prefix("dashboard") + "subscribers",
            ("worker", "group_prefix"): self.group_prefix,
            ("worker", "metrics_port"): "0",
        }
        for path, value in optional.items():
            if _has_setting(*path):
                env["PROPAGATOR_" + "__".join(p.upper() for p in path)] = value
        for name, value in self.overrides:
            env["PROPAGATOR_" + "__".join(p.upper() for p in name.split("."))] = value
        return env

    @property
    def group_prefix(self) -> str:
        """Consumer groups are ``{group_prefix}{subscriber}``."""
        return f"bench.{self.run_id}." if _has_setting("worker", "group_prefix") else "propagator."

    def group(self, subscriber: str) -> str:
        return f"{self.group_prefix}{subscriber}"
