"""Registering a job: every check of a declaration, before the job joins the app's registry
(``@app.job`` calls ``register_job``)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from .errors import ConfigurationError, JobDefinitionError
from .jobs import PRIORITY_MAX, PRIORITY_MIN, JobDef, Retry
from .limits import declare_limits
from .storable import text_problem

P = ParamSpec("P")
R = TypeVar("R")


def register_job(
    registry: dict[str, JobDef[Any, Any]],
    fn: Callable[P, Awaitable[R]],
    *,
    name: str | None,
    queue: str | None,
    priority: int,
    timeout: float | None,
    soft_timeout: float | None,
    retry: Retry | None,
    isolated: bool = False,
    concurrency_key: str | None = None,
    concurrency_limit: int | None = None,
    rate_limit: str | None = None,
    rate_limit_key: str | None = None,
    durable: bool = False,
) -> JobDef[P, R]:
    """Validate a declaration and add it to ``registry`` (what ``App.job`` does)."""
    job_name = name if name is not None else getattr(fn, "__name__", repr(fn))
    job_queue = queue if queue is not None else "default"
    validate_job_options(
        job_name, fn, queue=job_queue, priority=priority, timeout=timeout,
        soft_timeout=soft_timeout, retry=retry, isolated=isolated,
    )  # fmt: skip
    if durable is not True and durable is not False:
        raise JobDefinitionError(job_name, f"durable={durable!r} is not True or False")
    if durable and isolated:
        raise JobDefinitionError(
            job_name,
            "a durable job runs on the node's event loop, where its steps are recorded, so it "
            "cannot be isolated. Keep it a coroutine and give its CPU-heavy work to the pool "
            "as a step: await ctx.step('name', an_isolated_job, ...)",
        )
    existing = registry.get(job_name)
    if existing is not None and existing.fn is not fn:
        raise JobDefinitionError(
            job_name,
            f"{_where(fn)} and {_where(existing.fn)} both use this name; pass name=... to one "
            "of them",
        )
    limits = declare_limits(
        job_name, fn, concurrency_key=concurrency_key, concurrency_limit=concurrency_limit,
        rate_limit=rate_limit, rate_limit_key=rate_limit_key,
    )  # fmt: skip
    definition = JobDef(
        fn, name=job_name, queue=job_queue, priority=priority, timeout=timeout,
        soft_timeout=soft_timeout, retry=retry, isolated=isolated, limits=limits,
        durable=durable,
    )  # fmt: skip
    registry[job_name] = definition
    return definition


def _where(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def validate_job_options(
    name: str,
    fn: Callable[..., Any],
    *,
    queue: str,
    priority: int,
    timeout: float | None,
    soft_timeout: float | None,
    retry: Retry | None,
    isolated: bool = False,
) -> None:
    """Raise ``JobDefinitionError`` for a declaration that cannot run."""
    from .settings import check_queue_name, check_seconds

    if isolated is not True and isolated is not False:
        raise JobDefinitionError(str(name), f"isolated={isolated!r} is not True or False")
    if isolated:
        _check_importable(str(name), fn)
    elif not inspect.iscoroutinefunction(fn):
        raise JobDefinitionError(
            name,
            "it is a plain function, and a plain function would block the event loop that runs "
            "every other job. Make it `async def`, or declare it `@app.job(isolated=True)` to "
            "run it in a pool worker process (for CPU-heavy or untrusted code).",
        )
    if not isinstance(name, str) or not 1 <= len(name) <= 200:
        raise JobDefinitionError(str(name), "a job name is a string of 1 to 200 characters")
    if why := text_problem(name):
        raise JobDefinitionError(name, f"its name cannot be stored: {why}")
    try:
        check_queue_name(queue)
        for opt, value in (("timeout", timeout), ("soft_timeout", soft_timeout)):
            if value is not None:
                check_seconds(opt, value)
    except ConfigurationError as exc:
        raise JobDefinitionError(name, str(exc)) from None
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise JobDefinitionError(name, f"priority={priority!r} is not a whole number")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise JobDefinitionError(
            name, f"priority={priority} is outside {PRIORITY_MIN}..{PRIORITY_MAX}"
        )
    if timeout is not None and soft_timeout is not None and soft_timeout >= timeout:
        raise JobDefinitionError(
            name,
            f"soft_timeout ({soft_timeout:g} s) must be shorter than timeout ({timeout:g} s): "
            "the soft limit asks the job to stop, the hard limit gives up on it",
        )
    if retry is not None and not isinstance(retry, Retry):
        raise JobDefinitionError(name, f"retry={retry!r} is not a Retry(...) policy")


def _check_importable(name: str, fn: Callable[..., Any]) -> None:
    """An isolated job is found again in the zygote by module and name: it must be reachable."""
    if not callable(fn):
        raise JobDefinitionError(name, f"{fn!r} is not a function")
    qualname = getattr(fn, "__qualname__", "")
    if not qualname or "<" in qualname:
        raise JobDefinitionError(
            name,
            f"an isolated job must be a module-level function, and {qualname or fn!r} is "
            "defined inside another function: the pool's zygote imports it by module and name",
        )
