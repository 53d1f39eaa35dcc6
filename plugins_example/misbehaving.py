"""Plug-ins that misbehave, to show that each one fails only its own job.

Every job here runs isolated, so the worst it can do is take its own worker down: the node
goes on, the job ends ``failed`` with a reason, and the pool replaces the worker.
"""

from __future__ import annotations

import os
import resource
import signal

from asyncjobs.errors import SoftTimeLimitExceeded

from . import app


@app.job(isolated=True, queue="cpu", soft_timeout=1.0, timeout=3.0)
def spin_forever() -> None:
    """An infinite loop that even swallows its soft time limit: killed at the hard limit."""
    while True:
        try:
            while True:
                pass
        except SoftTimeLimitExceeded:
            continue


@app.job(isolated=True, queue="cpu", timeout=60)
def memory_bomb(chunk_mb: int = 64) -> int:
    """Allocate until something gives: RLIMIT_AS turns it into a MemoryError in this job."""
    hoard = []
    while True:
        hoard.append(bytearray(chunk_mb * 1024 * 1024))


@app.job(isolated=True, queue="cpu")
def segfault() -> None:
    """Crash the worker the hard way."""
    os.kill(os.getpid(), signal.SIGSEGV)


@app.job(isolated=True, queue="cpu", timeout=10)
def fork_bomb() -> None:
    """Fork without end, until RLIMIT_NPROC stops it.

    Refuses to start unless that limit is in force (``worker_processes`` set, and workers not
    running as root, which the kernel exempts): an unbounded fork bomb would take down the
    whole machine, not just this job.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NPROC)
    if os.getuid() == 0 or soft == resource.RLIM_INFINITY:
        raise RuntimeError(
            "refusing to fork-bomb without RLIMIT_NPROC in force: set worker_processes, and "
            "worker_user when the node runs as root"
        )
    while True:
        os.fork()


@app.job(isolated=True, queue="cpu")
def steal_secrets() -> dict[str, object]:
    """Look for the database DSN where a plug-in might: its environment and its parent's."""
    found = {
        key: "<hidden>"
        for key, value in os.environ.items()
        if key.startswith("ASYNCJOBS_") or "postgres" in value.lower() or "DSN" in key
    }
    try:
        with open(f"/proc/{os.getppid()}/environ", "rb") as f:
            parent = f.read().decode(errors="replace")
        parent_has_dsn = "ASYNCJOBS_DSN" in parent or "postgres" in parent.lower()
    except OSError as exc:
        parent_has_dsn = False
        found["parent_environ"] = f"unreadable: {type(exc).__name__}"
    return {"env_keys": sorted(os.environ), "found": found, "parent_has_dsn": parent_has_dsn}
