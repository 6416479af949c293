"""Correctly signed, unique WorkOS ``session.revoked`` deliveries, as raw HTTP/1.1 requests.

Ingest deduplicates by event id and refuses WorkOS timestamps more than 180 s away, so every
request carries fresh ids and each batch is signed just before the phase that sends it.
Each event names its own user, so the events spread over every partition of the topic
(the Kafka key is the user id).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from propagator.sample import sample_session_revoked, signed_headers


@dataclass(frozen=True, slots=True)
class Batch:
    """Pre-signed requests, and the session each one revokes (same order)."""

    requests: list[bytes]
    session_ids: list[str]


class Presigner:
    """Signs batches of unique deliveries for one run; ids never repeat within it."""

    def __init__(self, *, secret: bytes, run_id: str, path: str = "/webhooks/workos") -> None:
        self._secret = secret
        self._run_id = run_id
        self._path = path
        self._counter = itertools.count()

    def batch(self, count: int) -> Batch:
        requests: list[bytes] = []
        session_ids: list[str] = []
        for _ in range(count):
            serial = f"{self._run_id}{next(self._counter):08d}"
            session_id = f"session_{serial}"
            body = sample_session_revoked(
                session_id=session_id, user_id=f"user_{serial}", event_id=f"event_{serial}"
            )
            headers = signed_headers(self._secret, body)
            head = (
                f"POST {self._path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in headers.items())
                + f"Content-Length: {len(body)}\r\n\r\n"
            )
            requests.append(head.encode() + body)
            session_ids.append(session_id)
        return Batch(requests=requests, session_ids=session_ids)
