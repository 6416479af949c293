"""Files of raw HTTP requests, shared by wrk's script and the paced generator.

Standard library only: the generator imports it, and must start fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def write_requests(path: Path, requests: Sequence[bytes]) -> None:
    """One file of length-prefixed raw requests (``<length>\\n<bytes>``), for wrk and loadgen."""
    with path.open("wb") as out:
        for request in requests:
            out.write(b"%d\n" % len(request))
            out.write(request)


def read_requests(path: Path) -> list[bytes]:
    data = path.read_bytes()
    requests: list[bytes] = []
    pos = 0
    while pos < len(data):
        newline = data.index(b"\n", pos)
        length = int(data[pos:newline])
        requests.append(data[newline + 1 : newline + 1 + length])
        pos = newline + 1 + length
    return requests
