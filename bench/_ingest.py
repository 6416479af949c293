"""Part 1 (ingest throughput and latency against bare aiohttp) and part 6's ingest scaling."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from typing import Any

import aiohttp

from bench._context import Bench
from bench._kafka import create_topics
from bench._paced import PacedRun, run_paced
from bench._procs import Proc, cpu_seconds, free_port, listens_on
from bench._stats import Row, ratio
from bench._wrk import WrkResult, run_wrk

WRK_THREADS = 1
WRK_CONNECTIONS = 64
PACED_RATES = (500, 2000)
# Below this share of the requested rate, a fixed-rate run is reported as over capacity.
KEEPS_UP = 0.95
THROUGHPUT_TARGET = 0.5


async def _wrk(
    b: Bench, port: int, requests: Sequence[bytes], pids: Sequence[int], duration_s: float
) -> tuple[WrkResult, float]:
    """A wrk run, and how many cores the measured processes used meanwhile."""
    before = sum(cpu_seconds(pid) for pid in pids)
    started = time.monotonic()
    result = await run_wrk(
        wrk=b.wrk,
        url=f"http://127.0.0.1:{port}/webhooks/workos",
        requests=requests,
        threads=WRK_THREADS,
        connections=WRK_CONNECTIONS,
        duration_s=duration_s,
    )
    cores = (sum(cpu_seconds(pid) for pid in pids) - before) / (time.monotonic() - started)
    return result, cores


async def _warm(b: Bench, port: int, pids: Sequence[int]) -> None:
    # The first requests open the Redis and Kafka connections; keep that out of the figures.
    batch = b.presigner.batch(2000)
    await _wrk(b, port, batch.requests, pids, 1.0)


async def _wait_ready(b: Bench, procs: Sequence[Proc], port: int, path: str) -> None:
    """Every process listens on the port, and answers 200 on ``path``.

    Fresh connections are spread over the listening processes by the kernel, so a long streak
    of 200s on fresh connections means none of them is still starting.
    """
    deadline = time.monotonic() + 60
    for proc in procs:
        while not listens_on(proc.pid, port):
            b.processes.check_alive(proc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} does not listen on port {port}")
            await asyncio.sleep(0.05)
    needed, streak = 10 * len(procs), 0
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        while streak < needed:
            b.processes.check_alive(*procs)
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every process on port {port} became ready")
            async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                streak = streak + 1 if resp.status == 200 else 0
            if streak == 0:
                await asyncio.sleep(0.1)


def _published_problems(answered: int, published: int, slack: int) -> list[str]:
    # Every answered request was published once; wrk may hang up on up to `slack` requests
    # in flight when it stops, which ingest still publishes.
    if published < answered:
        return [f"lost events: {answered} answered 200 but {published} records in the topic"]
    if published > answered + slack:
        return [f"{published} records for {answered} answered requests"]
    return []


def _over_capacity(run: PacedRun) -> bool:
    return run.stopped_early or run.answered_rps() < KEEPS_UP * run.rate


def _latency_cell(run: PacedRun) -> str:
    # Latency at a rate the server cannot sustain only grows with the run's length: no figure.
    if _over_capacity(run):
        return f"over capacity: answered {run.answered_rps():,.0f}/s of {run.rate:,.0f}/s"
    return run.latency().brief()


async def _measure_bare(b: Bench, n: int, *, paced: bool) -> dict[str, Any]:
    plan = b.run.plan
    b.say(f"bare aiohttp, {n} process(es)")
    port = free_port()
    procs = [
        b.processes.start(
            f"bare-{n}p-{i}", "bare aiohttp", b.bare_argv(port, reuse_port=n > 1), os.environ
        )
        for i in range(n)
    ]
    try:
        await _wait_ready(b, procs, port, "/healthz")
        pids = [p.pid for p in procs]
        # The bare handler ignores ids and signatures: one batch serves every run.
        filler = b.presigner.batch(max(PACED_RATES) * int(plan.paced_s) if paced else 20_000)
        await _wrk(b, port, filler.requests, pids, 1.0)
        result, cores = await _wrk(b, port, filler.requests, pids, plan.throughput_s)
        out: dict[str, Any] = {"wrk": result, "cores": cores}
        if paced:
            out["paced"] = {
                rate: await run_paced(
                    b.run,
                    port=port,
                    requests=filler.requests[: int(rate * plan.paced_s)],
                    rate=rate,
                    answer_timeout_s=60,
                )
                for rate in PACED_RATES
            }
        return out
    finally:
        await b.processes.stop_many(procs)


async def _measure_ingest(
    b: Bench, n: int, *, tag: str, bare_rps: float, paced: bool
) -> dict[str, Any]:
    plan = b.run.plan
    b.say(f"ingest, {n} process(es)")
    topic = b.run.topic(tag)
    await create_topics(b.run.bootstrap, topic)
    port = free_port()
    env = b.run.service_env(topic=topic, port=port)
    if n > 1:
        env["PROPAGATOR_INGEST__REUSE_PORT"] = "true"
    procs = [b.processes.start(f"{tag}-{i}", "ingest", b.ingest_argv(), env) for i in range(n)]
    try:
        await _wait_ready(b, procs, port, "/readyz")
        pids = [p.pid for p in procs]
        await _warm(b, port, pids)
        # Ingest cannot outrun the bare handler: this many unique requests never run out.
        batch = b.presigner.batch(int(bare_rps * 1.2 * plan.throughput_s) + 2000)
        before = await b.cluster.records(topic)
        profiling = None
        if b.profiler is not None and n == 1:
            profiling = await b.profiler.sample(tag, pids[0], plan.throughput_s)
        result, cores = await _wrk(b, port, batch.requests, pids, plan.throughput_s)
        if profiling is not None:
            await profiling
        await asyncio.sleep(0.5)  # requests wrk hung up on may still be publishing
        published = await b.cluster.records(topic) - before
        problems = result.problems(allow_wrap=False)
        problems += _published_problems(result.requests, published, WRK_CONNECTIONS)
        out: dict[str, Any] = {
            "wrk": result,
            "cores": cores,
            "published": published,
            "problems": problems,
        }
        if paced:
            out["paced"] = {}
            for rate in PACED_RATES:
                batch = b.presigner.batch(int(rate * plan.paced_s))
                before = await b.cluster.records(topic)
                run = await run_paced(
                    b.run, port=port, requests=batch.requests, rate=rate, answer_timeout_s=60
                )
                published = await b.cluster.records(topic) - before
                out["paced"][rate] = run
                out[f"paced_problems_{rate}"] = (
                    run.status_problems()
                    + run.generator_problems()
                    + _published_problems(len(run.ok()), published, 0)
                )
        return out
    finally:
        await b.processes.stop_many(procs)


async def ingest_section(b: Bench) -> None:
    """Part 1: throughput against bare aiohttp, and latency at fixed rates."""
    section = "1 ingest"
    bare = await _measure_bare(b, 1, paced=True)
    service = await _measure_ingest(b, 1, tag="ingest", bare_rps=bare["wrk"].rps, paced=True)
    b.shared["single_ingest"] = (bare, service)
    bare_wrk: WrkResult = bare["wrk"]
    svc_wrk: WrkResult = service["wrk"]
    r = ratio(svc_wrk.rps, bare_wrk.rps)
    b.rows.append(
        Row(
            section=section,
            figure=f"throughput, closed loop (wrk, {WRK_CONNECTIONS} connections)",
            value=f"{svc_wrk.rps:,.0f} req/s",
            baseline=f"{bare_wrk.rps:,.0f} req/s (bare aiohttp)",
            ratio=r,
            target=f"≥ {THROUGHPUT_TARGET}x",
            met=r is not None and r >= THROUGHPUT_TARGET,
            problems=service["problems"] + bare_wrk.problems(allow_wrap=True),
        )
    )
    for rate in PACED_RATES:
        svc_run: PacedRun = service["paced"][rate]
        bare_run: PacedRun = bare["paced"][rate]
        for who, run in (("ingest", svc_run), ("bare aiohttp", bare_run)):
            if (note := run.contention()) is not None:
                b.notes.append(f"{who} at {rate} req/s: {note}.")
        b.rows.append(
            Row(
                section=section,
                figure=f"latency at {rate} req/s (open loop), p50 / p99 / p99.9",
                value=_latency_cell(svc_run),
                baseline=_latency_cell(bare_run),
                ratio=None
                if _over_capacity(svc_run) or _over_capacity(bare_run)
                else ratio(svc_run.latency().p99, bare_run.latency().p99),
                problems=service[f"paced_problems_{rate}"]
                + bare_run.status_problems()
                + bare_run.generator_problems(),
            )
        )
    b.data["ingest"] = {
        "service": _serialise(service),
        "bare_aiohttp": _serialise(bare),
    }
    wrk_cpu = max(bare_wrk.cpu_per_thread, svc_wrk.cpu_per_thread)
    b.notes.append(
        f"wrk used at most {wrk_cpu:.0%} of its one thread's core (bare run: "
        f"{bare_wrk.rps:,.0f} req/s, {bare['cores']:.2f} cores for the server); ingest used "
        f"{service['cores']:.2f} cores at {svc_wrk.rps:,.0f} req/s."
    )


async def ingest_scaling_section(b: Bench) -> None:
    """Part 6: one and two ingest processes sharing a port (SO_REUSEPORT), beside bare aiohttp."""
    section = "6 scaling"
    figures: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
    for n in (1, 2):
        if n == 1 and b.run.plan.reuse_single and "single_ingest" in b.shared:
            bare, service = b.shared["single_ingest"]
        else:
            bare = await _measure_bare(b, n, paced=False)
            service = await _measure_ingest(
                b, n, tag=f"scale{n}", bare_rps=bare["wrk"].rps, paced=False
            )
        figures[n] = (bare, service)
        r = ratio(service["wrk"].rps, bare["wrk"].rps)
        b.rows.append(
            Row(
                section=section,
                figure=f"ingest throughput, {n} process{'es' if n > 1 else ''} (SO_REUSEPORT)",
                value=f"{service['wrk'].rps:,.0f} req/s",
                baseline=f"{bare['wrk'].rps:,.0f} req/s (bare aiohttp, {n} process"
                + ("es)" if n > 1 else ")"),
                ratio=r,
                target=f"≥ {THROUGHPUT_TARGET}x",
                met=r is not None and r >= THROUGHPUT_TARGET,
                problems=service["problems"] + bare["wrk"].problems(allow_wrap=True),
            )
        )
    one, two = figures[1][1]["wrk"], figures[2][1]["wrk"]
    b.rows.append(
        Row(
            section=section,
            figure="ingest throughput, 2 processes vs 1",
            value=f"{two.rps:,.0f} req/s",
            baseline=f"{one.rps:,.0f} req/s (1 process)",
            ratio=ratio(two.rps, one.rps),
            problems=figures[1][1]["problems"] + figures[2][1]["problems"],
        )
    )
    b.data["ingest_scaling"] = {
        str(n): {"bare_aiohttp": _serialise(bare), "service": _serialise(service)}
        for n, (bare, service) in figures.items()
    }


def _serialise(measured: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in measured.items():
        if isinstance(value, WrkResult):
            out["throughput"] = value.as_dict()
        elif key == "paced":
            out["fixed_rate"] = {str(rate): run.summary() for rate, run in value.items()}
        elif key == "cores":
            out["server_cores_used"] = round(value, 3)
        else:
            out[key] = value
    return out
