"""``Signature``: a job call not yet enqueued, and the checks on a list of them.

Kept apart from jobs.py so that the job model and the builders (workflows.py) can both use
it; ``a | b`` builds a chain, which workflows.py defines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, NamedTuple

_EMPTY_KWARGS: Mapping[str, Any] = MappingProxyType({})


class Signature(NamedTuple):
    """A job call not yet enqueued: the job's name, its arguments, and per-call options.

    Build one with ``job.s(*args, **kwargs)`` or ``app.signature(name, *args, **kwargs)``, and
    pass a list of them to ``app.enqueue_many``. Options are set with ``.set(...)``. (A named
    tuple rather than a dataclass: ``enqueue_many`` callers build tens of thousands of them.)
    """

    name: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = _EMPTY_KWARGS
    queue: str | None = None
    priority: int | None = None
    run_at: datetime | None = None
    delay: timedelta | float | None = None
    unique_key: str | None = None
    # In a workflow: True (``job.si(...)``) keeps the parent's result out of its arguments.
    immutable: bool = False
    concurrency_key: str | None = None  # overrides the job's own (see asyncjobs.limits)
    concurrency_limit: int | None = None

    def __or__(self, other: Any) -> Any:
        """``a | b`` is ``chain(a, b)``: ``b`` runs after ``a``, with its result."""
        from .workflows import Chain, chain

        if isinstance(other, Chain):
            return Chain((self, *other.steps))
        return chain(self, other)

    def set(
        self,
        *,
        queue: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        delay: timedelta | float | None = None,
        unique_key: str | None = None,
    ) -> Signature:
        """A copy with the given options replaced (None keeps the current value)."""
        return self._replace(
            queue=queue if queue is not None else self.queue,
            priority=priority if priority is not None else self.priority,
            run_at=run_at if run_at is not None else self.run_at,
            delay=delay if delay is not None else self.delay,
            unique_key=unique_key if unique_key is not None else self.unique_key,
        )

    @property
    def has_options(self) -> bool:
        return not (
            self.queue is None
            and self.priority is None
            and self.run_at is None
            and self.delay is None
            and self.unique_key is None
            and self.concurrency_key is None
            and self.concurrency_limit is None
        )


def iter_signatures(items: Sequence[Signature]) -> Sequence[Signature]:
    for item in items:
        if not isinstance(item, Signature):
            raise TypeError(
                f"enqueue_many expects signatures (job.s(...) or app.signature(...)), "
                f"got {type(item).__name__}"
            )
    return items
