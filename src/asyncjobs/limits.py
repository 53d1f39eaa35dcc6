"""Concurrency keys and rate limits: what a job declares, and the values each job row carries.

- A **concurrency key** names a shared resource (``"vm:{vm_id}"``). At most ``limit`` jobs
  with the same key run at once, across every node. The key is a template filled from the
  job's arguments by parameter name; a key without a limit means a limit of 1 (mutual
  exclusion), and a limit without a key limits the job itself (its name is the key).
- A **rate limit** (``"100/m"``) caps how many jobs of a bucket start in any window of that
  length, across every node: the bucket is the job's name, or ``rate_limit_key`` (a template
  like the concurrency key) to share one budget between jobs or split it by argument.

The database enforces both when it claims jobs (see migrations/0005_limits.sql); this module
only validates declarations and computes each job's values.
"""

from __future__ import annotations

import inspect
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import InvalidJobOptionError, JobDefinitionError
from .storable import text_problem

MAX_KEY_CHARS = 512
MAX_LIMIT = 1_000_000
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|sec|second|m|min|minute|h|hour|d|day)s?\s*$")
_UNIT_S = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600,
           "hour": 3600, "d": 86400, "day": 86400}  # fmt: skip


class RateLimit(NamedTuple):
    """At most ``starts`` starts in any window of ``period_s`` seconds."""

    starts: int
    period_s: float

    def __str__(self) -> str:
        return f"{self.starts}/{self.period_s:g}s"


def parse_rate(spec: str) -> RateLimit:
    """``"100/m"``, ``"20/s"``, ``"5/10s"``, ``"1000/h"``, ``"10000/d"``; ValueError says why."""
    match = _RATE.match(spec) if isinstance(spec, str) else None
    if match is None:
        raise ValueError(
            "write it as a count per period: '20/s', '100/m', '1000/h', '5/10s' (s, m, h or d)"
        )
    count, multiple, unit = int(match[1]), int(match[2] or 1), match[3]
    if not 1 <= count <= MAX_LIMIT or multiple < 1:
        raise ValueError(f"the count must be 1 to {MAX_LIMIT:,} and the period at least 1 {unit}")
    return RateLimit(count, float(multiple * _UNIT_S[unit]))


class KeyTemplate:
    """A key like ``"vm:{vm_id}"``, filled from a job's arguments by parameter name."""

    def __init__(self, job: str, option: str, template: str, fn: Callable[..., Any]) -> None:
        if not isinstance(template, str) or not 0 < len(template) <= MAX_KEY_CHARS:
            raise JobDefinitionError(
                job, f"{option}={template!r} is not a string of 1 to {MAX_KEY_CHARS} characters"
            )
        if why := text_problem(template):
            raise JobDefinitionError(job, f"{option}={template!r} cannot be stored: {why}")
        self.template = template
        self.option = option
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as exc:
            raise JobDefinitionError(
                job, f"{option}={template!r} is not a template: {exc}"
            ) from None
        self.signature = inspect.signature(fn)
        params = [p for p in self.signature.parameters]
        for name in fields:
            if not name.isidentifier() or name not in params:
                raise JobDefinitionError(
                    job,
                    f"{option}={template!r} uses {{{name}}}, which is not a parameter of the "
                    f"function (its parameters: {', '.join(params) or 'none'}); name a parameter, "
                    "as in 'vm:{vm_id}'",
                )
        self.fields = tuple(fields)

    def render(self, job: str, args: Sequence[Any], kwargs: Mapping[str, Any], ctx: bool) -> str:
        """The key for these arguments (``ctx``: the function takes a JobContext first)."""
        if not self.fields:
            return self.template
        call_args = (None, *args) if ctx else tuple(args)
        try:
            bound = self.signature.bind(*call_args, **kwargs)
        except TypeError as exc:
            raise InvalidJobOptionError(job, self.option, self.template, str(exc)) from None
        bound.apply_defaults()
        values = {name: bound.arguments.get(name) for name in self.fields}
        key = self.template.format(**values)
        if len(key) > MAX_KEY_CHARS:
            raise InvalidJobOptionError(
                job, self.option, key, f"the key is over {MAX_KEY_CHARS} characters"
            )
        return key


@dataclass(frozen=True, slots=True)
class JobLimits:
    """What a job definition declares; ``values`` gives one job's row values."""

    concurrency_key: KeyTemplate | None
    concurrency_limit: int | None
    rate: RateLimit | None
    rate_key: KeyTemplate | None

    def values(
        self,
        job: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        ctx: bool,
        key: str | None = None,
        limit: int | None = None,
    ) -> tuple[str | None, int | None, str | None, int | None, float | None]:
        """(concurrency key, its limit, rate bucket, rate count, rate period) for one job;
        ``key`` and ``limit`` are overrides given at enqueue."""
        if key is None and self.concurrency_key is not None:
            key = self.concurrency_key.render(job, args, kwargs, ctx)
        if limit is None:
            limit = self.concurrency_limit
        if key is not None and limit is None:
            limit = 1
        elif key is None and limit is not None:
            key = job
        if self.rate is None:
            return key, limit, None, None, None
        bucket = self.rate_key.render(job, args, kwargs, ctx) if self.rate_key else job
        return key, limit, bucket, self.rate.starts, self.rate.period_s


def declare_limits(
    job: str,
    fn: Callable[..., Any],
    *,
    concurrency_key: str | None,
    concurrency_limit: int | None,
    rate_limit: str | None,
    rate_limit_key: str | None,
) -> JobLimits | None:
    """Validate a job's limits at declaration; None if it declares none."""
    if concurrency_key is None and concurrency_limit is None and rate_limit is None:
        if rate_limit_key is not None:
            raise JobDefinitionError(job, "rate_limit_key needs a rate_limit, such as '100/m'")
        return None
    if concurrency_limit is not None and (why := limit_problem(concurrency_limit)):
        raise JobDefinitionError(job, f"concurrency_limit={concurrency_limit!r} {why}")
    rate = None
    if rate_limit is not None:
        try:
            rate = parse_rate(rate_limit)
        except ValueError as exc:
            raise JobDefinitionError(job, f"rate_limit={rate_limit!r} is invalid: {exc}") from None
    elif rate_limit_key is not None:
        raise JobDefinitionError(job, "rate_limit_key needs a rate_limit, such as '100/m'")
    return JobLimits(
        None
        if concurrency_key is None
        else KeyTemplate(job, "concurrency_key", concurrency_key, fn),
        concurrency_limit,
        rate,
        None if rate_limit_key is None else KeyTemplate(job, "rate_limit_key", rate_limit_key, fn),
    )


def limit_problem(limit: Any) -> str | None:
    """Why ``limit`` cannot be a concurrency limit, or None if it can."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        return f"must be a whole number from 1 to {MAX_LIMIT:,}"
    return None
