"""Baseline for ingest: a bare aiohttp handler that reads the body and answers 200.

    python -m bench.bare_server --port PORT [--reuse-port]

Same framework, host, route shape and answer size as ``propagator ingest``, and none of its
work (verify, parse, dedupe, publish): the ceiling this machine puts on any aiohttp service.
"""

from __future__ import annotations

import argparse

from aiohttp import web

# The size of ingest's answer, so both move the same bytes.
_ANSWER = (
    b'{"status": "published", "event_id": "event_0123456789ABCDEF0123456789", '
    b'"type": "session.revoked"}'
)


async def _webhook(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=_ANSWER, content_type="application/json")


async def _healthz(request: web.Request) -> web.Response:
    return web.Response(body=b'{"status": "ok"}', content_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--reuse-port", action="store_true")
    args = parser.parse_args()
    app = web.Application()
    app.router.add_post("/webhooks/{name}", _webhook)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _healthz)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        reuse_port=args.reuse_port or None,
        print=None,
        access_log=None,
        shutdown_timeout=5,
    )


if __name__ == "__main__":
    main()
