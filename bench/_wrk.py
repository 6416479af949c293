"""Closed-loop maximum throughput with wrk, sending pre-signed requests (bench/presigned.lua).

wrk is a C event loop on epoll: it needs a small fraction of a core for the request rates of
this service, so on a 2-core machine it leaves the most CPU to what is measured. Its CPU time
is read from the kernel (``wait4``) and a run in which a wrk thread neared saturation is
refused. wrk keeps a fixed number of connections busy (closed loop): it measures capacity,
not latency at a rate, which the paced generator (bench/loadgen.py) does.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench._reqfile import write_requests

_SCRIPT = Path(__file__).with_name("presigned.lua")
# A wrk thread above this share of one core may be what limits the rate.
SATURATED_CPU_PER_THREAD = 0.9


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    errors: int
    wrapped: int
    cpu_per_thread: float
    latency_us: dict[str, int]

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s

    def problems(self, *, allow_wrap: bool) -> list[str]:
        found = []
        if self.errors:
            found.append(f"{self.errors} errors (connect, read, write, timeout or non-2xx)")
        if self.wrapped and not allow_wrap:
            found.append("ran out of pre-signed requests (repeats would be deduplicated)")
        if self.cpu_per_thread >= SATURATED_CPU_PER_THREAD:
            found.append(f"wrk saturated ({self.cpu_per_thread:.0%} of a core per thread)")
        return found

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "duration_s": round(self.duration_s, 3),
            "rps": round(self.rps, 1),
            "errors": self.errors,
            "wrapped": self.wrapped,
            "generator_cpu_per_thread": round(self.cpu_per_thread, 3),
            "closed_loop_latency_us": self.latency_us,
        }


def ensure_wrk() -> str:
    """The wrk binary; installed from Debian's package when missing (this machine runs as root)."""
    found = shutil.which("wrk")
    if found:
        return found
    install = ["apt-get", "install", "-y", "-qq", "wrk"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, env=env, check=False, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
        subprocess.run(install, env=env, check=True, capture_output=True)
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("wrk is not installed and `apt-get install wrk` did not provide it")
    return found


def _run_blocking(argv: list[str], out_path: Path) -> tuple[int, float, float]:
    # wait4 gives the exact CPU time of wrk alone, which a shared RUSAGE_CHILDREN would not.
    with out_path.open("wb") as out:
        popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    started = time.monotonic()
    _, status, usage = os.wait4(popen.pid, 0)
    popen.returncode = os.waitstatus_to_exitcode(status)
    return popen.returncode, usage.ru_utime + usage.ru_stime, time.monotonic() - started


async def run_wrk(
    *,
    wrk: str,
    url: str,
    requests: Sequence[bytes],
    threads: int,
    connections: int,
    duration_s: float,
) -> WrkResult:
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        prefix = Path(tmp) / "requests"
        for thread in range(threads):
            write_requests(Path(f"{prefix}.{thread}"), requests[thread::threads])
        argv = [
            wrk,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            "--timeout",
            "10s",
            "-s",
            str(_SCRIPT),
            url,
            "--",
            str(prefix),
        ]
        out_path = Path(tmp) / "out.txt"
        code, cpu_s, wall_s = await asyncio.to_thread(_run_blocking, argv, out_path)
        output = out_path.read_text(errors="replace")
    line = next((x for x in output.splitlines() if x.startswith("WRK_JSON ")), None)
    if code != 0 or line is None:
        raise RuntimeError(f"wrk failed ({code}):\n{output}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    errors = sum(
        data[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return WrkResult(
        requests=data["requests"],
        duration_s=data["duration_us"] / 1e6,
        errors=errors,
        wrapped=data["wrapped"],
        cpu_per_thread=cpu_s / wall_s / threads,
        latency_us={k: data[k] for k in ("p50_us", "p99_us", "p999_us", "max_us")},
    )
