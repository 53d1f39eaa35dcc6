"""Celery's canvas (``.s()``, ``.si()``, ``|``, ``group``, ``chain``, ``chord``) over asyncjobs'
workflows: each builds the same chain, group or chord of ``asyncjobs.workflows``, and
``.delay()`` / ``.apply_async()`` (or ``await .adelay()``) submits it as one workflow, in one
transaction. The handle it returns is the result of what ends it: the last step of a chain,
the callback of a chord, or a ``GroupResult`` of a group's members.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..signatures import Chain, Chord, Group, Item, Signature, chain, chord, group
from ..workflows import Workflow, build, prepare_workflow
from .options import CALL_OPTIONS, refuse
from .results import AsyncResult, GroupResult
from .tasks import CALL_KNOWN, call_times

if TYPE_CHECKING:
    from .app import Celery
    from .tasks import Task

SET_KNOWN = ("countdown", "eta", "queue", "priority")


class Canvas:
    """What every canvas item can do: compose with ``|``, and be submitted."""

    celery: Celery

    def item(self) -> Item:
        raise NotImplementedError  # pragma: no cover

    def __or__(self, other: Canvas) -> CChain:
        return CChain([self, other])

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult | GroupResult:
        """Submit it (a signature given more arguments takes them first, as in Celery)."""
        return self.apply_async(args, kwargs)

    __call__ = delay

    def apply_async(
        self, args: Any = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult | GroupResult:
        wf, ends = self._workflow(args, kwargs, options)
        celery, bridge = self.celery, self.celery.bridge
        if bridge.in_home_loop():  # nothing may block here: check now, submit in the background
            prepare_workflow(
                wf, celery._definition, celery.clock.time(), celery.settings.max_payload_bytes
            )  # raises for a bad step before anything is written
            write = bridge.write_soon(f"apply_async() of workflow {wf.id}", celery.submit(wf))
            return _handle(self, ends, write)
        bridge.call("apply_async()", lambda twin: twin.submit(wf))
        return _handle(self, ends)

    async def adelay(self, *args: Any, **kwargs: Any) -> AsyncResult | GroupResult:
        return await self.aapply_async(args, kwargs)

    async def aapply_async(
        self, args: Any = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> AsyncResult | GroupResult:
        wf, ends = self._workflow(args, kwargs, options)
        await self.celery.submit(wf)
        return _handle(self, ends)

    def _workflow(
        self, args: Any, kwargs: Mapping[str, Any] | None, options: Mapping[str, Any]
    ) -> tuple[Workflow, list[Any]]:
        refuse("apply_async()", options, CALL_OPTIONS, CALL_KNOWN)
        target = self.with_args(tuple(args or ()), dict(kwargs or {})) if args or kwargs else self
        if options:
            target = target.set(**options)
        wf = build(target.item())
        ends = [s for s in wf.steps if not any(s in other.after for other in wf.steps)]
        return wf, ends

    def with_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Canvas:
        raise _no_partial(self)

    def set(self, **options: Any) -> Canvas:
        raise _no_partial(self)


class Sig(Canvas):
    """A task with its arguments (``task.s(...)``); ``.set(queue=, countdown=, eta=,
    priority=)`` changes its options."""

    def __init__(
        self,
        task: Task,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        *,
        immutable: bool = False,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        self.task = task
        self.celery = task.celery
        self.args = args
        self.kwargs = dict(kwargs)
        self.immutable = immutable
        self.options = dict(options or {})

    def __repr__(self) -> str:
        call = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task.name}({call})"

    def item(self) -> Signature:
        delay, run_at = call_times(self.options)
        sig = Signature(self.task.name, self.args, self.kwargs, immutable=self.immutable)
        return sig.set(
            queue=self.options.get("queue"), priority=self.options.get("priority"),
            delay=delay, run_at=run_at,
        )  # fmt: skip

    def with_args(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Sig:
        return Sig(self.task, (*args, *self.args), {**self.kwargs, **kwargs},
                   immutable=self.immutable, options=self.options)  # fmt: skip

    def set(self, **options: Any) -> Sig:
        refuse(f"{self.task.name}.set()", options, CALL_OPTIONS, SET_KNOWN)
        return Sig(self.task, self.args, self.kwargs, immutable=self.immutable,
                   options={**self.options, **options})  # fmt: skip

    def clone(self, args: Any = None, kwargs: Any = None, **options: Any) -> Sig:
        return self.with_args(tuple(args or ()), dict(kwargs or {})).set(**options)


class CChain(Canvas):
    def __init__(self, steps: Iterable[Canvas]) -> None:
        self.steps: list[Canvas] = []
        for step in steps:
            self.steps.extend(step.steps if isinstance(step, CChain) else [step])
        self.celery = self.steps[0].celery

    def item(self) -> Chain:
        return chain(*(s.item() for s in self.steps))


class CGroup(Canvas):
    def __init__(self, members: Iterable[Canvas], celery: Celery | None = None) -> None:
        self.members = list(members)
        if not self.members and celery is None:
            raise ValueError("group() is empty: a group needs at least one task signature")
        self.celery = celery or self.members[0].celery

    def item(self) -> Group:
        return group(*(m.item() for m in self.members))


class CChord(Canvas):
    def __init__(self, header: CGroup, body: Canvas) -> None:
        self.header = header
        self.body = body
        self.celery = header.celery

    def item(self) -> Chord:
        return chord(self.header.item(), self.body.item())


class _ChordHeader:
    """``chord(header)``, waiting for its callback: ``chord(header)(callback)`` submits."""

    def __init__(self, header: CGroup) -> None:
        self.header = header

    def __call__(self, body: Canvas, **options: Any) -> AsyncResult | GroupResult:
        return CChord(self.header, body).apply_async(**options)


def celery_group(*tasks: Canvas | Iterable[Canvas]) -> CGroup:
    """``group(a.s(1), a.s(2))`` or ``group(a.s(i) for i in items)``."""
    if len(tasks) == 1 and not isinstance(tasks[0], Canvas):
        return CGroup(tasks[0])
    return CGroup(tasks)  # type: ignore[arg-type]


def celery_chain(*tasks: Canvas | Iterable[Canvas]) -> CChain:
    """``chain(a.s(1), b.s(), c.s())``: the same as ``a.s(1) | b.s() | c.s()``."""
    if len(tasks) == 1 and not isinstance(tasks[0], Canvas):
        return CChain(tasks[0])
    return CChain(tasks)  # type: ignore[arg-type]


def celery_chord(header: CGroup | Iterable[Canvas], body: Canvas | None = None) -> Any:
    """``chord(header)(callback)`` submits at once, ``chord(header, callback)`` builds one to
    submit with ``.delay()``; the callback receives the list of the header's results."""
    head = header if isinstance(header, CGroup) else celery_group(header)
    return _ChordHeader(head) if body is None else CChord(head, body)


def _handle(item: Canvas, ends: list[Any], write: Any = None) -> AsyncResult | GroupResult:
    """A group's members' results as a GroupResult; anything else's end as its result."""
    results = [AsyncResult(step.id, item.celery, write) for step in ends]
    if len(results) == 1 and not isinstance(item, CGroup):
        return results[0]
    return GroupResult(results, item.celery)


def _no_partial(item: Canvas) -> ValueError:
    return ValueError(
        f"{type(item).__name__}: only a task signature (task.s(...)) takes more arguments or "
        "options; give them to its signatures"
    )


def signature(
    task: Task | Sig,
    args: Iterable[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    immutable: bool = False,
    **options: Any,
) -> Sig:
    """``signature(add, args=(2, 2), countdown=10)``: the same as ``add.s(2, 2).set(...)``.
    Takes the task itself (by name, use ``app.signature(name, ...)``)."""
    from .tasks import Task

    if isinstance(task, Sig):
        return task.clone(args, kwargs, **options)
    if not isinstance(task, Task):
        raise TypeError(
            f"signature() takes a task (an @app.task function), not {task!r}; for a task "
            "named by a string, use app.signature(name, ...)"
        )
    sig = Sig(task, tuple(args), dict(kwargs or {}), immutable=immutable)
    return sig.set(**options) if options else sig
