"""proj on asyncjobs: the Celery application of celery_app, ported with asyncjobs.celery_compat.

How to run it: see examples/celery_port/README.md.
Effects seen from other processes (beat ticks, attempt counters) are files in $PORT_STATE_DIR.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from asyncjobs.celery_compat import Celery, SoftTimeLimitExceeded, chain, chord, group

app = Celery("proj")  # jobs and results live in Postgres: ASYNCJOBS_DSN, ASYNCJOBS_SCHEMA
app.conf.update(result_expires=3600)


def state_file(name: str) -> Path:
    """A file in the state directory, where tasks leave what other processes check."""
    return Path(os.environ.get("PORT_STATE_DIR", "/tmp/celery_port_state")) / name


def record(name: str, line: str) -> int:
    """Append ``line`` to a state file; returns how many lines it now has."""
    path = state_file(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(line + "\n")
    return len(path.read_text().splitlines())


@app.task
def add(x, y):
    return x + y


@app.task
def mul(x, y):
    return x * y


@app.task
def xsum(numbers):
    return sum(numbers)


@app.task
def tick():
    """Run by beat every second: one line per run."""
    return record("ticks", f"{time.time():.3f}")


@app.task(bind=True, max_retries=3, default_retry_delay=10)
def flaky(self, key, failures):
    """Fails ``failures`` times with a transient error, retrying itself, then succeeds."""
    attempts = record(f"flaky-{key}", str(self.request.retries))
    if attempts <= failures:
        exc = ConnectionError(f"upstream is down (attempt {attempts})")
        raise self.retry(countdown=0.2, exc=exc)
    return {"attempts": attempts, "retries": self.request.retries}


@app.task(autoretry_for=(ConnectionError,), retry_backoff=True, retry_backoff_max=1, max_retries=3)
def fetch(key, failures):
    """Fails ``failures`` times with a ConnectionError, which autoretry_for retries."""
    attempts = record(f"fetch-{key}", "attempt")
    if attempts <= failures:
        raise ConnectionError(f"connection reset (attempt {attempts})")
    return attempts


@app.task(queue="slow", soft_time_limit=1, time_limit=5)
def crunch(seconds):
    """Works ``seconds`` s, or stops at the soft time limit (1 s) and says so."""
    try:
        time.sleep(seconds)
    except SoftTimeLimitExceeded:
        return "cut short"
    return "done"


def add_then_mul(x, y, z):
    """(x + y) * z: a chain of two tasks."""
    return chain(add.s(x, y), mul.s(z)).delay()


def doubles(n):
    """[0, 2, 4, ...]: a group of n adds."""
    return group(add.s(i, i) for i in range(n)).delay()


def sum_of_doubles(n):
    """0 + 2 + 4 + ...: a chord of n adds, whose results xsum adds up."""
    return chord(add.s(i, i) for i in range(n))(xsum.s())


app.conf.beat_schedule = {
    "tick-every-second": {"task": tick.name, "schedule": 1.0},
}
