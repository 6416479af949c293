"""Webhook sources: each authenticates one identity provider's deliveries and maps its events.

Every kind is one module with the same shape: a ``*Config`` model (its settings, with
``name`` and ``kind``), a verifier that raises on anything forged or stale, a source whose
``receive`` turns a verified delivery into canonical ``RevocationEvent``s (or ``Ignored``),
and ``build(config)``. A configured source is served at ``POST /webhooks/{name}``.
"""

from __future__ import annotations

from typing import Annotated

import aiohttp
from pydantic import Field

from propagator.sources import generic_hmac, oidc_backchannel, okta, ssf, standard_webhooks, workos
from propagator.sources._base import (
    Delivery,
    Ignored,
    Outcome,
    Reply,
    Result,
    SessionSeen,
    Source,
)
from propagator.sources.generic_hmac import HMACConfig
from propagator.sources.oidc_backchannel import OIDCBackchannelConfig
from propagator.sources.okta import OktaConfig
from propagator.sources.ssf import SSFConfig
from propagator.sources.standard_webhooks import StandardWebhooksConfig
from propagator.sources.workos import WorkOSConfig, WorkOSSource, WorkOSVerifier, sign_workos

SourceConfig = Annotated[
    WorkOSConfig
    | StandardWebhooksConfig
    | OIDCBackchannelConfig
    | SSFConfig
    | OktaConfig
    | HMACConfig,
    Field(discriminator="kind"),
]

KINDS = ("workos", "standard-webhooks", "oidc-backchannel", "ssf", "okta", "hmac")


def build_source(config: SourceConfig, *, http: aiohttp.ClientSession) -> Source:
    """The source a config describes; ``http`` fetches JWKS for the token-based kinds."""
    match config:
        case WorkOSConfig():
            return workos.build(config)
        case StandardWebhooksConfig():
            return standard_webhooks.build(config)
        case OIDCBackchannelConfig():
            return oidc_backchannel.build(config, http=http)
        case SSFConfig():
            return ssf.build(config, http=http)
        case OktaConfig():
            return okta.build(config)
        case HMACConfig():
            return generic_hmac.build(config)


__all__ = [
    "KINDS",
    "Delivery",
    "HMACConfig",
    "Ignored",
    "OIDCBackchannelConfig",
    "OktaConfig",
    "Outcome",
    "Reply",
    "Result",
    "SSFConfig",
    "SessionSeen",
    "Source",
    "SourceConfig",
    "StandardWebhooksConfig",
    "WorkOSConfig",
    "WorkOSSource",
    "WorkOSVerifier",
    "build_source",
    "sign_workos",
]
