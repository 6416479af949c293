"""The processes the bench starts: by PID, with a log file each, their peak RSS and CPU time.

Every process is stopped by its PID (SIGTERM, then SIGKILL after a grace period) when the
section that started it ends, on failure too; and each asks the kernel to send it SIGTERM if
the bench itself dies, so that no service outlives a killed run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

_PR_SET_PDEATHSIG = 1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def die_with_parent() -> None:
    # Runs in the child between fork and exec.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def peak_rss_mib(pid: int) -> float | None:
    """The process's peak resident set size (``VmHWM``), while it is alive."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used so far (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Field 2 (comm) may contain spaces; utime and stime are fields 14 and 15.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass
class Proc:
    """One started process."""

    name: str
    role: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Processes:
    """Starts processes and stops each by PID; records each role's peak RSS on the way out."""

    log_dir: Path
    cwd: Path
    peak_rss: dict[str, float] = field(default_factory=dict)
    _running: list[Proc] = field(default_factory=list)

    def start(self, name: str, role: str, argv: Sequence[str], env: Mapping[str, str]) -> Proc:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent,
            )
        proc = Proc(name=name, role=role, popen=popen, log_path=log_path)
        self._running.append(proc)
        return proc

    def record_peak(self, proc: Proc) -> None:
        rss = peak_rss_mib(proc.pid)
        if rss is not None:
            self.peak_rss[proc.role] = max(rss, self.peak_rss.get(proc.role, 0.0))

    async def stop(self, proc: Proc, grace_s: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL: returns the exit code (None if it had to be killed)."""
        if proc in self._running:
            self._running.remove(proc)
        if proc.alive():
            self.record_peak(proc)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            try:
                return await asyncio.to_thread(proc.popen.wait, grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                await asyncio.to_thread(proc.popen.wait, grace_s)
                return None
        return proc.popen.returncode

    async def stop_many(self, procs: Sequence[Proc], grace_s: float = 15.0) -> None:
        """Stop several processes at once (each still by its PID)."""
        await asyncio.gather(*(self.stop(proc, grace_s) for proc in procs))

    async def stop_all(self) -> None:
        await self.stop_many(list(self._running))

    def check_alive(self, *procs: Proc) -> None:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(
                    f"{proc.name} (PID {proc.pid}) exited with {proc.popen.returncode}; "
                    f"last lines of {proc.log_path}:\n{proc.log_tail()}"
                )


async def wait_http_ok(processes: Processes, proc: Proc, url: str, timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; fail early, with the log, if the process exits."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while True:
            processes.check_alive(proc)
            try:
                async with http.get(url) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} did not answer 200 on {url} in {timeout_s}s")
            await asyncio.sleep(0.1)


def listens_on(pid: int, port: int) -> bool:
    """Whether the process holds a listening TCP socket on ``port`` (IPv4, any address)."""
    try:
        inodes = set()
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        lines = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        local, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port and inode in inodes:
            return True
    return False


async def run_json_child(
    python: str, cwd: Path, module: str, args: Sequence[str], timeout_s: float
) -> Any:
    """Run ``python -m module args --out FILE`` to completion and return the JSON it wrote."""
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        out = Path(tmp) / "out.json"
        child = await asyncio.create_subprocess_exec(
            python,
            "-m",
            module,
            *args,
            f"--out={out}",
            cwd=cwd,
            preexec_fn=die_with_parent,
        )
        try:
            async with asyncio.timeout(timeout_s):
                code = await child.wait()
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
        if code != 0:
            raise RuntimeError(f"python -m {module} failed with exit code {code}")
        return json.loads(out.read_text())
