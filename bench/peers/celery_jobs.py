"""Celery's app and tasks for the peers harness (``celery -A bench.peers.celery_jobs worker``).

The broker comes from ``$BENCH_CELERY_BROKER`` (a Redis database), which the side sets before
it imports this module and passes on to the worker it starts. The app names no result
backend: the worker is given one (``celery --result-backend``) and stores every task's
result there, while producers, which never read results, send without one. With a Redis
backend configured, a producer would subscribe to each task's result channel as it sends.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from . import side_common as sc

BROKER_ENV = "BENCH_CELERY_BROKER"

app = Celery("bench_peers", broker=os.environ[BROKER_ENV])
app.conf.update(
    # JSON, as asyncjobs' payloads are (Celery's default serializer, stated).
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # The defaults, stated: acknowledge on receipt; results stored (by the worker, in the
    # backend it is given), as asyncjobs keeps every job's outcome.
    task_acks_late=False,
    task_ignore_result=False,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop() -> None:
    return None


@app.task(name="probe")
def probe(i: int, sent: float) -> None:
    """The latency job: its start minus the wall time passed by the producer."""
    sc.record(f"{i} {time.time() - sent}")


@app.task(name="sleeper")
def sleeper(seconds: float) -> None:
    sc.record("s")
    time.sleep(seconds)


@worker_ready.connect
def _say_ready(**_: Any) -> None:
    sc.ready()
