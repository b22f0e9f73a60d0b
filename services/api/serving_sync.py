"""Keeping serving replicas' token lists in step with what the API just changed.

Replicas take a request when its token's hash is in the list pushed to their endpoint
(services/orchestrator/serve_deployer.py, ``ServingAccess``), so every change of who may call
an endpoint (a token made or revoked, a user disabled or given another role, a project member
added or removed) pushes the Serve config again right after the answer."""

from __future__ import annotations

import logging

from fastapi import Request

from services.api.deps import ServicesDep
from services.core import tokens as token_service

log = logging.getLogger(__name__)


def resync_serving(request: Request, services: ServicesDep) -> None:
    """After the response: push the serving tokens again (retried by the expiry thread when
    Ray does not take it now)."""
    try:
        pushed = token_service.sync_serving_tokens(services.db, services.deployer)
    except Exception:  # after the answer: nobody to tell but the log and the retry thread
        log.exception("pushing the serving tokens failed")
        pushed = False
    if not pushed:
        sync = getattr(request.app.state, "token_sync", None)
        if sync is not None:
            sync.changed()
