"""``python -m examples.downstream_app [token SESSION_ID USER_ID]``: serve the example, or mint
a token for it.

Environment: ``DOWNSTREAM_JWT_SECRET`` (required), ``DOWNSTREAM_REDIS_URL`` (default
``redis://127.0.0.1:6379/0``), ``DOWNSTREAM_KEY_PREFIX`` (default ``propagator:revoked:``),
``DOWNSTREAM_PORT`` (default 8090).
"""

from __future__ import annotations

import logging
import os
import sys

from aiohttp import web

from examples.downstream_app.app import create_app, mint_token
from propagator.guard import DEFAULT_PREFIX, RevocationGuard


def main(argv: list[str]) -> int:
    secret = os.environ.get("DOWNSTREAM_JWT_SECRET")
    if not secret:
        print("set DOWNSTREAM_JWT_SECRET to the secret the example's tokens are signed with")
        return 2
    if argv[:1] == ["token"] and len(argv) == 3:
        print(mint_token(secret, session_id=argv[1], user_id=argv[2]))
        return 0
    if argv:
        print(__doc__)
        return 2
    logging.basicConfig(level=logging.INFO)
    guard = RevocationGuard.from_url(
        os.environ.get("DOWNSTREAM_REDIS_URL", "redis://127.0.0.1:6379/0"),
        key_prefix=os.environ.get("DOWNSTREAM_KEY_PREFIX", DEFAULT_PREFIX),
    )
    port = int(os.environ.get("DOWNSTREAM_PORT", "8090"))
    web.run_app(create_app(guard=guard, jwt_secret=secret), host="127.0.0.1", port=port)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
