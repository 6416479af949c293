"""``propagator ingest`` with SO_REUSEPORT, so that N processes share one port (bench only).

    PROPAGATOR_...=... python -m bench.reuseport_ingest

The service's own command binds without SO_REUSEPORT; this runs the very same application
(``propagator.cli.build_ingest_app``) and differs only in passing ``reuse_port=True`` to
``aiohttp.web.run_app``. The kernel then spreads incoming connections over the processes.
"""

from __future__ import annotations

from aiohttp import web

from propagator.cli import build_ingest_app
from propagator.logs import configure_logging
from propagator.settings import load_settings


def main() -> None:
    settings = load_settings()
    configure_logging(settings.log.level, settings.log.format)
    web.run_app(
        build_ingest_app(settings),
        host=settings.ingest.host,
        port=settings.ingest.port,
        reuse_port=True,
        print=None,
        access_log=None,
        shutdown_timeout=10,
    )


if __name__ == "__main__":
    main()
