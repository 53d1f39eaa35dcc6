"""Stopping a running job: its time limits, a cancel request, a shutdown, and giving up on
a job that does not stop.

Why a job stops is recorded on it (``RunningJob.stop_reason``) before its task is cancelled or
its worker signalled, so that the outcome follows DESIGN §10 (see execution.py). A deadline is
one timer handle on the loop's own heap, never a cancel scope per job (ADR 0003).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from ..pool.worker import CANCEL_SIGNAL, SOFT_SIGNAL
from .execution import abandoned_outcome
from .running import STOP_CANCEL, STOP_SOFT_TIMEOUT, STOP_TIMEOUT, JobRunner, RunningJob

log = logging.getLogger("asyncjobs.node")


class StoppingNode(JobRunner, Protocol):
    """What stopping a job needs from the node (``Node`` is one)."""

    def let_go(self, task: asyncio.Task[None], msg: str | None = None) -> None:
        """Cancel a task the node no longer waits for, keeping a reference until it ends."""


def arm_deadlines(node: StoppingNode, job: RunningJob, loop: asyncio.AbstractEventLoop) -> None:
    """Arm a job's time limits on the loop's own timer heap: one handle per limit."""
    definition = job.definition
    assert definition is not None
    now = loop.time()
    soft, hard = definition.soft_timeout, definition.timeout
    handles = []
    if soft is not None:
        handles.append(loop.call_at(now + soft, stop_job, node, job, STOP_SOFT_TIMEOUT))
    elif hard is not None:
        handles.append(loop.call_at(now + hard, stop_job, node, job, STOP_TIMEOUT))
    if soft is not None and hard is not None:
        handles.append(loop.call_at(now + hard, abandon, node, job))
    job.handles = handles


def stop_job(node: StoppingNode, job: RunningJob, reason: str) -> None:
    """Cancel a job's task, remembering why; abandon it if it ignores that for too long.

    An isolated job that has a worker is told by a signal instead, which raises inside it;
    at its hard limit its worker is killed at once.
    """
    if job.finished or job.task is None:
        return
    if job.stop_reason is None or reason == STOP_CANCEL:
        job.stop_reason = reason
    if reason == STOP_CANCEL and job.ctx is not None:
        job.ctx._cancel_requested = True
    worker = job.worker
    if worker is None:
        job.task.cancel(reason)
    elif reason == STOP_TIMEOUT:
        abandon(node, job)
        return
    else:
        worker.signal(SOFT_SIGNAL if reason == STOP_SOFT_TIMEOUT else CANCEL_SIGNAL)
        if reason == STOP_SOFT_TIMEOUT and job.definition and job.definition.timeout:
            return  # the hard limit, already armed, kills the worker
    grace_handle = asyncio.get_running_loop().call_later(
        node.settings.cancel_grace_s, abandon, node, job
    )
    job.handles = [*(job.handles or []), grace_handle]


def abandon(node: StoppingNode, job: RunningJob) -> None:
    """Give up on a job that did not stop when asked: kill its worker, or leave its task to
    end alone; its slot is freed and its outcome recorded now."""
    if job.finished:
        return
    if job.worker is not None:
        log.error(
            "isolated job %s (%s) did not stop (%s); killing its worker process %d",
            job.name, job.id, job.stop_reason or "time limit", job.worker.pid,
        )  # fmt: skip
        job.worker.kill()  # its task sees the worker die, and the pool replaces it
    elif job.task is not None and not job.task.done():
        log.error(
            "job %s (%s) did not stop within %g s of being asked (%s); abandoning it: its "
            "slot is freed and its outcome recorded, whatever it does later is ignored",
            job.name,
            job.id,
            node.settings.cancel_grace_s,
            job.stop_reason or "time limit",
        )
        node.let_go(job.task)
    node.finish(job, abandoned_outcome(node, job))
