"""Part 2: end-to-end propagation latency, from the HTTP request to the denylist key.

For 1 and for 3 subscribers (one worker process each, each its own consumer group and key
prefix), at fixed rates of 100 and 1000 events per second, then a bisection for the highest
rate sustained without growing lag. An event's latency runs from the instant its request
was dispatched to the instant its key exists for every subscriber. Baseline: the raw Kafka
round trip (bench/roundtrip.py) at the same rates, in the same run.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from bench._arrivals import Arrivals
from bench._context import Bench
from bench._kafka import create_topics
from bench._paced import PacedRun, run_paced
from bench._procs import cpu_seconds, free_port, run_json_child, wait_http_ok
from bench._stats import Latency, Row, ratio

FIXED_RATES = (100.0, 1000.0)
MIN_RATE = 10.0
TARGET_RATE = 1000.0
TARGET_P99_MS = 25.0
DRAIN_S = 30.0
KEEPS_UP = 0.95
# The lag grows when the last quarter's median is above twice the first's, plus this much.
GROWTH_SLACK_MS = 10.0


@dataclass
class Step:
    rate: float
    paced: PacedRun
    latency: Latency
    answer: Latency
    problems: list[str]
    not_sustained: list[str] = field(default_factory=list)
    cpu_ms_per_event: dict[str, float] = field(default_factory=dict)

    @property
    def sustained(self) -> bool:
        return not self.problems and not self.not_sustained

    def summary(self) -> dict[str, Any]:
        return {
            "rate_rps": self.rate,
            "events": self.paced.count,
            "end_to_end": self.latency.as_dict(),
            "ingest_answer": self.answer.as_dict(),
            "answered_rps": round(self.paced.answered_rps(), 1),
            "sustained": self.sustained,
            "not_sustained_because": self.not_sustained,
            "problems": self.problems,
            "generator_cpu": [round(x, 3) for x in self.paced.generator_cpu],
            "generator_lateness_p99_ms": round(self.paced.lateness_p99_ms, 3),
            "cpu_ms_per_event": self.cpu_ms_per_event,
        }


async def _step(
    b: Bench,
    arrivals: Arrivals,
    port: int,
    rate: float,
    duration_s: float,
    label: str,
    services: dict[str, list[int]],
    profile: dict[str, int] | None = None,
) -> Step:
    batch = b.presigner.batch(max(1, int(rate * duration_s)))
    arrivals.expect(batch.session_ids)
    sampling = []
    if profile and b.profiler is not None:
        for tag, pid in profile.items():
            sampling.append(await b.profiler.sample(tag, pid, duration_s))
    cpu_before = {role: sum(map(cpu_seconds, pids)) for role, pids in services.items()}
    paced = await run_paced(
        b.run, port=port, requests=batch.requests, rate=rate, answer_timeout_s=60
    )
    ok = paced.ok()
    await arrivals.wait_all([batch.session_ids[j] for j in ok], DRAIN_S)
    # What each event cost the services, CPU time over the step (idle overhead included).
    cpu_ms = {
        role: round((sum(map(cpu_seconds, pids)) - cpu_before[role]) * 1000 / max(len(ok), 1), 3)
        for role, pids in services.items()
    }
    for task in sampling:
        await task
    latencies: list[float] = []
    missing = 0
    for j in ok:
        arrived = arrivals.last_arrival(batch.session_ids[j])
        if arrived is None:
            missing += 1
        else:
            latencies.append((arrived - paced.started_at - paced.dispatched[j]) * 1000)
    problems = paced.status_problems() + paced.generator_problems()
    if (note := paced.contention()) is not None:
        b.notes.append(f"end-to-end, {label}, {rate:,.0f} ev/s: {note}.")
    if rate == TARGET_RATE:
        b.notes.append(
            f"end-to-end, {label}, {rate:,.0f} ev/s: CPU per event "
            + ", ".join(f"{role} {ms:.2f} ms" for role, ms in cpu_ms.items())
            + " (over the step, idle work included)."
        )
    if missing:
        problems.append(f"lost events: {missing} answered 200 but not in Redis after {DRAIN_S}s")
    step = Step(
        rate=rate,
        paced=paced,
        latency=Latency.of(latencies),
        answer=paced.latency(),
        problems=problems,
        cpu_ms_per_event=cpu_ms,
    )
    answered = paced.answered_rps()
    if paced.stopped_early:
        step.not_sustained.append(
            f"ingest fell behind: answered {answered:,.0f}/s, the generator stopped"
        )
    elif answered < KEEPS_UP * rate:
        step.not_sustained.append(f"ingest answered {answered:,.0f}/s of {rate:,.0f}/s")
    quarter = len(latencies) // 4
    if quarter >= 10:
        first = statistics.median(latencies[:quarter])
        last = statistics.median(latencies[-quarter:])
        if last > 2 * first + GROWTH_SLACK_MS:
            step.not_sustained.append(
                f"lag grew: median {first:.1f} ms in the first quarter, {last:.1f} ms in the last"
            )
    return step


async def _configuration(b: Bench, subscribers: int) -> dict[str, Any]:
    plan = b.run.plan
    tag = f"e2e{subscribers}"
    label = f"{subscribers} subscriber{'s' if subscribers > 1 else ''}"
    topic = b.run.topic(tag)
    await create_topics(b.run.bootstrap, topic)
    port = free_port()
    ingest = b.processes.start(
        f"{tag}-ingest", "ingest", b.ingest_argv(), b.run.service_env(topic=topic, port=port)
    )
    names = [f"{tag}s{k}" for k in range(subscribers)]
    workers = [
        b.processes.start(
            f"{name}-worker",
            "worker",
            b.worker_argv(),
            b.run.service_env(topic=topic, subscriber=b.run.subscriber(name), denylist=name),
        )
        for name in names
    ]
    arrivals = Arrivals(redis=b.redis, prefixes=[b.run.key_prefix(name) for name in names])
    try:
        await wait_http_ok(b.processes, ingest, f"http://127.0.0.1:{port}/readyz", 60)
        for name, worker in zip(names, workers, strict=True):
            b.processes.check_alive(worker)
            await b.cluster.wait_group(b.run.group(b.run.subscriber(name)), 1, 60)
        await arrivals.start()
        b.say(f"end-to-end, {label}: services ready")
        # Warm-up: opens every connection, and shows whether the sink announces its writes.
        warm = b.presigner.batch(100 if plan.quick else 400)
        arrivals.expect(warm.session_ids)
        warm_run = await run_paced(b.run, port=port, requests=warm.requests, rate=200)
        if warm_run.status_problems() or not warm_run.ok():
            raise RuntimeError(f"warm-up failed: {warm_run.status_problems()}")
        await arrivals.settle_mode([warm.session_ids[j] for j in warm_run.ok()], DRAIN_S)

        services = {"ingest": [ingest.pid], "workers": [w.pid for w in workers]}
        steps: dict[float, Step] = {}
        for rate in FIXED_RATES:
            b.say(f"end-to-end, {label}: {rate:,.0f} ev/s")
            # --profile: where ingest and the worker spend the target rate's CPU.
            profile = None
            if rate == TARGET_RATE and subscribers == 1:
                profile = {f"{tag}-ingest": ingest.pid, f"{tag}-worker": workers[0].pid}
            steps[rate] = await _step(b, arrivals, port, rate, plan.e2e_s, label, services, profile)
        for _ in range(plan.ladder_steps):
            low = max((r for r, s in steps.items() if s.sustained), default=None)
            high = min((r for r, s in steps.items() if not s.sustained), default=None)
            if low is None:  # not even 100 ev/s: look lower, down to 10 ev/s
                if high is None or high <= MIN_RATE:
                    break
                candidate = max(high / 2, MIN_RATE)
            elif high is None:
                candidate = low * 1.5
            elif high / low <= 1.15:
                break
            else:
                candidate = math.sqrt(low * high)
            candidate = float(max(round(candidate, -1), MIN_RATE))
            if candidate in steps:
                break
            b.say(f"end-to-end, {label}: trying {candidate:,.0f} ev/s")
            steps[candidate] = await _step(
                b, arrivals, port, candidate, plan.ladder_s, label, services
            )
        best = max((r for r, s in steps.items() if s.sustained), default=None)
        for proc in (ingest, *workers):
            b.processes.record_peak(proc)
        return {"steps": steps, "best": best, "arrivals": arrivals.mode}
    finally:
        await arrivals.stop()
        await b.processes.stop_many([*workers, ingest])


async def _round_trip(b: Bench, rates: list[float]) -> dict[float, dict[str, Any]]:
    topic = b.run.topic("roundtrip")
    await create_topics(b.run.bootstrap, topic)
    results: list[dict[str, Any]] = await run_json_child(
        b.run.python,
        b.run.repo,
        "bench.roundtrip",
        [
            f"--bootstrap={b.run.bootstrap}",
            f"--topic={topic}",
            f"--rates={','.join(f'{r:g}' for r in rates)}",
            f"--duration={b.run.plan.e2e_s}",
        ],
        timeout_s=len(rates) * (b.run.plan.e2e_s + 40) + 30,
    )
    return {float(r["rate_rps"]): r for r in results}


def _baseline_latency(rt: dict[str, Any]) -> Latency:
    lat = rt["latency"]
    return Latency(
        count=lat["count"],
        p50=lat["p50_ms"],
        p99=lat["p99_ms"],
        p999=lat["p999_ms"],
        max=lat["max_ms"],
    )


def _cell(step: Step) -> str:
    # Latency at a rate that is not sustained only grows with the run's length: no figure.
    if step.not_sustained:
        return f"not sustained: {'; '.join(step.not_sustained)}"
    return step.latency.brief(with_max=True)


async def e2e_section(b: Bench) -> None:
    section = "2 end-to-end"
    configs = {subs: await _configuration(b, subs) for subs in (1, 3)}
    rates = sorted({*FIXED_RATES, *(c["best"] for c in configs.values() if c["best"])})
    b.say("end-to-end: raw Kafka round trip")
    baseline = await _round_trip(b, rates)
    if TARGET_RATE in baseline and "cpu_ms_per_record" in baseline[TARGET_RATE]:
        b.notes.append(
            f"raw Kafka round trip, {TARGET_RATE:,.0f} ev/s: the bare producer and consumer "
            f"used {baseline[TARGET_RATE]['cpu_ms_per_record']:.2f} ms of CPU per record."
        )
    for subs, config in configs.items():
        steps: dict[float, Step] = config["steps"]
        label = f"{subs} subscriber{'s' if subs > 1 else ''}"
        shown = [(rate, f"{rate:,.0f} ev/s") for rate in FIXED_RATES]
        best = config["best"]
        if best is not None:
            shown.append((best, f"highest sustained, {best:,.0f} ev/s"))
        for rate, what in shown:
            step = steps[rate]
            rt = baseline[rate]
            base = _baseline_latency(rt)
            target = f"p99 ≤ {TARGET_P99_MS:g} ms" if rate == TARGET_RATE else ""
            problems = list(step.problems)
            if rt["lost"]:
                problems.append(f"round trip lost {rt['lost']} records")
            b.rows.append(
                Row(
                    section=section,
                    figure=f"{label}, {what}: p50 / p99 / p99.9 / max",
                    value=_cell(step),
                    baseline=base.brief(with_max=True) + " (raw Kafka round trip)",
                    ratio=ratio(step.latency.p99, base.p99) if step.sustained else None,
                    target=target,
                    met=(step.sustained and step.latency.p99 <= TARGET_P99_MS) if target else None,
                    problems=problems,
                )
            )
        if best is None:
            b.rows.append(
                Row(
                    section=section,
                    figure=f"{label}, highest sustained rate",
                    value=f"none: not even {min(steps):,.0f} ev/s was sustained",
                    baseline="",
                )
            )
    b.data["end_to_end"] = {
        str(subs): {
            "arrivals_observed_by": config["arrivals"],
            "highest_sustained_rps": config["best"],
            "steps": [s.summary() for _, s in sorted(config["steps"].items())],
        }
        for subs, config in configs.items()
    }
    b.data["end_to_end"]["raw_kafka_round_trip"] = [baseline[r] for r in rates]
