"""The loop a pool worker runs: receive a job, run it, send back a result or an error.

A worker runs one job at a time, in its main thread. The node stops a job with a signal:
SIGUSR1 raises ``SoftTimeLimitExceeded`` and SIGUSR2 raises ``CancelRequested`` inside the
job, at its next Python instruction. Only while a job runs: a signal that arrives between jobs
is ignored. A job that ignores them is killed (SIGKILL) by the node.

After each job, whatever its outcome and before its reply, the worker runs the app's
``after_isolated_job`` hooks (``asyncjobs.django`` closes Django's connections this way).

The worker never touches asyncjobs' database; its only channel is its socket. It exits with
``os._exit`` so that nothing inherited from the zygote (atexit hooks, buffered files of the
plug-ins) runs twice.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

from ..errors import (
    CancelRequested,
    RetryRequested,
    SoftTimeLimitExceeded,
    describe_error,
    qualified_name,
)
from ..jobs import JobContext, coerce_job_id
from ..serialization import decode_args, encode_result
from .frames import FrameError, encode_frame, recv_frame
from .sandbox import has_children

IN_WORKER = False  # True in a pool worker process: code that needs the database checks it
SOFT_SIGNAL = signal.SIGUSR1
CANCEL_SIGNAL = signal.SIGUSR2


class _Job:
    armed = False  # a job is running: a stop signal may raise inside it


def _on_stop_signal(signum: int, frame: FrameType | None) -> None:
    if not _Job.armed:
        return
    if signum == CANCEL_SIGNAL:
        raise CancelRequested("the job's cancel was requested")
    raise SoftTimeLimitExceeded("the job reached its soft time limit")


class Worker:
    """State of one worker process (only ever built inside the forked child)."""

    def __init__(
        self,
        sock: socket.socket,
        jobs: dict[str, tuple[Callable[..., Any], bool]],
        max_payload: int,
        cpu_seconds: int | None,
        teardowns: Sequence[Callable[[], Any]] = (),
    ) -> None:
        self.sock = sock
        self.jobs = jobs
        self.max_payload = max_payload
        self.cpu_seconds = cpu_seconds
        self.teardowns = teardowns
        self.pid = os.getpid()
        self.loop: asyncio.AbstractEventLoop | None = None

    def serve(self) -> None:
        signal.signal(SOFT_SIGNAL, _on_stop_signal)
        signal.signal(CANCEL_SIGNAL, _on_stop_signal)
        self.sock.sendall(encode_frame({"op": "ready", "pid": self.pid}))
        while True:
            try:
                frame = recv_frame(self.sock, self.max_payload + 1024)
            except (FrameError, OSError):
                os._exit(71)
            if frame is None:
                os._exit(0)  # the node closed our socket: retire
            header, body = frame
            if header["op"] != "run":
                os._exit(0)
            reply = self.run(header, body)
            if os.getpid() != self.pid:
                os._exit(0)  # a process the job forked got here: it must not speak for us
            self.sock.sendall(reply)

    def run(self, header: dict[str, Any], body: bytes) -> bytes:
        name = header.get("name", "?")
        cpu_start = time.process_time()
        reply: dict[str, Any]
        try:
            fn, wants_context = self.jobs[name]
            args, kwargs = decode_args(body)
            if wants_context:
                args.insert(0, _context(header))
            try:
                _Job.armed = True
                value = fn(*args, **kwargs)
                if inspect.iscoroutine(value):
                    value = self._run_coroutine(value)
            finally:
                _Job.armed = False
            data = encode_result(name, value, self.max_payload)
        except BaseException as exc:
            if os.getpid() != self.pid:
                os._exit(0)
            reply = {**self._error(exc), "cpu": time.process_time() - cpu_start}
            data = b""
        else:
            reply = {"op": "ok", "cpu": time.process_time() - cpu_start}
        clean = self._tear_down()
        reply["retire"] = reply.get("retire") or self._should_retire() or not clean
        return encode_frame(reply, data)

    def _tear_down(self) -> bool:
        """Run the after_isolated_job hooks; False if one raised (the worker's state is then
        unknown, so it retires after this job)."""
        if os.getpid() != self.pid:
            os._exit(0)  # a process the job forked: the hooks would act on our resources
        clean = True
        for hook in self.teardowns:
            try:
                hook()
            except Exception:
                traceback.print_exc(file=sys.stderr)
                clean = False
        return clean

    def _run_coroutine(self, coro: Any) -> Any:
        # One loop per worker, reused: an isolated async job gets its own loop, not the node's.
        if self.loop is None:
            self.loop = asyncio.new_event_loop()
        return self.loop.run_until_complete(coro)

    def _error(self, exc: BaseException) -> dict[str, Any]:
        return {
            "op": "error",
            **describe_error(exc),
            "mro": [qualified_name(k) for k in type(exc).__mro__],
            "retire": self._should_retire() or not isinstance(exc, Exception),
            "retry_delay": exc.delay if isinstance(exc, RetryRequested) else None,
        }

    def _should_retire(self) -> bool:
        """Leave after this job if it left processes behind, or used half the CPU budget
        (RLIMIT_CPU counts a process's whole life, so the next job must have room)."""
        if has_children():
            return True
        # process_time() is one clock_gettime(CPUTIME): cheap enough for every job.
        return self.cpu_seconds is not None and time.process_time() > self.cpu_seconds / 2


def _context(header: dict[str, Any]) -> JobContext:
    return JobContext(
        None,
        coerce_job_id(header["id"]),
        header["name"],
        header.get("queue", "default"),
        int(header.get("attempt", 1)),
        int(header.get("max_attempts", 1)),
        coerce_job_id(header["workflow_id"]) if header.get("workflow_id") else None,
    )


def run_worker(
    sock: socket.socket,
    jobs: dict[str, tuple[Callable[..., Any], bool]],
    max_payload: int,
    cpu_seconds: int | None,
    teardowns: Sequence[Callable[[], Any]] = (),
) -> None:
    """Serve jobs until told to stop; never returns."""
    global IN_WORKER  # noqa: PLW0603 - set once, in the forked child, before any job runs
    IN_WORKER = True
    try:
        Worker(sock, jobs, max_payload, cpu_seconds, teardowns).serve()
    except BaseException:
        traceback.print_exc(file=sys.stderr)
    os._exit(70)
