"""The CPU time a coroutine job spends, step by step.

A coroutine runs in steps: from one ``await`` that suspends to the next. All jobs share one
thread, so the thread's CPU clock read around each step, and summed, is the job's own CPU
time; the time it spends suspended (waiting on IO) is not counted. ``metered`` drives the
job's coroutine the way ``await`` would, passing every value, exception and cancellation
through unchanged, and adds each step's CPU time to the job.

The cost is two reads of the thread's CPU clock per step (a system call each, well under a
microsecond here); ``Settings.measure_cpu = False`` turns it off.
"""

from __future__ import annotations

import time
from collections.abc import Coroutine, Generator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .execution import RunningJob

_clock = time.thread_time


class metered:  # lower case: it is used like a function, `await metered(coro, job)`
    __slots__ = ("_coro", "_job")

    def __init__(self, coro: Coroutine[Any, Any, Any], job: RunningJob) -> None:
        self._coro = coro
        self._job = job

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, job = self._coro, self._job
        job.cpu = 0.0
        value: Any = None
        error: BaseException | None = None
        while True:
            start = _clock()
            try:
                signal = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                job.cpu += _clock() - start
                return stop.value
            except BaseException:
                job.cpu += _clock() - start
                raise
            job.cpu += _clock() - start
            try:
                value = yield signal
                error = None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation included: the job sees it
                value, error = None, exc
