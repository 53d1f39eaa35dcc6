"""Celery-style tasks for the compatibility tests, on one module-level app: the pool's zygote
imports the plain ``def`` ones by name (``tests.celery_tasks:mul.job``), so they and their
app must live at module level. Each test points the app at its store with ``configure``."""

from __future__ import annotations

from typing import Any

from asyncjobs.celery_compat import Celery, Task

app = Celery("tests")
ATTEMPTS: dict[str, int] = {}  # flaky's attempts, per key (the coroutine tasks run here)


class Transient(Exception):
    pass


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task(name="tests.xsum")
async def xsum(numbers: list[int]) -> int:
    return sum(numbers)


@app.task
def mul(x: int, y: int) -> int:
    """Plain def: runs in a pool worker."""
    return x * y


@app.task(bind=True, max_retries=3, default_retry_delay=0.05)
async def flaky(self: Task, key: str, fails: int) -> dict[str, Any]:
    ATTEMPTS[key] = ATTEMPTS.get(key, 0) + 1
    if self.request.retries < fails:
        raise self.retry(exc=Transient(f"attempt {self.request.retries + 1}"))
    return {"retries": self.request.retries, "id": str(self.request.id)}


@app.task(bind=True, max_retries=2)
def flaky_in_pool(self: Task, fails: int) -> int:
    """Plain def and bound: self.retry() works in a pool worker too."""
    if self.request.retries < fails:
        raise self.retry(countdown=0.05, exc=Transient("busy"))
    return self.request.retries


@app.task(autoretry_for=(Transient,), max_retries=2, default_retry_delay=0.05)
async def always_transient() -> None:
    raise Transient("still down")


@app.task(autoretry_for=(Transient,), max_retries=2, default_retry_delay=0.05)
async def fails_otherwise() -> None:
    raise KeyError("not retried: not in autoretry_for")


@app.task
def enqueues_from_the_pool() -> None:
    add.delay(1, 1)  # a pool worker has no database: IsolationError


@app.task(queue="slow", priority=5, time_limit=30, soft_time_limit=20, rate_limit="100/m")
async def configured() -> str:
    return "ok"
