"""Resource abuse of the real ingest process: slow bodies and headers, many idle connections."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from tests.reliability.harness import (
    Counts,
    Proc,
    Processes,
    env_for,
    free_port,
    wait_for,
    wait_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.reliability, pytest.mark.timeout(300)]


@pytest.fixture
async def ingest(unique: str, tmp_path: Path) -> AsyncIterator[tuple[int, Proc]]:
    port = free_port()
    processes = Processes(
        tmp_path, env_for(unique=unique, topic=f"test.res.{unique}", ingest_port=port)
    )
    try:
        proc = processes.start("ingest")
        await wait_ready(port)
        yield port, proc
    finally:
        processes.close()


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _dribble(writer: asyncio.StreamWriter, pieces: list[bytes], interval: float) -> int:
    sent = 0
    for piece in pieces:
        try:
            writer.write(piece)
            await writer.drain()
        except ConnectionError:
            break
        sent += 1
        await asyncio.sleep(interval)
    return sent


class TestSlowloris:
    async def test_slow_body_is_cut_off_with_408(self, ingest: tuple[int, Proc]) -> None:
        """A body dribbled one byte every 0.5 s is refused with 408 long before it is whole."""
        port, _ = ingest
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /webhooks/workos HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        sending = asyncio.create_task(_dribble(writer, [b"{"] * 1000, 0.5))
        try:
            async with asyncio.timeout(60):
                status = await reader.readline()
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            writer.close()
        assert status.startswith(b"HTTP/1.1 408"), status

    async def test_slow_headers_are_cut_off(self, ingest: tuple[int, Proc]) -> None:
        """Headers dribbled one line a second never complete: the server closes the connection."""
        port, _ = ingest
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /webhooks/workos HTTP/1.1\r\nHost: x\r\n")
        sending = asyncio.create_task(
            _dribble(writer, [f"X-Slow-{i}: y\r\n".encode() for i in range(300)], 1.0)
        )
        try:
            async with asyncio.timeout(90):
                rest = await reader.read()  # b"" (or an error status) once the server closed
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending
            writer.close()
        assert not rest.startswith(b"HTTP/1.1 2"), rest


class TestConnections:
    async def test_many_idle_connections_stay_bounded(
        self, ingest: tuple[int, Proc], report: Callable[[Counts], None]
    ) -> None:
        """400 idle connections: health checks still answer, and the server closes them all
        (its descriptors return to the baseline); memory measured before, at peak and after."""
        port, proc = ingest
        baseline_fds, baseline_rss = _fds(proc.pid), _rss_kib(proc.pid)
        started = time.monotonic()
        connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(400)]
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/healthz") as r,
            ):
                assert 200 == r.status
            peak_fds, peak_rss = _fds(proc.pid), _rss_kib(proc.pid)

            async def closed() -> bool:
                return _fds(proc.pid) <= baseline_fds + 5

            await wait_for(closed, timeout=60, what="idle connections closed by the server")
        finally:
            for _, writer in connections:
                writer.close()
        after_rss = _rss_kib(proc.pid)
        report(
            Counts(
                scenario="400 idle connections",
                sent=400,
                accepted=0,
                applied=0,
                lost=0,
                duplicated=0,
                recovery_s=time.monotonic() - started,
                duration_s=time.monotonic() - started,
                notes=(
                    f"fds {baseline_fds} -> {peak_fds} -> {_fds(proc.pid)}; RSS KiB "
                    f"{baseline_rss} -> {peak_rss} -> {after_rss}"
                ),
            )
        )
        assert peak_fds >= baseline_fds + 300  # the connections were really open
