"""Turning a call into a row: every check and every encoding, before anything is written.

A bad argument, option or payload raises here, naming the job and the value, so a failed
``enqueue`` never leaves a half-written job behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson

from .clock import to_timestamp
from .errors import ConfigurationError, InvalidJobOptionError
from .jobs import PRIORITY_MAX, PRIORITY_MIN, JobDef, JobId, Signature
from .limits import MAX_KEY_CHARS, JobLimits, limit_problem
from .serialization import STRICT_JSON, encode_args, suspect
from .settings import check_queue_name
from .storable import text_problem
from .store.base import NewJob

MAX_UNIQUE_KEY_CHARS = 512
MAX_DELAY_S = 10 * 365 * 86400.0  # ten years: beyond that a delay is a mistake
_NO_OPTIONS = (None, None, None, None, None)  # Signature fields queue..unique_key, all unset
_NO_KWARGS: dict[str, Any] = {}  # only ever encoded, never handed to a job


def prepare(
    sig: Signature,
    definition: JobDef[Any, Any],
    job_id: JobId,
    now: float,
    limit: int,
    trace: str | None = None,
) -> NewJob:
    """Validate and encode one job. ``limit`` is the payload size limit in bytes; ``trace``
    the enqueue span's context to store with it (asyncjobs.tracing), if tracing is on."""
    name = definition.name
    kwargs = sig.kwargs if type(sig.kwargs) is dict else dict(sig.kwargs)
    payload = encode_args(name, sig.args, kwargs, limit)
    limited = _limits(sig, definition, kwargs)
    if not sig.has_options:  # the common case: the job's own queue and priority, now
        return NewJob(
            job_id, name, definition.queue, definition.priority, "queued", payload, now,
            definition.max_attempts, None, *limited, trace,
        )  # fmt: skip
    queue = sig.queue if sig.queue is not None else definition.queue
    priority = sig.priority if sig.priority is not None else definition.priority
    if sig.queue is not None:
        try:
            check_queue_name(queue)
        except ConfigurationError as exc:
            raise InvalidJobOptionError(name, "queue", queue, exc.why) from None
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidJobOptionError(name, "priority", priority, "use a whole number")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise InvalidJobOptionError(
            name, "priority", priority, f"use a whole number in {PRIORITY_MIN}..{PRIORITY_MAX}"
        )
    run_at = resolve_run_at(name, sig.run_at, sig.delay, now)
    key = sig.unique_key
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_UNIQUE_KEY_CHARS):
        raise InvalidJobOptionError(
            name, "unique_key", key,
            f"use a non-empty string of at most {MAX_UNIQUE_KEY_CHARS} characters",
        )  # fmt: skip
    if key is not None and (why := text_problem(key)):
        raise InvalidJobOptionError(name, "unique_key", key, why)
    state = "scheduled" if run_at > now else "queued"
    return NewJob(
        job_id, name, queue, priority, state, payload, run_at, definition.max_attempts, key,
        *limited, trace,
    )  # fmt: skip


_Limits = tuple[str | None, int | None, str | None, int | None, float | None]
_NO_LIMITS: _Limits = (None, None, None, None, None)


def _limits(sig: Signature, definition: JobDef[Any, Any], kwargs: Any) -> _Limits:
    """The job's concurrency key and rate limit values (asyncjobs.limits), if any."""
    key, limit = sig.concurrency_key, sig.concurrency_limit
    if definition.limits is None and key is None and limit is None:
        return _NO_LIMITS
    name = definition.name
    if key is not None and (not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_CHARS):
        raise InvalidJobOptionError(
            name, "concurrency_key", key, f"use a string of 1 to {MAX_KEY_CHARS} characters"
        )
    if key is not None and (why := text_problem(key)):
        raise InvalidJobOptionError(name, "concurrency_key", key, why)
    if limit is not None and (why := limit_problem(limit)):
        raise InvalidJobOptionError(name, "concurrency_limit", limit, why)
    limits = definition.limits or JobLimits(None, None, None, None)
    return limits.values(name, sig.args, kwargs, definition.wants_context, key, limit)


def prepare_bulk(
    items: Sequence[Signature],
    ids: Iterable[JobId],
    now: float,
    limit: int,
    lookup: Callable[[str], JobDef[Any, Any]],
    trace: str | None = None,
) -> Iterator[NewJob]:
    """``prepare`` for large batches, lazily, with the common case inlined. Every job gets
    the same ``trace`` (the batch's enqueue span's context, or None).

    A signature without per-call options whose arguments encode cleanly is built here
    directly; anything else (options, a bad value, bytes that may hide a NaN, a NUL or a
    large float, an oversized payload) goes through ``prepare`` and its full checks. At
    20,000 jobs the function-call layers alone cost as much as the COPY.
    """
    definitions: dict[str, JobDef[Any, Any]] = {}
    make = tuple.__new__
    dumps = orjson.dumps
    for sig, job_id in zip(items, ids, strict=True):
        definition = definitions.get(sig.name)
        if definition is None:
            definition = definitions[sig.name] = lookup(sig.name)
        kwargs = sig.kwargs
        if (
            sig[3:8] == _NO_OPTIONS
            and definition.limits is None
            and sig.concurrency_key is None
            and sig.concurrency_limit is None
            and (not kwargs or type(kwargs) is dict)
        ):
            try:
                payload = dumps((sig.args, kwargs or _NO_KWARGS), option=STRICT_JSON)
            except TypeError:
                payload = b""
            # the byte test of serialization.check_storable, inlined
            if payload and len(payload) <= limit and suspect(payload) is None:
                yield make(
                    NewJob,
                    (job_id, definition.name, definition.queue, definition.priority, "queued",
                     payload, now, definition.max_attempts, None, None, None, None, None, None,
                     trace),
                )  # fmt: skip
                continue
        yield prepare(sig, definition, job_id, now, limit, trace)


def resolve_run_at(
    name: str, run_at: datetime | None, delay: timedelta | float | None, now: float
) -> float:
    """When the job may start, in epoch seconds."""
    if run_at is not None and delay is not None:
        raise InvalidJobOptionError(name, "run_at", run_at, "give run_at or delay, not both")
    if run_at is not None:
        if not isinstance(run_at, datetime):
            raise InvalidJobOptionError(name, "run_at", run_at, "expected a datetime")
        try:
            return to_timestamp(run_at)
        except ValueError as exc:
            raise InvalidJobOptionError(name, "run_at", run_at, str(exc)) from None
    if delay is None:
        return now
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 <= seconds <= MAX_DELAY_S
    ):
        raise InvalidJobOptionError(
            name, "delay", delay, "use zero or more seconds (at most ten years)"
        )
    return now + seconds
