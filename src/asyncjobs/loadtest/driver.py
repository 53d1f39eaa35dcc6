"""The load: submissions at a fixed rate (open loop) or a fixed number in flight (closed loop).

A *submission* is one ``enqueue`` of an io or cpu job, or one ``submit`` of a workflow; rates
and counts are in submissions. The kind, sleep and failure of each are drawn from the mix with
one seeded random generator, before the call, so a seed gives the same sequence of jobs.

- Open loop: submission i starts at t0 + i / rate, whether or not earlier ones have returned,
  as independent clients would send them. If the enqueues themselves fall behind (more than
  ``MAX_PENDING_CALLS`` unanswered), the loop waits, and the lag is reported.
- Closed loop: a new submission starts as soon as one in flight has finished (all its jobs),
  which the tracker notices at its next poll.

The load stops at ``duration``, after ``jobs`` submissions, or when ``stop`` is set. Enqueue
calls already sent are awaited, so every job written is tracked.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import anyio
import anyio.abc
import anyio.lowlevel

from ..app import App
from .jobs import build_workflow, cpu_job, io_job
from .mix import Mix
from .tracker import Submission, Tracker

MAX_PENDING_CALLS = 10_000  # open loop: unanswered enqueue calls before the loop waits


@dataclass
class LoadResult:
    """How the load phase went."""

    started: float  # epoch seconds
    ended: float
    sent: int  # submissions started
    stopped_by: str  # duration, jobs, stop (a signal or the timeout)
    max_lag_s: float = 0.0  # open loop: the latest a submission started after its time


class Driver:
    """Sends the mix to ``app`` and hands every stored submission to ``tracker``."""

    def __init__(
        self,
        app: App,
        mix: Mix,
        tracker: Tracker,
        rng: random.Random,
        *,
        rate: float | None = None,
        in_flight: int | None = None,
    ) -> None:
        if (rate is None) == (in_flight is None):
            raise ValueError("give exactly one of rate (open loop) and in_flight (closed loop)")
        self.app = app
        self.mix = mix
        self.tracker = tracker
        self.rng = rng
        self.rate = rate
        self.in_flight = in_flight
        self._pending = 0  # calls sent, not answered
        self._call_returned = anyio.Event()
        self.result = LoadResult(0.0, 0.0, 0, "stop")  # updated as the load runs (0: not yet)
        self._slots: anyio.Semaphore | None = None
        if in_flight is not None:
            self._slots = anyio.Semaphore(in_flight)
            tracker.on_done = self._release

    async def run(
        self, *, duration: float | None, jobs: int | None, stop: anyio.Event
    ) -> LoadResult:
        """Run the load phase; returns once it is over and every call sent has returned.

        ``self.result`` is kept up to date, so a run cancelled from outside (its timeout)
        still knows what was sent."""
        result = self.result = LoadResult(time.time(), 0.0, 0, "stop")
        try:
            async with anyio.create_task_group() as calls:
                with anyio.move_on_after(duration) as window:
                    async with anyio.create_task_group() as control:
                        control.start_soon(_cancel_when, stop, window)
                        if self.rate is not None:
                            await self._open_loop(calls, jobs, result)
                        else:
                            await self._closed_loop(calls, jobs, result)
                        result.stopped_by = "jobs"
                        control.cancel_scope.cancel()
                if window.cancelled_caught and not stop.is_set():
                    result.stopped_by = "duration"
                result.ended = time.time()  # the calls still running are part of the drain
        finally:
            result.ended = result.ended or time.time()
        return result

    async def _open_loop(
        self, calls: anyio.abc.TaskGroup, jobs: int | None, result: LoadResult
    ) -> None:
        assert self.rate is not None
        t0 = time.perf_counter()
        while jobs is None or result.sent < jobs:
            due_at = t0 + result.sent / self.rate
            wait = due_at - time.perf_counter()
            if wait > 0:
                await anyio.sleep(wait)
            while self._pending >= MAX_PENDING_CALLS:
                self._call_returned = anyio.Event()
                await self._call_returned.wait()
            result.max_lag_s = max(result.max_lag_s, time.perf_counter() - due_at)
            calls.start_soon(self._submit_one)
            result.sent += 1
            if wait <= 0 and result.sent % 100 == 0:
                await anyio.lowlevel.checkpoint()  # behind schedule: let the calls run

    async def _closed_loop(
        self, calls: anyio.abc.TaskGroup, jobs: int | None, result: LoadResult
    ) -> None:
        assert self._slots is not None
        while jobs is None or result.sent < jobs:
            await self._slots.acquire()
            calls.start_soon(self._submit_one)
            result.sent += 1

    def _release(self, _sub: Submission) -> None:
        assert self._slots is not None
        self._slots.release()

    async def _submit_one(self) -> None:
        """Draw one submission from the mix, send it, and hand it to the tracker."""
        mix, rng = self.mix, self.rng
        kind = mix.choose(rng)
        self._pending += 1
        started = time.perf_counter()
        try:
            if kind == "io":
                args = (mix.io_sleep.sample(rng), rng.random() < mix.fail_rate)
                ids = [await self.app.enqueue(io_job(self.app), *args)]
            elif kind == "cpu":
                args_cpu = (mix.cpu_work, rng.random() < mix.fail_rate)
                ids = [await self.app.enqueue(cpu_job(self.app), *args_cpu)]
            else:
                steps = [
                    (mix.io_sleep.sample(rng), rng.random() < mix.fail_rate)
                    for _ in range(mix.workflow.jobs)
                ]
                wf = build_workflow(self.app, mix.workflow, steps)
                ids = [step.id for step in wf.steps]
                await self.app.submit(wf)
        except Exception as exc:
            self.tracker.enqueue_failed(kind, exc)
            if self._slots is not None:
                self._slots.release()
        else:
            self.tracker.add(kind, ids, time.perf_counter() - started)
        finally:
            self._pending -= 1
            self._call_returned.set()


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
