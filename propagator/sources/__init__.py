"""Webhook sources: each verifies one identity provider's signature and maps its events.

Every source kind is one module with the same shape: a verifier that raises on
anything forged or stale, and a ``parse`` that turns a verified body into a
canonical ``RevocationEvent`` or an ``Ignored`` acknowledgement.
"""

from propagator.sources._base import Ignored, Outcome, Source
from propagator.sources.workos import WorkOSSource, WorkOSVerifier, sign_workos

__all__ = ["Ignored", "Outcome", "Source", "WorkOSSource", "WorkOSVerifier", "sign_workos"]
