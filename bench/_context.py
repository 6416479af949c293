"""What every section of a run shares: the run, its processes, clients, rows and data."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from bench._config import Run
from bench._kafka import Cluster
from bench._presign import Presigner
from bench._procs import Processes
from bench._profile import Profiler
from bench._stats import Row


@dataclass
class Bench:
    run: Run
    processes: Processes
    cluster: Cluster
    redis: Redis
    presigner: Presigner
    wrk: str
    profiler: Profiler | None = None
    rows: list[Row] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Measurements one section hands to another (part 1's single-process ingest, for part 6).
    shared: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def say(self, message: str) -> None:
        """A progress line on stderr; the table alone goes to stdout."""
        print(f"bench [{time.monotonic() - self.started:5.0f}s] {message}", file=sys.stderr)

    def ingest_argv(self) -> list[str]:
        return [self.run.python, "-m", "propagator", "ingest"]

    def worker_argv(self) -> list[str]:
        return [self.run.python, "-m", "propagator", "worker"]

    def bare_argv(self, port: int, *, reuse_port: bool = False) -> list[str]:
        argv = [self.run.python, "-m", "bench.bare_server", "--port", str(port)]
        return [*argv, "--reuse-port"] if reuse_port else argv
