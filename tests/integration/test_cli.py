"""The real commands as an operator runs them: `propagator ingest`, `worker`, `send-sample`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator

import aiohttp
import pytest

from propagator.sample import sample_session_revoked, signed_headers
from propagator.settings import Settings
from tests.integration.conftest import KAFKA_BOOTSTRAP, REDIS_URL, SECRET, record_count, wait_for

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def env(settings: Settings) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PROPAGATOR_")}
    environment.update(
        {
            "PROPAGATOR_KAFKA__BOOTSTRAP_SERVERS": KAFKA_BOOTSTRAP,
            "PROPAGATOR_KAFKA__TOPIC": settings.kafka.topic,
            "PROPAGATOR_KAFKA__TOPIC_PARTITIONS": "3",
            "PROPAGATOR_REDIS__URL": REDIS_URL,
            "PROPAGATOR_DENYLIST__KEY_PREFIX": settings.denylist.key_prefix,
            "PROPAGATOR_INGEST__DEDUPE_KEY_PREFIX": settings.ingest.dedupe_key_prefix,
            "PROPAGATOR_WORKER__SUBSCRIBER": settings.worker.subscriber,
            "PROPAGATOR_WORKER__METRICS_PORT": str(free_port()),
            "PROPAGATOR_RECEIPTS__PROJECTION_PREFIX": settings.receipts.projection_prefix,
            "PROPAGATOR_INGEST__PORT": str(free_port()),
            "PROPAGATOR_WORKOS__SECRETS": SECRET,
            "PROPAGATOR_LOG__FORMAT": "json",
        }
    )
    return environment


@pytest.fixture
def processes(env: dict[str, str]) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    started: dict[str, subprocess.Popen[bytes]] = {}
    for role in ("ingest", "worker"):
        started[role] = subprocess.Popen(
            [sys.executable, "-m", "propagator", role],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    yield started
    for proc in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


class TestCommands:
    async def test_send_sample_produces_the_key_and_sigterm_stops_cleanly(
        self, env: dict[str, str], processes: dict[str, subprocess.Popen[bytes]]
    ) -> None:
        """The README flow: ingest and worker run, the sample lands in Redis, SIGTERM exits 0."""
        port = env["PROPAGATOR_INGEST__PORT"]
        async with aiohttp.ClientSession() as http:

            async def ready() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_for(ready, timeout=60)
        sample = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "propagator",
            "send-sample",
            "--wait",
            "30",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await sample.communicate()
        text = output.decode()
        assert 0 == sample.returncode, text
        assert "-> 200" in text
        assert f"GET {env['PROPAGATOR_DENYLIST__KEY_PREFIX']}session:session_" in text

        subscriber = env["PROPAGATOR_WORKER__SUBSCRIBER"]
        async with aiohttp.ClientSession() as http:
            ingest_metrics = await (await http.get(f"http://127.0.0.1:{port}/metrics")).text()
            assert 'propagator_ingest_requests_total{outcome="published",source="workos"} 1.0' in (
                ingest_metrics
            )
            worker_url = f"http://127.0.0.1:{env['PROPAGATOR_WORKER__METRICS_PORT']}/metrics"
            worker_metrics = await (await http.get(worker_url)).text()
        assert f'propagator_applied_total{{subscriber="{subscriber}"}} 1.0' in worker_metrics
        assert (
            f'propagator_propagation_seconds_count{{subscriber="{subscriber}"}} 1.0'
            in worker_metrics
        )
        assert f'propagator_circuit_open{{subscriber="{subscriber}"}} 0.0' in worker_metrics

        for proc in processes.values():
            proc.send_signal(signal.SIGTERM)
        for role, proc in processes.items():
            assert 0 == await asyncio.to_thread(proc.wait, 30), role
        assert processes["worker"].stdout is not None
        worker_log = processes["worker"].stdout.read().decode()
        assert '"event": "worker.stopped"' in worker_log

    def test_missing_secret_is_a_clear_error(self, env: dict[str, str]) -> None:
        """Ingest without a WorkOS secret refuses to start and says how to fix it."""
        del env["PROPAGATOR_WORKOS__SECRETS"]
        result = subprocess.run(
            [sys.executable, "-m", "propagator", "ingest"], env=env, capture_output=True, timeout=60
        )
        assert 2 == result.returncode
        assert b"PROPAGATOR_WORKOS__SECRETS" in result.stderr

    def test_invalid_configuration_is_a_clear_error(self, env: dict[str, str]) -> None:
        """A bad value exits 2 with the field named, not a traceback."""
        env["PROPAGATOR_INGEST__PORT"] = "not-a-port"
        result = subprocess.run(
            [sys.executable, "-m", "propagator", "ingest"], env=env, capture_output=True, timeout=60
        )
        assert 2 == result.returncode
        assert b"ingest.port" in result.stderr
        assert b"Traceback" not in result.stderr


async def test_two_ingest_processes_share_one_port(env: dict[str, str], settings: Settings) -> None:
    """With ingest.reuse_port both processes bind the port, the kernel spreads connections over
    them, and every request each one answered is in the topic."""
    env["PROPAGATOR_INGEST__REUSE_PORT"] = "true"
    port = env["PROPAGATOR_INGEST__PORT"]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "propagator",
            "ingest",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    outputs = [asyncio.create_task(p.stdout.read()) for p in procs if p.stdout is not None]
    try:
        # A fresh connection each time, so that readiness is seen through both processes.
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            streak = 0

            async def both_ready() -> bool:
                nonlocal streak
                assert all(p.returncode is None for p in procs), "an ingest process exited"
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        streak = streak + 1 if resp.status == 200 else 0
                except aiohttp.ClientConnectionError:
                    streak = 0
                return streak >= 20

            await wait_for(both_ready, timeout=60)
            for _ in range(30):
                body = sample_session_revoked()
                headers = signed_headers(SECRET.encode(), body)
                async with http.post(
                    f"http://127.0.0.1:{port}/webhooks/workos", data=body, headers=headers
                ) as resp:
                    assert 200 == resp.status, await resp.text()
        assert 30 == await record_count(settings.kafka.topic)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            logs = [(await output).decode() for output in outputs]
            codes = [await proc.wait() for proc in procs]
    assert [0, 0] == codes
    served = [log.count('"event": "webhook.published"') for log in logs]
    assert 30 == sum(served)
    assert all(n > 0 for n in served), served
