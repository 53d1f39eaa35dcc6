"""The load-test jobs, on their own App: ``asyncjobs node --app asyncjobs.loadtest.jobs:app``.

- ``lt_io(sleep_s, fail)``: a coroutine that sleeps, as a job awaiting an API would;
- ``lt_cpu(n, fail)``: an isolated job that burns CPU in the process pool (a Python loop);
- workflows of IO jobs in a given shape (``build_workflow``).

With ``fail`` they raise ``InjectedFailure``, which the report counts apart from real errors.
IO jobs and workflows go to the ``loadtest`` queue, CPU jobs to ``loadtest_cpu``, limited to
the pool's size, so a node never claims more of them than it has workers for. The module's
``app`` serves both queues unless ``ASYNCJOBS_QUEUES`` or ``--queues`` says otherwise.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from ..app import App
from ..jobs import JobDef
from ..settings import Settings
from ..workflows import Step, Workflow
from .mix import Shape

IO_QUEUE = "loadtest"
CPU_QUEUE = "loadtest_cpu"


class InjectedFailure(Exception):
    """The failure a load test asked for (its fail rate): expected, and counted as such."""


async def lt_io(sleep_s: float, fail: bool = False) -> None:
    """Sleep ``sleep_s`` seconds on the node's loop; raise ``InjectedFailure`` if ``fail``."""
    await asyncio.sleep(sleep_s)
    if fail:
        raise InjectedFailure(f"injected failure after {sleep_s:.4f} s")


def lt_cpu(n: int, fail: bool = False) -> int:
    """Run a Python loop of ``n`` iterations in a pool worker; raise if ``fail``."""
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    if fail:
        raise InjectedFailure(f"injected failure after {n} iterations")
    return acc


def build_app(settings: Settings | None = None) -> App:
    """An App with the load-test jobs registered. Without ``settings``: from the environment,
    serving both load-test queues unless ``ASYNCJOBS_QUEUES`` names others."""
    if settings is None:
        settings = Settings.from_env()
        if "ASYNCJOBS_QUEUES" not in os.environ:
            settings = settings.replace(queues=node_queues(settings.workers_max))
    app = App(settings=settings)
    app.job(name="lt_io", queue=IO_QUEUE)(lt_io)
    app.job(name="lt_cpu", queue=CPU_QUEUE, isolated=True)(lt_cpu)
    return app


def node_queues(workers: int) -> str:
    """The queues a load-test node serves: IO without a limit of its own, CPU at most
    ``workers`` at once (the pool's size)."""
    return f"{IO_QUEUE},{CPU_QUEUE}={workers}"


def io_job(app: App) -> JobDef[Any, Any]:
    return app.registry["lt_io"]


def cpu_job(app: App) -> JobDef[Any, Any]:
    return app.registry["lt_cpu"]


def build_workflow(
    app: App, shape: Shape, steps: list[tuple[float, bool]], name: str | None = None
) -> Workflow:
    """A workflow of IO jobs in ``shape``; ``steps`` gives each job's (sleep, fail), one per
    job of the shape (a chord's callback last). Every step's id is known before it is
    submitted (``wf.steps``)."""
    if len(steps) != shape.jobs:
        raise ValueError(f"shape {shape} has {shape.jobs} jobs, got {len(steps)} step arguments")
    job = io_job(app)
    wf = Workflow(name)
    if shape.kind == "chain":
        previous: Step | None = None
        for sleep_s, fail in steps:
            previous = wf.add(job.s(sleep_s, fail), after=[] if previous is None else [previous])
    elif shape.kind == "group":
        for sleep_s, fail in steps:
            wf.add(job.s(sleep_s, fail))
    else:  # chord
        members = [wf.add(job.s(sleep_s, fail)) for sleep_s, fail in steps[:-1]]
        sleep_s, fail = steps[-1]
        wf.add(job.s(sleep_s, fail), after=members)
    return wf


app = build_app()
