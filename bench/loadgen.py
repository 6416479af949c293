"""Open-loop HTTP load generator: pre-built requests sent at fixed, scheduled instants.

    python -m bench.loadgen --port P --requests FILE --rate R --procs N --index I \
        --max-connections C --out FILE

It reads its requests and opens a few connections, prints ``ready``, then reads the
schedule's start (a ``time.monotonic()`` instant, the same clock in every process) from
standard input, so that a slow start-up never shows up as lateness.

Process ``I`` of ``N`` sends its share of a schedule of ``R`` requests per second: request
``j`` (``j = k * N + I`` for this process's ``k``-th request) is due at ``start + j / R``,
whether or not earlier answers came back, so a slow answer delays no later request (no
coordinated omission). A request's latency counts from the instant it was dispatched: its
due instant, plus however late this process woke up for it, which is reported separately and
bounded by the bench. Requests are raw HTTP/1.1 on keep-alive connections, one in flight per
connection; a connection is opened when none is idle, up to ``C``, after which dispatched
requests wait for one, and that wait is part of their latency. When a request has waited
``--max-backlog`` seconds for a connection, the server cannot sustain the rate: the rest of
the schedule is not sent (status -2), since latency at an unsustainable rate only grows
with the length of the run.

A parser this small is enough because the servers measured are aiohttp's, whose answers
always carry Content-Length. It costs a few tens of microseconds per request, which is
why this, and not an HTTP client library, paces the fixed-rate runs. The output (JSON) has,
per request, the send and answer instants relative to ``start``, the status (0: no answer
before the deadline, -1: connection lost, -2: not sent), and the process's CPU time, so the
bench can refuse a run in which the generator fell behind its own schedule.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import resource
import sys
import time
from pathlib import Path

from bench._reqfile import read_requests

NOT_SENT = -2


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Connection(asyncio.Protocol):
    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.current: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, k: int, payload: bytes) -> None:
        assert self.transport is not None
        self.current = k
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end]).lower()
            marker = head.find(b"\r\ncontent-length:")
            if marker < 0:
                raise RuntimeError("answer without Content-Length")
            line_end = head.find(b"\r\n", marker + 2)
            length = int(head[marker + 17 : line_end if line_end >= 0 else None])
            total = end + 4 + length
            if len(self._buffer) < total:
                return
            status = int(head[9:12])
            del self._buffer[:total]
            k, self.current = self.current, None
            if k is not None:
                self._pool.answered(self, k, status)

    def connection_lost(self, exc: Exception | None) -> None:
        self._pool.lost(self)


class _Pool:
    def __init__(
        self, *, host: str, port: int, requests: list[bytes], max_connections: int
    ) -> None:
        self._host = host
        self._port = port
        self._requests = requests
        self._max = max_connections
        self.start = 0.0
        self._idle: list[_Connection] = []
        self._queue: collections.deque[int] = collections.deque()
        self._open = 0
        self._tasks: set[asyncio.Task[None]] = set()
        n = len(requests)
        self.sent = [0.0] * n
        self.done = [0.0] * n
        self.status = [0] * n
        self.outstanding = 0  # dispatched, not answered yet
        self.opened = 0
        self.all_answered = asyncio.Event()

    async def warm(self, count: int) -> None:
        await asyncio.gather(*(self._connect() for _ in range(min(count, self._max))))

    def oldest_waiting(self) -> int | None:
        """The request that has waited longest for a connection, if any is waiting."""
        return self._queue[0] if self._queue else None

    def drop_waiting(self) -> None:
        """Give up the requests still waiting for a connection: they are never sent."""
        while self._queue:
            self.status[self._queue.popleft()] = NOT_SENT
            self.outstanding -= 1
        if self.outstanding == 0:
            self.all_answered.set()

    def dispatch(self, k: int) -> None:
        self.outstanding += 1
        if self._idle:
            self._send(self._idle.pop(), k)
            return
        self._queue.append(k)
        if self._open < self._max:
            task = asyncio.create_task(self._connect())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _send(self, conn: _Connection, k: int) -> None:
        self.sent[k] = time.monotonic() - self.start
        conn.send(k, self._requests[k])

    async def _connect(self) -> None:
        self._open += 1
        self.opened += 1
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                lambda: _Connection(self), self._host, self._port
            )
        except OSError:
            self._open -= 1
            if self._queue:
                self._finish(self._queue.popleft(), -1)
            return
        self._release(conn)

    def _release(self, conn: _Connection) -> None:
        if self._queue:
            self._send(conn, self._queue.popleft())
        else:
            self._idle.append(conn)

    def answered(self, conn: _Connection, k: int, status: int) -> None:
        self._finish(k, status)
        self._release(conn)

    def lost(self, conn: _Connection) -> None:
        self._open -= 1
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.current is not None:
            self._finish(conn.current, -1)

    def _finish(self, k: int, status: int) -> None:
        self.done[k] = time.monotonic() - self.start
        self.status[k] = status
        self.outstanding -= 1
        if self.outstanding == 0:
            self.all_answered.set()

    def close(self) -> None:
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()


async def _run(args: argparse.Namespace) -> dict[str, object]:
    requests = read_requests(Path(args.requests))
    pool = _Pool(
        host=args.host, port=args.port, requests=requests, max_connections=args.max_connections
    )
    await pool.warm(args.warm_connections)
    print("ready", flush=True)
    start = pool.start = float(await asyncio.to_thread(sys.stdin.readline))
    cpu_before = _cpu_s()
    dispatched = [0.0] * len(requests)

    async def watch_backlog() -> None:
        # A request that waited this long for a connection: the server cannot sustain the
        # rate, and going on would only lengthen the run.
        while True:
            await asyncio.sleep(0.05)
            waiting = pool.oldest_waiting()
            if waiting is not None and time.monotonic() - start - dispatched[waiting] > (
                args.max_backlog
            ):
                pool.drop_waiting()
                return

    watchdog = asyncio.create_task(watch_backlog())
    interval = args.procs / args.rate
    offset = args.index / args.rate
    for k in range(len(requests)):
        due = start + offset + k * interval
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if watchdog.done():
            for rest in range(k, len(requests)):
                pool.status[rest] = NOT_SENT
            break
        dispatched[k] = time.monotonic() - start
        pool.dispatch(k)
    sending_ended = time.monotonic()
    cpu_sending = _cpu_s() - cpu_before
    if pool.outstanding:
        # The event may have been set while the schedule ran and answers caught up.
        pool.all_answered.clear()
        try:
            async with asyncio.timeout(args.answer_timeout):
                await pool.all_answered.wait()
        except TimeoutError:
            pass
    watchdog.cancel()
    pool.close()
    return {
        "index": args.index,
        "dispatched": [round(x, 6) for x in dispatched],
        "sent": [round(x, 6) for x in pool.sent],
        "done": [round(x, 6) for x in pool.done],
        "status": pool.status,
        "cpu_s": cpu_sending,
        "wall_s": sending_ended - (start + offset),
        "connections_opened": pool.opened,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--requests", required=True)
    parser.add_argument("--rate", type=float, required=True, help="total, all processes")
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--max-connections", type=int, default=128)
    parser.add_argument("--warm-connections", type=int, default=8)
    parser.add_argument("--answer-timeout", type=float, default=30.0)
    parser.add_argument(
        "--max-backlog", type=float, default=1.0, help="stop when a request waited this long"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result = asyncio.run(_run(args))
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
