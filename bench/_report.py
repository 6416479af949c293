"""The run's JSON result and its Markdown table."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench._stats import Row


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        mem_kib = 0
    return {
        "cores": os.cpu_count(),
        "cpu": model,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def checkout(repo: Path) -> str:
    """The commit measured, and whether the work tree differed from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(repo), "status", "--porcelain", "-uno"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + {len(changed)} modified files" if changed else head


def _ratio(row: Row) -> str:
    return "" if row.ratio is None else f"{row.ratio:.3g}x"


def _target(row: Row) -> str:
    if not row.target:
        return ""
    if row.met is None:
        return row.target
    return f"{row.target}: {'met' if row.met else '**missed**'}"


def markdown(header: dict[str, Any], rows: list[Row], notes: list[str]) -> str:
    invalid = [row for row in rows if not row.valid]
    m = header["machine"]
    lines = [
        f"# propagator benchmarks: run {header['run_id']}",
        "",
        f"`{header['command']}` ({header['mode']}), {header['started_at']}, "
        f"{header['duration_s']:.0f} s, checkout {header['checkout']}"
        + (", **profiled with py-spy**" if header["profiled"] else "")
        + (
            ", **settings changed**: "
            + ", ".join(f"`{k}={v}`" for k, v in header["settings"].items())
            if header.get("settings")
            else ""
        )
        + f". Machine: {m['cores']} cores ({m['cpu']}), "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}; load average "
        f"{header['load_before']} before, {header['load_after']} after (the machine is shared).",
        "",
        "Every figure is beside a baseline measured in the same run; the ratio is figure / "
        "baseline (for latencies, p99 / baseline p99).",
        "",
    ]
    if invalid:
        lines += [
            f"**INVALID RUN: {len(invalid)} figure(s) could not be measured validly; "
            "their numbers are withheld.**",
            "",
        ]
    lines += [
        "| part | figure | measured | baseline (same run) | ratio | target |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.valid:
            cells = [row.value, row.baseline, _ratio(row), _target(row)]
        else:
            cells = [f"INVALID: {'; '.join(row.problems)}", "", "", row.target]
        lines.append("| " + " | ".join([row.section, row.figure, *cells]) + " |")
    if notes:
        lines += ["", *(f"- {note}" for note in notes)]
    return "\n".join(lines) + "\n"


def write(results_dir: Path, run_id: str, result: dict[str, Any], table: str | None) -> Path:
    """``{run_id}.json`` (and ``.md``), plus ``latest.*`` copies; returns the JSON's path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, default=str) + "\n"
    path = results_dir / f"{run_id}.json"
    path.write_text(text)
    (results_dir / "latest.json").write_text(text)
    if table is not None:
        (results_dir / f"{run_id}.md").write_text(table)
        (results_dir / "latest.md").write_text(table)
    return path
