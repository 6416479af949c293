"""``python -m bench [--quick]``: run the suite, print the Markdown table, write the results.

Exit status: 0 when every figure was measured validly, 1 when some figure was refused (its
number withheld), 2 when the run broke off (nothing reported but the error).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bench import _report
from bench._config import REDIS_DB, Plan, Run, parse_override
from bench._context import Bench
from bench._e2e import e2e_section
from bench._fanout import fanout_section, worker_scaling_section
from bench._guard import guard_section
from bench._ingest import ingest_scaling_section, ingest_section
from bench._kafka import Cluster
from bench._presign import Presigner
from bench._procs import Processes
from bench._profile import Profiler, ensure_py_spy
from bench._stats import Row, ratio
from bench._wrk import ensure_wrk

SECTIONS = ("ingest", "e2e", "fanout", "guard", "scaling")
# The whole suite's budget: under the 10 minutes (full) and 2 minutes (--quick).
BUDGET_S = {False: 570.0, True: 115.0}


def _memory_rows(b: Bench) -> None:
    rss = b.processes.peak_rss
    for role, baseline in (("ingest", "bare aiohttp"), ("worker", "raw consumer")):
        if role in rss and baseline in rss:
            b.rows.append(
                Row(
                    section="5 memory",
                    figure=f"peak RSS of the {role} processes (VmHWM, the largest)",
                    value=f"{rss[role]:.0f} MiB",
                    baseline=f"{rss[baseline]:.0f} MiB ({baseline})",
                    ratio=ratio(rss[role], rss[baseline]),
                )
            )
    b.data["peak_rss_mib"] = {k: round(v, 1) for k, v in rss.items()}


async def _unprefixed_keys(redis: Redis) -> set[bytes]:
    """Keys in the bench's database outside every run's prefix."""
    return {key async for key in redis.scan_iter(count=5000) if not key.startswith(b"bench:")}


async def _clean(b: Bench) -> None:
    """Remove what this run created: its topics, consumer groups and Redis keys."""
    deleted = await b.cluster.delete_topics(b.run.topic_prefix)
    groups = await b.cluster.delete_groups(b.run.group_prefix)
    appeared = await _unprefixed_keys(b.redis) - b.shared.get("unprefixed_keys", set())
    if appeared:
        # Not deleted: another process on this machine may use the database too.
        names = sorted(k.decode(errors="replace") for k in appeared)
        b.notes.append(
            f"{len(appeared)} Redis keys outside every run's prefix appeared in database "
            f"{REDIS_DB} during the run (left alone; if a service of this run wrote them, "
            f"it has a setting the bench does not isolate yet): {', '.join(names[:3])}"
        )
    keys = 0
    batch: list[bytes] = []
    async for key in b.redis.scan_iter(match=b.run.key_pattern, count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            keys += await b.redis.delete(*batch)
            batch.clear()
    if batch:
        keys += await b.redis.delete(*batch)
    b.say(f"cleaned up {len(deleted)} topics, {len(groups)} consumer groups, {keys} Redis keys")


async def _suite(b: Bench, sections: tuple[str, ...]) -> None:
    steps: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
        ("ingest", lambda: ingest_section(b)),
        ("e2e", lambda: e2e_section(b)),
        ("fanout", lambda: fanout_section(b)),
        ("guard", lambda: guard_section(b)),
        ("scaling", lambda: ingest_scaling_section(b)),
        ("scaling", lambda: worker_scaling_section(b)),
    ]
    for name, step in steps:
        if name in sections:
            b.say(f"{name} ...")
            await step()
    _memory_rows(b)


async def _main(
    run: Run, sections: tuple[str, ...], wrk: str, command: str, py_spy: str | None
) -> int:
    started_at = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_before = os.getloadavg()
    redis = Redis.from_url(run.redis_url)
    processes = Processes(log_dir=run.log_dir, cwd=run.repo)
    header: dict[str, Any] = {
        "run_id": run.run_id,
        "mode": "quick" if run.plan.quick else "full",
        "command": command,
        "started_at": started_at,
        "machine": _report.machine(),
        "checkout": _report.checkout(run.repo),
        "profiled": py_spy is not None,
        "settings": dict(run.overrides),
        "load_before": " ".join(f"{x:.2f}" for x in load_before),
        "sections": list(sections),
    }
    b: Bench | None = None
    error: str | None = None
    try:
        try:
            await redis.ping()
        except (RedisError, OSError) as exc:
            raise RuntimeError(f"no Redis at {run.redis_url}: run `make services`") from exc
        async with Cluster(run.bootstrap) as cluster:
            unprefixed = await _unprefixed_keys(redis)
            b = Bench(
                run=run,
                processes=processes,
                cluster=cluster,
                redis=redis,
                presigner=Presigner(secret=run.secret.encode(), run_id=run.run_id),
                wrk=wrk,
                profiler=Profiler(binary=py_spy, out_dir=run.log_dir) if py_spy else None,
            )
            b.shared["unprefixed_keys"] = unprefixed
            try:
                async with asyncio.timeout(BUDGET_S[run.plan.quick]):
                    await _suite(b, sections)
            except TimeoutError:
                error = f"the suite exceeded its {BUDGET_S[run.plan.quick]:.0f} s budget"
            finally:
                await processes.stop_all()
                await _clean(b)
    except Exception as exc:  # noqa: BLE001 - reported as a broken run, never as figures
        error = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        await processes.stop_all()
        await redis.aclose()
    header["duration_s"] = time.monotonic() - (b.started if b else time.monotonic())
    header["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    if error is not None or b is None:
        result = {**header, "valid": False, "error": error}
        path = _report.write(run.results_dir, run.run_id, result, None)
        print(f"bench: broken run, no figures reported: {error}\n(details: {path})")
        return 2
    if b.profiler is not None:
        b.data["profiles"] = b.profiler.results
    valid = all(row.valid for row in b.rows)
    table = _report.markdown(header, b.rows, b.notes)
    result = {
        **header,
        "valid": valid,
        "error": None,
        "rows": [row.as_dict() for row in b.rows],
        "notes": b.notes,
        "details": b.data,
        "logs": str(run.log_dir),
    }
    path = _report.write(run.results_dir, run.run_id, result, table)
    print(table)
    print(f"bench: results in {path} and {path.with_suffix('.md')}", file=sys.stderr)
    return 0 if valid else 1


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the short suite (under 2 minutes)")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only these parts (repeatable); memory figures come with ingest and fan-out",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample ingest and the worker with py-spy while measured (perturbs the figures)",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="give a setting to every service the run starts, e.g. worker.fetch_min_bytes=65536",
    )
    args = parser.parse_args()
    try:
        overrides = [parse_override(text) for text in args.set]
    except ValueError as exc:
        parser.error(str(exc))
    repo = Path(__file__).resolve().parent.parent
    run = Run.make(repo=repo, plan=Plan.make(quick=args.quick), overrides=overrides)
    command = "make bench" + (" ARGS=--quick" if args.quick else "")
    if args.only or args.profile or args.set:
        command = "python -m bench " + " ".join(sys.argv[1:])
    py_spy = ensure_py_spy(run.python) if args.profile else None
    sections = tuple(args.only or SECTIONS)
    sys.exit(asyncio.run(_main(run, sections, ensure_wrk(), command, py_spy)))


if __name__ == "__main__":
    main()
