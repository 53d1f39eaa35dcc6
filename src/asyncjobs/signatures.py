"""``Signature``: a job call not yet enqueued, and how calls compose: ``chain``, ``group`` and
``chord`` (``a | b`` is a chain).

Kept apart from jobs.py and workflows.py, which both build on it: jobs.py makes signatures
(``job.s(...)``), workflows.py turns a composition into steps and edges.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, NamedTuple

from .errors import WorkflowError

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


# -- builders ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Chain:
    """Steps run one after the other; each receives the previous step's result."""

    steps: tuple[Item, ...]

    def __or__(self, other: Item) -> Chain:
        if isinstance(other, Chain):
            return Chain((*self.steps, *other.steps))
        return Chain((*self.steps, check_item(other, "chain")))


@dataclass(frozen=True, slots=True)
class Group:
    """Members run in parallel; what follows a group receives their results as a list."""

    members: tuple[Item, ...]

    def __or__(self, other: Item) -> Chain:
        return chain(self, other)


@dataclass(frozen=True, slots=True)
class Chord:
    """A group, then a callback that receives the group's results as a list, in order."""

    header: Group
    body: Item

    def __or__(self, other: Item) -> Chain:
        return chain(self, other)


Item = Signature | Chain | Group | Chord
_ITEM_TYPES = (Signature, Chain, Group, Chord)


def chain(*steps: Item) -> Chain:
    """``chain(a, b, c)``: run ``a``, then ``b`` with ``a``'s result first, then ``c``."""
    if len(steps) == 1 and _is_iterable(steps[0]):
        steps = tuple(steps[0])  # type: ignore[arg-type]
    if not steps:
        raise WorkflowError(None, "chain() needs at least one step")
    return Chain(tuple(check_item(s, "chain") for s in steps))


def group(*members: Item | Iterable[Item]) -> Group:
    """``group(a, b, c)`` or ``group(job.s(x) for x in xs)``: run the members in parallel."""
    items: Sequence[Any] = members
    if len(members) == 1 and _is_iterable(members[0]):
        items = tuple(members[0])  # type: ignore[arg-type]
    if not items:
        raise WorkflowError(
            None, "group() is empty: a group needs at least one member (check the list it was "
            "built from)",
        )  # fmt: skip
    return Group(tuple(check_item(m, "group") for m in items))


def chord(header: Group | Iterable[Item], body: Item) -> Chord:
    """``chord(group, callback)``: run ``callback`` with the list of the group's results."""
    head = header if isinstance(header, Group) else group(header)
    return Chord(head, check_item(body, "chord callback"))


def _is_iterable(value: Any) -> bool:
    return not isinstance(value, _ITEM_TYPES) and isinstance(value, Iterable)


def check_item(value: Any, where: str) -> Item:
    """``value`` if it is a signature or a composition of them; else a WorkflowError."""
    if isinstance(value, _ITEM_TYPES):
        return value
    hint = ""
    if callable(getattr(value, "s", None)) and isinstance(getattr(value, "name", None), str):
        hint = f" (write {value.name}.s(...) to make a signature of it)"  # a JobDef
    raise WorkflowError(
        None,
        f"a {where} takes signatures (job.s(...)), chains, groups or chords, not "
        f"{type(value).__name__} {value!r}{hint}",
    )
