"""Fixed-rate (open-loop) runs with bench/loadgen.py, and the checks that make them valid."""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._config import Run
from bench._procs import die_with_parent
from bench._reqfile import write_requests
from bench._stats import Latency, percentile
from bench.loadgen import NOT_SENT

# A generator process above this share of a core may be what limits the rate: such a run is
# refused. So is one this late (p99) on its schedule: it did not offer the rate it claims.
# Lateness with a generator far from saturation means the machine's CPUs were taken by other
# processes (latency counts from dispatch, so it does not include it): reported, not refused.
SATURATED_CPU = 0.85
MAX_LATENESS_P99_MS = 1000.0
CONTENDED_LATENESS_P99_MS = 20.0
# Requests in flight at once, all generator processes together, as many as wrk's connections:
# beyond it due requests wait in the generator, where their latency still counts, instead of
# piling up inside an overloaded service until its publish timeout answers 503.
MAX_IN_FLIGHT = 64


@dataclass
class PacedRun:
    """The outcome of one fixed-rate run; instants are seconds after the schedule's start."""

    rate: float
    procs: int
    intended: list[float]
    dispatched: list[float]
    sent: list[float]
    done: list[float]
    status: list[int]
    generator_cpu: list[float]
    lateness_p99_ms: float
    started_at: float

    @property
    def count(self) -> int:
        return len(self.intended)

    def statuses(self) -> Counter[int]:
        return Counter(self.status)

    @property
    def stopped_early(self) -> bool:
        """The server fell so far behind that the generator stopped (over capacity)."""
        return NOT_SENT in self.status

    def ok(self) -> list[int]:
        """Indexes of the requests answered 200."""
        return [j for j, s in enumerate(self.status) if s == 200]

    def latency(self) -> Latency:
        return Latency.of([(self.done[j] - self.dispatched[j]) * 1000 for j in self.ok()])

    def answered_rps(self) -> float:
        """Answers per second, from the first due instant to the last answer."""
        ok = self.ok()
        if not ok:
            return 0.0
        return len(ok) / max(self.done[j] for j in ok)

    def generator_problems(self) -> list[str]:
        found = []
        busiest = max(self.generator_cpu, default=0.0)
        if busiest >= SATURATED_CPU:
            found.append(f"generator saturated ({busiest:.0%} of a core)")
        if self.lateness_p99_ms > MAX_LATENESS_P99_MS:
            found.append(f"generator behind its schedule (p99 {self.lateness_p99_ms:.0f} ms late)")
        return found

    def contention(self) -> str | None:
        """A note when the generator woke late although it was far from saturated."""
        if CONTENDED_LATENESS_P99_MS < self.lateness_p99_ms <= MAX_LATENESS_P99_MS:
            return (
                f"the generator woke up to {self.lateness_p99_ms:.0f} ms late (p99) at "
                f"{max(self.generator_cpu, default=0.0):.0%} of a core: the CPUs were busy"
            )
        return None

    def status_problems(self) -> list[str]:
        bad = {s: n for s, n in self.statuses().items() if s not in (200, NOT_SENT)}
        if not bad:
            return []
        names = {0: "no answer", -1: "connection lost"}
        return [
            "answers other than 200: "
            + ", ".join(f"{n} x {names.get(s, s)}" for s, n in sorted(bad.items()))
        ]

    def summary(self) -> dict[str, Any]:
        return {
            "rate_rps": self.rate,
            "requests": self.count,
            "answered_rps": round(self.answered_rps(), 1),
            "latency": self.latency().as_dict(),
            "statuses": {str(k): v for k, v in sorted(self.statuses().items())},
            "stopped_early_over_capacity": self.stopped_early,
            "generator_processes": self.procs,
            "generator_cpu": [round(x, 3) for x in self.generator_cpu],
            "generator_lateness_p99_ms": round(self.lateness_p99_ms, 3),
        }


async def run_paced(
    run: Run,
    *,
    port: int,
    requests: Sequence[bytes],
    rate: float,
    answer_timeout_s: float = 30.0,
) -> PacedRun:
    """Send ``requests`` at ``rate`` per second from one or two generator processes."""
    procs = 1 if rate <= 1200 else 2
    with tempfile.TemporaryDirectory(prefix="bench-paced-") as tmp:
        children = []
        try:
            for index in range(procs):
                path = Path(tmp) / f"requests.{index}"
                write_requests(path, requests[index::procs])
                children.append(
                    await asyncio.create_subprocess_exec(
                        run.python,
                        "-m",
                        "bench.loadgen",
                        f"--port={port}",
                        f"--requests={path}",
                        f"--rate={rate}",
                        f"--procs={procs}",
                        f"--index={index}",
                        f"--max-connections={MAX_IN_FLIGHT // procs}",
                        f"--answer-timeout={answer_timeout_s}",
                        f"--out={Path(tmp) / f'out.{index}'}",
                        cwd=run.repo,
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        preexec_fn=die_with_parent,
                    )
                )
            async with asyncio.timeout(60):
                for child in children:
                    assert child.stdout is not None
                    if (await child.stdout.readline()).strip() != b"ready":
                        raise RuntimeError("a load generator process did not start")
            start = time.monotonic() + 0.05
            for child in children:
                assert child.stdin is not None
                child.stdin.write(f"{start!r}\n".encode())
                await child.stdin.drain()
                child.stdin.close()
            async with asyncio.timeout(len(requests) / rate + answer_timeout_s + 30):
                codes = [await child.wait() for child in children]
        finally:
            for child in children:
                if child.returncode is None:
                    child.kill()
                    await child.wait()
        if any(codes):
            raise RuntimeError(f"the load generator failed (exit codes {codes})")
        outputs = [json.loads((Path(tmp) / f"out.{i}").read_text()) for i in range(procs)]
    n = len(requests)
    dispatched, sent, done, status = [0.0] * n, [0.0] * n, [0.0] * n, [0] * n
    for out in outputs:
        i = out["index"]
        for k in range(len(out["status"])):
            j = k * procs + i
            dispatched[j], sent[j] = out["dispatched"][k], out["sent"][k]
            done[j], status[j] = out["done"][k], out["status"][k]
    intended = [j / rate for j in range(n)]
    lateness_ms = sorted(
        (dispatched[j] - intended[j]) * 1000 for j in range(n) if status[j] != NOT_SENT
    )
    return PacedRun(
        rate=rate,
        procs=procs,
        intended=intended,
        dispatched=dispatched,
        sent=sent,
        done=done,
        status=status,
        generator_cpu=[out["cpu_s"] / max(out["wall_s"], 1e-9) for out in outputs],
        lateness_p99_ms=percentile(lateness_ms, 99),
        started_at=start,
    )
