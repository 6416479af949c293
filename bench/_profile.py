"""``--profile``: py-spy samples the ingest and worker processes while they are measured.

py-spy is installed into the project's virtualenv on first use (it is a bench-only tool, not
a dependency of the project). It pauses the target to sample it, 100 times a second, which
costs the target a little: figures from a profiled run are marked as such.
"""

from __future__ import annotations

import asyncio
import collections
import subprocess
from pathlib import Path
from typing import Any

_RATE_HZ = 100
_TOP = 25


def ensure_py_spy(python: str) -> str:
    binary = Path(python).parent / "py-spy"
    if not binary.exists():
        subprocess.run([python, "-m", "pip", "install", "--quiet", "py-spy"], check=True)
    return str(binary)


def summarise(path: Path, top: int = _TOP) -> list[dict[str, Any]]:
    """The functions holding the most samples (inclusive), from py-spy's raw output."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        samples = int(count)
        total += samples
        # "function (file:line)": drop the line, so one function counts once per stack.
        frames = {frame.rsplit(":", 1)[0] + ")" for frame in stack.split(";") if frame}
        for frame in frames:
            inclusive[frame] += samples
    if not total:
        return []
    # Frames in (nearly) every sample are the event loop and the entry point: not news.
    ranked = [(n, f) for f, n in inclusive.most_common() if n < 0.9 * total]
    return [{"share": round(n / total, 3), "frame": f} for n, f in ranked[:top]]


class Profiler:
    def __init__(self, *, binary: str, out_dir: Path) -> None:
        self._binary = binary
        self._out_dir = out_dir
        self.results: dict[str, Any] = {}

    async def sample(self, tag: str, pid: int, duration_s: float) -> asyncio.Task[None]:
        """Start sampling ``pid`` for ``duration_s``; await the task for the summary."""
        self._out_dir.mkdir(parents=True, exist_ok=True)
        out = self._out_dir / f"profile-{tag}.txt"
        proc = await asyncio.create_subprocess_exec(
            self._binary,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(duration_s))),
            "--rate",
            str(_RATE_HZ),
            "--format",
            "raw",
            "--output",
            str(out),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

        async def finish() -> None:
            await proc.wait()
            self.results[tag] = {
                "raw": str(out),
                "top_inclusive": summarise(out) if out.exists() else [],
            }

        return asyncio.create_task(finish())
