"""A synchronous face for the guard, for Flask, Django and other WSGI applications."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from types import TracebackType
from typing import Any, Self, TypeVar

from propagator.guard._decision import Decision
from propagator.guard._guard import GuardStats, RevocationGuard

_T = TypeVar("_T")


class BlockingRevocationGuard:
    """Runs a ``RevocationGuard`` on its own event-loop thread; ``check()`` blocks.

    The guard lives in the background thread (its subscription, its cache); a check hops to
    that thread and back, tens of microseconds on a cache hit. Create one per process, after
    any fork (gunicorn: in ``post_fork``), since a thread does not survive ``fork()``.
    """

    def __init__(
        self, *, factory: Callable[[], RevocationGuard], check_timeout_s: float = 2.0
    ) -> None:
        if check_timeout_s <= 0:
            raise ValueError("check_timeout_s must be positive")
        self._factory = factory
        self._check_timeout_s = check_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._guard: RevocationGuard | None = None

    @classmethod
    def from_url(
        cls, url: str, *, check_timeout_s: float = 2.0, **options: Any
    ) -> BlockingRevocationGuard:
        """A blocking guard around ``RevocationGuard.from_url(url, **options)``."""
        return cls(
            factory=lambda: RevocationGuard.from_url(url, **options),
            check_timeout_s=check_timeout_s,
        )

    @property
    def stats(self) -> GuardStats:
        if self._guard is None:
            raise RuntimeError("the BlockingRevocationGuard is not started")
        return self._guard.stats

    def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("the BlockingRevocationGuard is already started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="revocation-guard", daemon=True
        )
        self._thread.start()
        self._guard = self._run(self._start_guard())

    async def _start_guard(self) -> RevocationGuard:
        # Created inside the loop: the guard's Redis client and tasks belong to it.
        guard = self._factory()
        await guard.start()
        return guard

    def stop(self) -> None:
        loop, thread, guard = self._loop, self._thread, self._guard
        if loop is None or thread is None:
            return
        self._loop = self._thread = self._guard = None
        try:
            if guard is not None:
                self._run_on(loop, guard.stop())
            self._run_on(loop, loop.shutdown_asyncgens())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def check(
        self,
        session_id: str | None,
        user_id: str | None = None,
        org_id: str | None = None,
        issued_at: float | None = None,
    ) -> Decision:
        """``RevocationGuard.check``, blocking; the failure policy answers if it stalls."""
        loop, guard = self._loop, self._guard
        if loop is None or guard is None:
            raise RuntimeError("the BlockingRevocationGuard is not started: call start() first")
        future = asyncio.run_coroutine_threadsafe(
            guard.check(session_id, user_id, org_id, issued_at), loop
        )
        try:
            return future.result(self._check_timeout_s)
        except TimeoutError:
            future.cancel()
            return guard._unavailable(f"no answer within {self._check_timeout_s}s")

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        assert self._loop is not None
        return self._run_on(self._loop, coroutine)

    @staticmethod
    def _run_on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, _T]) -> _T:
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coroutine, loop)
        return future.result()
