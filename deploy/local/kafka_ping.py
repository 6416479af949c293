"""Exit 0 when a Kafka broker answers an ApiVersions request on HOST PORT.

Standard library only, so the start script can use it before any virtualenv exists.
ApiVersions v0 is answered by every broker version, including 4.x (KIP-896 kept it).
"""

from __future__ import annotations

import socket
import struct
import sys


def ping(host: str, port: int, timeout: float = 2.0) -> bool:
    client_id = b"propagator-ping"
    # Request header v1: api_key=18 (ApiVersions), api_version=0, correlation_id, client_id.
    header = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(header)) + header)
            size_bytes = _read_exact(sock, 4)
            (size,) = struct.unpack(">i", size_bytes)
            body = _read_exact(sock, size)
    except OSError:
        return False
    correlation_id, error_code = struct.unpack(">ih", body[:6])
    return correlation_id == 7 and error_code == 0


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed")
        buf += chunk
    return buf


if __name__ == "__main__":
    sys.exit(0 if ping(sys.argv[1], int(sys.argv[2])) else 1)
