"""Workflows: chain, group, chord and general DAGs (DESIGN §6).

A workflow is built in memory from signatures, validated as a whole (cycles, unknown jobs,
arguments that do not encode), and written as rows in one transaction: one job per step and
one edge per dependency, never a nested message. From then on the database runs it: the
statement that records a success queues the steps it was the last dependency of, and the one
that records a failure cancels everything downstream.

- ``chain(a, b, c)`` or ``a | b | c``: each step runs after the previous one and receives its
  result as its first argument (a group's results as a list).
- ``group(a, b, c)``: the members run in parallel.
- ``chord(group, callback)``: the callback runs after every member of the group, with their
  results as a list, in group order.
- ``Workflow().add(sig, after=[...])``: any DAG; a step reads its parents' results with
  ``await ctx.parent_results()``.

They nest freely: ``chain(a, group(b, chain(c, d)), e)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import (
    InvalidJobOptionError,
    PayloadError,
    UnknownJobError,
    WorkflowError,
)
from .ids import new_id
from .jobs import JobDef, JobId, Signature
from .prepare import prepare
from .serialization import compact
from .signatures import Chain, Chord, Group, Item, chain, check_item, chord, group
from .storable import text_problem
from .store.base import Edge, NewWorkflow, StepFailure, WorkflowInfo, WorkflowJob

WorkflowId = uuid.UUID
MAX_KEY_CHARS = 200
MAX_FAILURES_SHOWN = 100  # a status lists at most this many failed steps

# A step receives: None (nothing), "one" (its parent's result) or "list" (its parents').
PASS_ONE = "one"
PASS_LIST = "list"


# -- the general DAG ----------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class Step:
    """One step of a ``Workflow``: ``id`` is the id its job will have once submitted."""

    workflow: Workflow = field(repr=False)
    id: JobId
    signature: Signature
    key: str | None
    after: list[Step | str]
    index: int
    pass_results: str | None = None

    @property
    def name(self) -> str:
        return self.signature.name


class Workflow:
    """A DAG of jobs. ``add`` returns a ``Step``; later steps name it in ``after``::

        wf = Workflow("provision rack 12")
        inventory = wf.add(fetch_inventory.s("rack-12"), key="inventory")
        plans = [wf.add(plan_host.s(h), after=[inventory]) for h in hosts]
        wf.add(report.s(), after=plans)
        workflow_id = await app.submit(wf)

    ``after`` takes steps, or keys of steps (which may be added later). Each step's job id is
    known at once (``step.id``), so a caller can ``await app.result(step.id)``.
    """

    def __init__(self, name: str | None = None) -> None:
        if name is not None and (not isinstance(name, str) or len(name) > MAX_KEY_CHARS):
            raise WorkflowError(None, f"name={name!r} is not a string of at most 200 characters")
        if name is not None and (why := text_problem(name)):
            raise WorkflowError(None, f"name={name!r} cannot be stored: {why}")
        self.id: WorkflowId = new_id()
        self.name = name
        self.steps: list[Step] = []
        self._keys: dict[str, Step] = {}
        self.submitted = False  # set by App.submit: a workflow is written once

    def add(
        self,
        signature: Signature,
        *,
        after: Iterable[Step | str] | Step | str = (),
        key: str | None = None,
    ) -> Step:
        """Add a step that runs once every step in ``after`` has succeeded."""
        if self.submitted:
            raise WorkflowError(
                key, f"workflow {self.id} is already submitted; build a new Workflow for more steps"
            )
        parents = [after] if isinstance(after, Step | str) else list(after)
        return self._add(signature, parents, key, None)

    def _add(
        self, signature: Any, after: list[Step | str], key: str | None, pass_results: str | None
    ) -> Step:
        where = key if key is not None else f"#{len(self.steps) + 1}"
        if not isinstance(signature, Signature):
            raise WorkflowError(
                where, f"add() takes a signature (job.s(...)), not {type(signature).__name__}"
            )
        if key is not None:
            if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_CHARS:
                raise WorkflowError(
                    str(key), f"a key is a string of 1 to {MAX_KEY_CHARS} characters"
                )
            if why := text_problem(key):
                raise WorkflowError(key, f"the key cannot be stored: {why}")
            if key in self._keys:
                raise WorkflowError(key, "another step already has this key")
        for parent in after:
            if isinstance(parent, Step) and parent.workflow is not self:
                raise WorkflowError(
                    where, f"it depends on step {parent.key or parent.name!r} of another workflow"
                )
            if not isinstance(parent, Step | str):
                raise WorkflowError(
                    where, f"after= takes steps (what add() returned) or step keys, not "
                    f"{type(parent).__name__} {parent!r}",
                )  # fmt: skip
        step = Step(self, new_id(), signature, key, after, len(self.steps), pass_results)
        self.steps.append(step)
        if key is not None:
            self._keys[key] = step
        return step

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        return f"<Workflow {self.name or self.id} steps={len(self.steps)}>"


def build(item: Workflow | Item, name: str | None = None) -> Workflow:
    """A ``Workflow`` for any builder (a chain, group, chord or single signature)."""
    if isinstance(item, Workflow):
        if name is not None and item.name is None:
            item.name = name
        return item
    wf = Workflow(name)
    _place(wf, check_item(item, "workflow"), [], None)
    return wf


def _place(
    wf: Workflow, item: Item, parents: list[Step], mode: str | None
) -> tuple[list[Step], bool]:
    """Add ``item`` after ``parents``; ``mode`` is how it receives their results. Returns
    its exits (what comes next depends on) and whether they are a group's (results as a
    list)."""
    if isinstance(item, Signature):
        passed = None if (not parents or item.immutable) else mode
        return [wf._add(item, list(parents), None, passed)], False
    if isinstance(item, Group):
        exits: list[Step] = []
        for member in item.members:
            member_exits, _ = _place(wf, member, parents, mode)
            exits.extend(member_exits)
        return exits, True
    if isinstance(item, Chord):
        return _place(wf, Chain((item.header, item.body)), parents, mode)
    current, is_group = parents, False
    for i, step in enumerate(item.steps):
        step_mode = mode if i == 0 else (PASS_LIST if is_group else PASS_ONE)
        current, is_group = _place(wf, step, current, step_mode)
    return current, is_group


# -- validation and encoding -------------------------------------------------------------------


def prepare_workflow(
    wf: Workflow,
    lookup: Callable[[str], JobDef[Any, Any]],
    now: float,
    limit: int,
    trace: str | None = None,
) -> NewWorkflow:
    """Check the whole workflow and encode every step, before anything is written. Every
    step's row gets ``trace``: the submit span's context (asyncjobs.tracing), or None.

    Raises ``WorkflowError`` naming the step for an unknown job, a bad argument or option, a
    dependency on a key no step has, or a cycle.
    """
    steps = wf.steps
    if not steps:
        raise WorkflowError(None, "it has no steps; add at least one")
    keys = _step_keys(steps)
    parents = _resolve_parents(wf, steps, keys)
    _check_acyclic(steps, parents, keys)
    has_children = [False] * len(steps)
    for ps in parents:
        for p in ps:
            has_children[p] = True
    jobs: list[WorkflowJob] = []
    edges: list[Edge] = []
    definitions: dict[str, JobDef[Any, Any]] = {}
    for step, ps, key in zip(steps, parents, keys, strict=True):
        sig = step.signature
        try:
            definition = definitions.get(sig.name) or lookup(sig.name)
        except UnknownJobError as exc:
            raise WorkflowError(key, str(exc)) from None
        definitions[sig.name] = definition
        if sig.unique_key is not None:
            raise WorkflowError(
                key, "unique_key is not supported in a workflow step (the step's job id is "
                "fixed when it is added); drop it, or deduplicate before building",
            )  # fmt: skip
        try:
            new = prepare(sig, definition, step.id, now, limit)
        except (PayloadError, InvalidJobOptionError) as exc:
            raise WorkflowError(key, str(exc)) from None
        # Every step's payload is held until the insert: keep it at its size (compact).
        new = new._replace(
            args=compact(new.args), state="waiting" if ps else new.state, trace=trace
        )
        jobs.append(WorkflowJob(new, key, len(ps), has_children[step.index], step.pass_results))
        edges.extend(Edge(step.id, i, steps[p].id) for i, p in enumerate(ps))
    sinks = [s.id for s in steps if not has_children[s.index]]
    return NewWorkflow(wf.id, wf.name, jobs, edges, sinks)


def _step_keys(steps: Sequence[Step]) -> list[str]:
    """Each step's key: its own, else its job's name, numbered if the name repeats."""
    explicit = {s.key for s in steps if s.key is not None}
    counts: dict[str, int] = {}
    for s in steps:
        if s.key is None:
            counts[s.name] = counts.get(s.name, 0) + 1
    seen: dict[str, int] = {}
    keys: list[str] = []
    for s in steps:
        if s.key is not None:
            keys.append(s.key)
            continue
        seen[s.name] = seen.get(s.name, 0) + 1
        key = s.name
        if counts[s.name] > 1 or key in explicit:
            key = f"{s.name}#{seen[s.name]}"
        if key in explicit:
            raise WorkflowError(
                key, f"this key is also the automatic key of a {s.name!r} step; pick another"
            )
        keys.append(key)
    return keys


def _resolve_parents(wf: Workflow, steps: Sequence[Step], keys: Sequence[str]) -> list[list[int]]:
    parents: list[list[int]] = []
    for step, key in zip(steps, keys, strict=True):
        resolved: list[int] = []
        seen: set[int] = set()
        for ref in step.after:
            if isinstance(ref, Step):
                parent = ref
            else:
                found = wf._keys.get(ref)
                if found is None:
                    raise WorkflowError(
                        key, f"it runs after {ref!r}, but no step has that key; pass "
                        "key=... to add() for the step it means",
                    )  # fmt: skip
                parent = found
            if parent.index == step.index:
                raise WorkflowError(key, "it depends on itself (a cycle of one step)")
            if parent.index not in seen:
                seen.add(parent.index)
                resolved.append(parent.index)
        parents.append(resolved)
    return parents


def _check_acyclic(
    steps: Sequence[Step], parents: Sequence[Sequence[int]], keys: Sequence[str]
) -> None:
    """Kahn's algorithm; a leftover step lies on or after a cycle, which is then named."""
    indegree = [len(ps) for ps in parents]
    children: list[list[int]] = [[] for _ in steps]
    for child, ps in enumerate(parents):
        for p in ps:
            children[p].append(child)
    ready = [i for i, d in enumerate(indegree) if d == 0]
    done = 0
    while ready:
        node = ready.pop()
        done += 1
        for child in children[node]:
            indegree[child] -= 1
            if indegree[child] == 0:
                ready.append(child)
    if done == len(steps):
        return
    # Every leftover step has a leftover parent: walking up parents must repeat a step.
    left = {i for i, d in enumerate(indegree) if d > 0}
    node = min(left)
    path: list[int] = []
    seen: dict[int, int] = {}
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(p for p in parents[node] if p in left)
    cycle = [*path[seen[node] :], node]
    cycle.reverse()  # in run order: each step runs after the one before it
    shown = " -> ".join(repr(keys[i]) for i in cycle)
    raise WorkflowError(keys[cycle[0]], f"the dependencies form a cycle: {shown}")


# -- status --------------------------------------------------------------------------------------


ACTIVE = ("scheduled", "waiting", "queued", "running")


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """A workflow's progress: what ``app.workflow_status`` returns.

    ``state`` is ``running`` while any step may still run, then ``failed`` if a step failed
    or was lost, ``cancelled`` if one was cancelled, else ``succeeded``. ``failures`` lists
    the steps that failed, were lost or were cancelled (not counting those cancelled only
    because something upstream failed).
    """

    id: WorkflowId
    name: str | None
    state: str
    counts: dict[str, int]
    total: int
    failures: list[StepFailure]
    created_at: datetime
    sinks: list[JobId]

    @property
    def is_finished(self) -> bool:
        return self.state != "running"


def status_from(info: WorkflowInfo, failures: list[StepFailure]) -> WorkflowStatus:
    from .clock import to_datetime

    counts = {
        state: info.counts.get(state, 0)
        for state in (*ACTIVE, "succeeded", "failed", "cancelled", "lost")
    }
    if any(counts[s] for s in ACTIVE):
        state = "running"
    elif counts["failed"] or counts["lost"]:
        state = "failed"
    elif counts["cancelled"]:
        state = "cancelled"
    else:
        state = "succeeded"
    return WorkflowStatus(
        info.id, info.name, state, counts, sum(counts.values()), failures,
        to_datetime(info.created_at), info.sinks,
    )  # fmt: skip


__all__ = [  # the builders live in signatures.py, beside Signature, and are named here too
    "MAX_FAILURES_SHOWN",
    "MAX_KEY_CHARS",
    "PASS_LIST",
    "PASS_ONE",
    "Chain",
    "Chord",
    "Group",
    "Item",
    "Step",
    "Workflow",
    "WorkflowId",
    "WorkflowStatus",
    "build",
    "chain",
    "chord",
    "group",
    "prepare_workflow",
    "status_from",
]
