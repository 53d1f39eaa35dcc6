"""Celery's API over asyncjobs, for porting a Celery project task by task.

``from asyncjobs.celery_compat import Celery`` in place of ``from celery import Celery``: the
app declares ``@app.task`` functions, ``task.delay()`` and ``apply_async()`` enqueue them,
``.s()``, ``|``, ``group``, ``chain`` and ``chord`` submit workflows, ``beat_schedule`` and
``crontab`` declare schedules, and ``AsyncResult`` reads results. What has no counterpart
raises ``CeleryOptionError`` naming the option and what to do instead.
docs/migrating-from-celery.md is the guide.
"""

from __future__ import annotations

from ..errors import SoftTimeLimitExceeded
from . import states
from .app import Celery
from .beat import crontab
from .canvas import celery_chain as chain
from .canvas import celery_chord as chord
from .canvas import celery_group as group
from .canvas import signature
from .options import CeleryOptionError
from .results import AsyncResult, GroupResult
from .tasks import MaxRetriesExceededError, Task

__all__ = [
    "AsyncResult",
    "Celery",
    "CeleryOptionError",
    "GroupResult",
    "MaxRetriesExceededError",
    "SoftTimeLimitExceeded",
    "Task",
    "chain",
    "chord",
    "crontab",
    "group",
    "signature",
    "states",
]
