"""Isolated jobs for the pool tests. The zygote imports them by name (``tests.pool_jobs:...``).

``build_app`` registers them on a new App with the options a test needs, so each test gets a
fresh app (and a fresh pool) while the functions stay importable module-level ones.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from asyncjobs import App, JobContext, Retry, RetryRequested, Settings
from asyncjobs.errors import JobInterrupted, SoftTimeLimitExceeded
from asyncjobs.store.base import Store

PRELOAD_ENV = "POOL_TEST_PRELOAD_MB"
PRELOADED = b""  # set by preload_buffer, in the zygote only
HOARD: list[bytearray] = []  # grown by hold_memory, to push a worker over its USS limit


class Boom(Exception):
    pass


def echo(value: Any) -> Any:
    return value


def whoami(ctx: JobContext, tag: str) -> dict[str, Any]:
    return {
        "pid": os.getpid(), "ppid": os.getppid(), "pgid": os.getpgid(0), "sid": os.getsid(0),
        "id": str(ctx.job_id), "attempt": ctx.attempt, "tag": tag, "env": sorted(os.environ),
    }  # fmt: skip


def fail(message: str) -> None:
    raise Boom(message)


async def async_double(x: int) -> int:
    return 2 * x


def nap(seconds: float) -> float:
    """Sleep in C (time.sleep): a stop signal interrupts it at once."""
    time.sleep(seconds)
    return seconds


def clean_up_at_soft_limit(marker: str) -> str:
    """Work until the soft limit, then clean up and end with the error."""
    try:
        time.sleep(60)
    except SoftTimeLimitExceeded:
        Path(marker).write_text("cleaned up")
        raise
    return "not reached"


def ignore_soft_limit(marker: str) -> None:
    """Swallow the soft limit (and a cancel) and go on: only SIGKILL ends it."""
    while True:
        try:
            time.sleep(60)
        except JobInterrupted as exc:
            Path(marker).write_text(f"ignored {type(exc).__name__}")


def crash_on_first_attempt(ctx: JobContext) -> int:
    if ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    return ctx.attempt


def hold_memory(mb: int) -> int:
    """Keep ``mb`` MiB of private, touched memory alive after the job returns."""
    HOARD.append(bytearray(b"\x01" * (mb * 1024 * 1024)))
    return os.getpid()


def spawn_child() -> int:
    """Leave a child process running after the job returns."""
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    return pid


def spin(seconds: float) -> float:
    """Burn CPU for ``seconds`` (a CPU-bound job)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    return seconds


def preload_buffer() -> None:
    global PRELOADED  # noqa: PLW0603 - filled once, in the zygote
    mb = int(os.environ.get(PRELOAD_ENV, "0"))
    PRELOADED = b"\x07" * (mb * 1024 * 1024)


TEARDOWN_ENV = "POOL_TEST_TEARDOWN_LOG"


def log_teardown() -> None:
    """after_isolated_job hook: one line per call, with the pid of the process it ran in."""
    with open(os.environ[TEARDOWN_ENV], "a") as f:
        f.write(f"{os.getpid()}\n")


def failing_teardown() -> None:
    """after_isolated_job hook that raises in a worker (not in the zygote, which would fail
    to start)."""
    from asyncjobs.pool import worker

    if worker.IN_WORKER:
        raise RuntimeError("the teardown broke")


def broken_preload() -> None:
    raise RuntimeError("the model file is missing")


def read_preloaded() -> dict[str, int]:
    """Read every page of the preload (and stay alive a moment for the memory check)."""
    return {"bytes": len(PRELOADED), "sevens": PRELOADED.count(b"\x07"), "pid": os.getpid()}


def build_app(settings: Settings, store: Store | None = None, **options: Any) -> App:
    """A new app with every job above; ``options`` are per-job ``app.job`` options by name."""
    app = App(settings=settings, store=store)
    plain = (echo, whoami, fail, async_double, nap, clean_up_at_soft_limit, ignore_soft_limit,
             hold_memory, spawn_child, read_preloaded, spin)  # fmt: skip
    for fn in plain:
        app.job(isolated=True, **options.get(fn.__name__, {}))(fn)
    app.job(isolated=True, retry=Retry(attempts=2, backoff=0.0, jitter=0.0, on=(Boom,)))(
        crash_on_first_attempt
    )
    app.job(isolated=True, retry=Retry(attempts=2, backoff=0.0, on=(Boom,)))(retry_later)
    if options.get("preload"):
        app.preload(options["preload"])
    if options.get("teardown"):
        app.after_isolated_job(options["teardown"])
    return app


def retry_later(ctx: JobContext, seconds: float) -> int:
    """Asks to be run again in ``seconds``, once; then returns its attempt."""
    if ctx.attempt == 1:
        raise RetryRequested(seconds, ConnectionError("busy"))
    return ctx.attempt
