"""Jobs that fail, to show what failures, retries and timeouts look like."""

from __future__ import annotations

import asyncio

from asyncjobs import JobContext, Retry

from . import app


class ProvisioningError(Exception):
    """Raised by the example jobs."""


@app.job()
async def always_fails(message: str = "the storage array said no") -> None:
    """Fails at once. At most once: no retry, it ends `failed` with the error."""
    raise ProvisioningError(message)


@app.job(retry=Retry(attempts=3, backoff=0.2, max_delay=2.0))
async def flaky(ctx: JobContext, succeed_on: int = 3) -> str:
    """Fails until attempt ``succeed_on``; retried with exponential backoff."""
    if ctx.attempt < succeed_on:
        raise ProvisioningError(f"transient error on attempt {ctx.attempt}")
    return f"succeeded on attempt {ctx.attempt}"


@app.job(timeout=1.0)
async def too_slow(seconds: float = 10.0) -> None:
    """Runs past its 1 s time limit: it is cancelled and ends `failed` with a timeout."""
    await asyncio.sleep(seconds)
