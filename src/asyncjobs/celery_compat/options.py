"""The Celery options asyncjobs has no counterpart for, each with what to do instead.

A Celery option is never ignored: one that maps onto asyncjobs is mapped (tasks.py,
canvas.py, app.py), and every other one raises ``CeleryOptionError``, a sentence naming the
option and what to use instead. The tables below are the whole list; the migration guide
(docs/migrating-from-celery.md) has the same rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import AsyncJobsError

# @app.task(...) options.
TASK_OPTIONS: dict[str, str] = {
    "acks_late": (
        "asyncjobs records every attempt in Postgres, so there is no late acknowledgement: a "
        "job runs at most once unless it has retries (max_retries, autoretry_for), and a node "
        "dying counts as one attempt; for jobs that must resume, see durable jobs"
    ),
    "reject_on_worker_lost": (
        "a job whose pool worker dies is retried if it has attempts left, else failed "
        "(WorkerCrashedError): give it max_retries"
    ),
    "ignore_result": "asyncjobs always keeps a job's result, until retention_s prunes it",
    "store_errors_even_if_ignored": "asyncjobs always keeps a job's error",
    "serializer": "payloads are always JSON (orjson); pass JSON values",
    "compression": "payloads are JSON, limited by max_payload_bytes; store large data elsewhere",
    "track_started": "a job's state is running while it runs, always",
    "expires": "a job waits until it runs or is cancelled; cancel it with app.cancel(id)",
    "throws": "every exception is recorded with its traceback",
    "base": "there are no Task subclasses; share code through functions",
    "typing": "arguments are checked when the job runs, as Python calls them",
    "shared": "tasks belong to the app they are declared on",
    "lazy": "tasks are registered when declared",
    "retry_kwargs": "pass max_retries= and default_retry_delay= to the task directly",
    "trail": "a workflow's steps and their results are stored: app.workflow_status(id)",
}

# .apply_async(...) and .s(...).set(...) options.
CALL_OPTIONS: dict[str, str] = {
    "expires": "a job waits until it runs or is cancelled; cancel it with app.cancel(id)",
    "task_id": "asyncjobs makes the id (a UUIDv7) when it stores the job; use the one returned",
    "link": "chain the callback instead: (task.s(...) | callback.s()).delay()",
    "link_error": (
        "a failed step cancels its dependents; check app.workflow_status(id), or catch the "
        "error in the task"
    ),
    "retry": "enqueueing retries a lost connection by itself, without doubling the job",
    "retry_policy": "enqueueing retries a lost connection by itself, without doubling the job",
    "serializer": "payloads are always JSON (orjson); pass JSON values",
    "compression": "payloads are JSON, limited by max_payload_bytes",
    "exchange": "name the queue with queue=",
    "routing_key": "name the queue with queue=",
    "headers": "pass what the task needs as arguments",
    "shadow": "a job's name is its task's name",
    "ignore_result": "asyncjobs always keeps a job's result, until retention_s prunes it",
    "time_limit": "declare the limit on the task: @app.task(time_limit=...)",
    "soft_time_limit": "declare the limit on the task: @app.task(soft_time_limit=...)",
    "add_to_parent": "a job enqueued by a task does not join it; use after= or a workflow",
    "connection": "the app holds its connections",
    "producer": "the app holds its connections",
}

# Celery(...) and app.conf settings.
APP_OPTIONS: dict[str, str] = {
    "broker": (
        "asyncjobs keeps its jobs in Postgres: remove broker= and set ASYNCJOBS_DSN (or "
        "dsn=...) to a postgresql:// URL"
    ),
    "backend": "results are kept in Postgres with their jobs: remove backend=",
    "broker_url": "set ASYNCJOBS_DSN (or dsn=...) to a postgresql:// URL",
    "result_backend": "results are kept in Postgres with their jobs: remove it",
    "task_serializer": "payloads are always JSON",
    "result_serializer": "results are always JSON",
    "accept_content": "payloads are always JSON",
    "task_acks_late": "see acks_late: a job runs at most once unless it has retries",
    "worker_prefetch_multiplier": "a node claims what its free capacity allows, in one statement",
    "worker_max_tasks_per_child": "set max_jobs_per_worker (the pool's workers recycle by it)",
    "worker_max_memory_per_child": "set max_worker_uss_bytes",
    "task_always_eager": (
        "use asyncjobs.testing (the Harness, or the pytest plugin's fixtures): the real node "
        "code on a clock the test moves"
    ),
    "task_eager_propagates": "use asyncjobs.testing",
    "worker_pool": (
        "async def tasks run as coroutines on the node's event loop, plain def ones in its "
        "process pool: there is nothing to choose"
    ),
}


class CeleryOptionError(AsyncJobsError, ValueError):
    """A Celery option asyncjobs has no counterpart for; ``instead`` says what to use."""

    def __init__(self, where: str, option: str, instead: str) -> None:
        self.where = where
        self.option = option
        self.instead = instead
        super().__init__(
            f"{where}: the Celery option {option}= has no counterpart in asyncjobs ({instead}). "
            "See docs/migrating-from-celery.md"
        )


def refuse(
    where: str, given: Iterable[str], table: Mapping[str, str], known: Iterable[str]
) -> None:
    """Raise for the first option in ``given`` that ``table`` refuses, or that is unknown."""
    allowed = set(known)
    for option in given:
        if option in table:
            raise CeleryOptionError(where, option, table[option])
        if option not in allowed:
            raise CeleryOptionError(
                where, option,
                f"it is not a Celery option asyncjobs knows; the ones it maps are "
                f"{', '.join(sorted(allowed))}",
            )  # fmt: skip


def present(options: Mapping[str, Any]) -> list[str]:
    """The options given a value (None is Celery's "not given")."""
    return [name for name, value in options.items() if value is not None]
