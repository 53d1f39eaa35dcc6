"""Counting and purging a queue's jobs: ``app.counts()``, ``app.purge()``, ``asyncjobs purge``.

Counts of the unfinished states come from their partial indexes, so they stay cheap however
much history the table keeps; the finished states are a count over the history, and only
given when asked for. A purge deletes in batches, each its own short transaction that skips
the jobs a claim holds, and never touches a running job.
"""

from __future__ import annotations

from collections.abc import Iterable

from .errors import ConfigurationError, InvalidArgumentError
from .settings import check_queue_name
from .store.base import PENDING_STATES, PURGEABLE_STATES, Store

PURGE_BATCH = 5000  # jobs per purge transaction: short locks, one round trip per batch
DEFAULT_PURGE_STATES = ("queued",)


def check_queue(call: str, queue: object) -> str:
    try:
        check_queue_name(queue)
    except ConfigurationError as exc:
        raise InvalidArgumentError(call, "queue", queue, exc.why) from None
    assert isinstance(queue, str)
    return queue


def purge_states(states: str | Iterable[str]) -> tuple[str, ...]:
    """The states to purge, each once, in the order of the job's life; raises for the rest."""
    wanted = [states] if isinstance(states, str) else list(states)
    for state in wanted:
        if state == "running":
            raise InvalidArgumentError(
                "purge", "states", states,
                "running jobs are never purged; cancel them (app.cancel, asyncjobs cancel) "
                "and purge them once they have ended",
            )  # fmt: skip
        if state not in PURGEABLE_STATES:
            raise InvalidArgumentError(
                "purge", "states", states, f"use some of {', '.join(PURGEABLE_STATES)}"
            )
    if not wanted:
        raise InvalidArgumentError("purge", "states", states, "name at least one state")
    return tuple(s for s in PURGEABLE_STATES if s in wanted)


async def purge(store: Store, queue: str, states: tuple[str, ...]) -> dict[str, int]:
    """Delete the jobs of ``queue`` in ``states``; how many were deleted, per state."""
    deleted: dict[str, int] = {}
    for state in states:
        deleted[state] = 0
        after = None
        while True:
            ids = await store.purge_jobs(queue, state, PURGE_BATCH, after)
            deleted[state] += len(ids)
            if len(ids) < PURGE_BATCH:
                break
            after = ids[-1]
    return deleted


def describe_purge(queue: str, deleted: dict[str, int]) -> str:
    """One sentence: what a purge deleted."""
    parts = [f"{n:,} {state}" for state, n in deleted.items()]
    total = sum(deleted.values())
    cancelled = " (their dependents were cancelled)" if any(
        deleted.get(s) for s in PENDING_STATES
    ) else ""  # fmt: skip
    return f"deleted {total:,} jobs from queue {queue!r}: {', '.join(parts)}{cancelled}"
