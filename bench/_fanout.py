"""Part 3 (fan-out throughput of one worker) and part 6's worker scaling.

A worker's rate is read from its consumer group's committed offsets, polled every 50 ms:
the worker commits a partition's offset only after Redis confirmed the batch, so committed
records are applied records. Every key is checked in Redis at the end.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Sequence
from typing import Any

from bench._context import Bench
from bench._kafka import PARTITIONS, create_topics, prefill
from bench._procs import Proc, cpu_seconds, run_json_child
from bench._stats import Row, ratio
from propagator.settings import WorkerSettings

FANOUT_TARGET = 0.5
_POLL_S = 0.05
_START_TIMEOUT_S = 90.0
# redis-benchmark's records: a session record's size, under this run's prefix.
_RECORD = (
    '{"event_id":"event_0123456789ABCDEF0123456789","user_id":"user_0123456789ABCDEF0123456789",'
    '"organization_id":"org_01H945H0YD4F97JN9MATX7BYAG","revoked_at":'
    '"2026-12-03T16:18:50.883000+00:00","source":"workos"}'
)


def _applied(session_ids: Sequence[str], committed: dict[int, int]) -> list[str]:
    """The sessions of the records at or below the committed offsets (see ``prefill``)."""
    return [
        session_id
        for i, session_id in enumerate(session_ids)
        if i // PARTITIONS < committed.get(i % PARTITIONS, 0)
    ]


async def _missing_keys(b: Bench, prefix: str, session_ids: Sequence[str]) -> int:
    missing = 0
    for start in range(0, len(session_ids), 5000):
        chunk = session_ids[start : start + 5000]
        async with b.redis.pipeline(transaction=False) as pipe:
            for session_id in chunk:
                pipe.exists(f"{prefix}session:{session_id}")
            missing += sum(1 for found in await pipe.execute() if not found)
    return missing


async def _apply(
    b: Bench, *, tag: str, topic: str, workers: int, session_ids: list[str] | None
) -> dict[str, Any]:
    """Start ``workers`` worker processes in one group and measure how fast they apply.

    With ``session_ids`` the topic is already filled, and the window opens at the first
    commit. Without, the workers join the empty topic first, so that each holds its
    partitions from the start; the topic is filled then, and the window opens when the fill
    ends. The window closes after ``plan.window_s`` or when everything is applied, whichever
    comes first; the workers must still have had a backlog at its start.
    """
    plan = b.run.plan
    b.say(f"{workers} worker process(es) ({tag})")
    subscriber = b.run.subscriber(tag)
    group = b.run.group(subscriber)
    env = b.run.service_env(topic=topic, subscriber=subscriber, denylist=tag)
    procs: list[Proc] = [
        b.processes.start(f"{tag}-worker-{i}", "worker", b.worker_argv(), env)
        for i in range(workers)
    ]

    async def applied() -> tuple[float, int, float]:
        count = sum((await b.cluster.committed(group, topic)).values())
        return time.monotonic(), count, sum(cpu_seconds(p.pid) for p in procs)

    problems: list[str] = []
    try:
        opened: tuple[float, int, float] | None = None
        if session_ids is None:
            await b.cluster.wait_group(group, workers, 90)
            session_ids = await prefill(
                b.run.bootstrap, topic, count=plan.prefill, run_id=f"{b.run.run_id}{tag}"
            )
            opened = await applied()
        total = len(session_ids)
        deadline = time.monotonic() + _START_TIMEOUT_S
        profiling = None
        while True:
            b.processes.check_alive(*procs)
            now, count, cpu = await applied()
            if opened is None and count > 0:
                opened = (now, count, cpu)
            if opened is not None and profiling is None and b.profiler and workers == 1:
                profiling = await b.profiler.sample(tag, procs[0].pid, plan.window_s)
            if opened is not None and (count >= total or now - opened[0] >= plan.window_s):
                break
            if opened is None and now > deadline:
                raise RuntimeError(f"{tag}: nothing applied within {_START_TIMEOUT_S}s")
            await asyncio.sleep(_POLL_S)
        if profiling is not None:
            await profiling
        started, first, cpu_before = opened
        if first >= total // 2:
            problems.append(
                f"window opened late: {first} of {total} records were applied before it"
            )
        elapsed = now - started
        for proc in procs:
            b.processes.record_peak(proc)
        done = _applied(session_ids, await b.cluster.committed(group, topic))
        missing = await _missing_keys(b, b.run.key_prefix(tag), done)
        if missing:
            problems.append(f"lost events: {missing} of {len(done)} committed keys not in Redis")
        return {
            "records": total,
            "measured_records": count - first,
            "window_s": round(elapsed, 3),
            "rate_rps": (count - first) / elapsed if elapsed > 0 else 0.0,
            "worker_cores": round((cpu - cpu_before) / elapsed, 3) if elapsed > 0 else None,
            "problems": problems,
        }
    finally:
        await b.processes.stop_many(procs)


async def _redis_benchmark(b: Bench, requests: int) -> dict[str, Any]:
    """``redis-benchmark`` writing session-record-sized keys, pipelined like the worker."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise RuntimeError("redis-benchmark not found (Debian package redis-tools)")
    pipeline = WorkerSettings().max_batch
    argv = [
        binary,
        "-h",
        "127.0.0.1",
        "-p",
        str(b.run.redis_port),
        "--dbnum",
        str(b.run.redis_url.rsplit("/", 1)[1]),
        "-c",
        "1",
        "-P",
        str(pipeline),
        "-n",
        str(requests),
        "-r",
        "100000000",
        "--csv",
        "SET",
        f"{b.run.key_prefix('redis-benchmark')}__rand_int__",
        _RECORD,
        "NX",
        "EX",
        "900",
    ]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(120):
        out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"redis-benchmark failed: {err.decode()}")
    # --csv: a header line, then per test its name (quoted, but with our quotes and commas
    # inside unescaped) and seven numbers, rps first.
    line = [x for x in out.decode().splitlines() if x.strip()][-1]
    rps = float(line.rsplit(",", 7)[1].strip('"'))
    return {"command": "SET key record NX EX 900", "clients": 1, "pipeline": pipeline, "rps": rps}


async def fanout_section(b: Bench) -> None:
    section = "3 fan-out"
    plan = b.run.plan
    topic = b.run.topic("fanout")
    await create_topics(b.run.bootstrap, topic)
    session_ids = await prefill(b.run.bootstrap, topic, count=plan.prefill, run_id=b.run.run_id)
    b.say("raw consumer")
    raw: dict[str, Any] = await run_json_child(
        b.run.python,
        b.run.repo,
        "bench.raw_consumer",
        [f"--bootstrap={b.run.bootstrap}", f"--topic={topic}", f"--records={plan.prefill}"],
        timeout_s=150,
    )
    raw_problems = (
        [] if raw["records"] == plan.prefill else [f"raw consumer read {raw['records']} records"]
    )
    b.processes.peak_rss["raw consumer"] = raw["peak_rss_mib"]
    worker = await _apply(b, tag="fanout", topic=topic, workers=1, session_ids=session_ids)
    b.shared["single_worker"] = worker
    b.say("redis-benchmark")
    redis_bench = await _redis_benchmark(b, plan.redis_benchmark)
    r = ratio(worker["rate_rps"], raw["rate_rps"])
    b.rows.append(
        Row(
            section=section,
            figure="1 worker applying a pre-filled topic to the Redis denylist",
            value=f"{worker['rate_rps']:,.0f} records/s",
            baseline=f"{raw['rate_rps']:,.0f} records/s (raw aiokafka consumer, deserialize only)",
            ratio=r,
            target=f"≥ {FANOUT_TARGET}x",
            met=r is not None and r >= FANOUT_TARGET,
            problems=worker["problems"] + raw_problems,
        )
    )
    b.rows.append(
        Row(
            section=section,
            figure="1 worker, beside Redis's own write rate",
            value=f"{worker['rate_rps']:,.0f} records/s",
            baseline=f"{redis_bench['rps']:,.0f} SET/s (redis-benchmark, 1 client, "
            f"pipeline {redis_bench['pipeline']})",
            ratio=ratio(worker["rate_rps"], redis_bench["rps"]),
            problems=worker["problems"],
        )
    )
    b.data["fanout"] = {"worker": worker, "raw_consumer": raw, "redis_benchmark": redis_bench}


async def worker_scaling_section(b: Bench) -> None:
    section = "6 scaling"
    results: dict[int, dict[str, Any]] = {}
    for workers in (1, 2):
        if workers == 1 and b.run.plan.reuse_single and "single_worker" in b.shared:
            results[1] = b.shared["single_worker"]
            continue
        tag = f"scalew{workers}"
        topic = b.run.topic(tag)
        await create_topics(b.run.bootstrap, topic)
        results[workers] = await _apply(b, tag=tag, topic=topic, workers=workers, session_ids=None)
    one, two = results[1], results[2]
    b.rows.append(
        Row(
            section=section,
            figure="worker processes on a 6-partition topic, 2 vs 1",
            value=f"{two['rate_rps']:,.0f} records/s (2 processes)",
            baseline=f"{one['rate_rps']:,.0f} records/s (1 process)",
            ratio=ratio(two["rate_rps"], one["rate_rps"]),
            problems=one["problems"] + two["problems"],
        )
    )
    b.data["worker_scaling"] = {str(k): v for k, v in results.items()}
