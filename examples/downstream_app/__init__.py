"""A small downstream service that refuses revoked sessions with ``propagator.guard``."""

from examples.downstream_app.app import create_app, mint_token

__all__ = ["create_app", "mint_token"]
