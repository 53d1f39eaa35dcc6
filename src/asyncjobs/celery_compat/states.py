"""Celery's state names, as ``AsyncResult.state`` reports them (``celery.states``)."""

from __future__ import annotations

from .results import FAILURE, PENDING, READY_STATES, RETRY, REVOKED, STARTED, SUCCESS

__all__ = ["FAILURE", "PENDING", "READY_STATES", "RETRY", "REVOKED", "STARTED", "SUCCESS"]
