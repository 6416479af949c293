"""Part 4: guard check cost (bench/guard_bench.py), measured only when the guard exists."""

from __future__ import annotations

import importlib
from typing import Any

from bench._context import Bench
from bench._procs import run_json_child
from bench._stats import Row, ratio

HIT_TARGET_PER_CORE = 1_000_000


def guard_available() -> bool:
    try:
        module = importlib.import_module("propagator.guard")
    except ImportError:
        return False
    return hasattr(module, "RevocationGuard")


async def guard_section(b: Bench) -> None:
    section = "4 guard"
    if not guard_available():
        b.rows.append(
            Row(
                section=section,
                figure="guard check cost",
                value="not measured: propagator.guard.RevocationGuard does not exist",
                baseline="",
            )
        )
        b.data["guard"] = None
        return
    result: dict[str, Any] = await run_json_child(
        b.run.python,
        b.run.repo,
        "bench.guard_bench",
        [
            f"--redis-url={b.run.redis_url}",
            f"--prefix={b.run.key_prefix('guard')}",
            f"--duration={b.run.plan.guard_s}",
        ],
        timeout_s=60 + 8 * b.run.plan.guard_s,
    )
    hit, plain = result["cache_hit"], result["dict_get"]
    miss, get = result["redis_miss"], result["redis_get"]
    b.rows.append(
        Row(
            section=section,
            figure="cache-hit checks, per CPU-second (one core)",
            value=f"{hit['per_cpu_s']:,.0f} checks/s",
            baseline=f"{plain['per_cpu_s']:,.0f} dict.get/s",
            ratio=ratio(hit["per_cpu_s"], plain["per_cpu_s"]),
            target=f"≥ {HIT_TARGET_PER_CORE:,}/s per core",
            met=hit["per_cpu_s"] >= HIT_TARGET_PER_CORE,
            problems=[]
            if hit["hit_ratio"] == 1.0
            else [f"only {hit['hit_ratio']:.2%} of the timed checks were cache hits"],
        )
    )
    b.rows.append(
        Row(
            section=section,
            figure="Redis-miss checks (MGET of session, user, organization)",
            value=f"{miss['per_s']:,.0f} checks/s",
            baseline=f"{get['per_s']:,.0f} GET/s (plain redis-py, sequential)",
            ratio=ratio(miss["per_s"], get["per_s"]),
            problems=[]
            if miss["redis_read_ratio"] == 1.0
            else [f"only {miss['redis_read_ratio']:.2%} of the timed checks read Redis"],
        )
    )
    b.data["guard"] = result
