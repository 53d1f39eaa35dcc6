"""Reading what a request asks for (ids, filters, page cursors), with a sentence when it is
wrong: a bad value is a 400 page naming it, never a traceback."""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlencode

from starlette.datastructures import QueryParams

from ..jobs import JobId, JobState, coerce_job_id
from ..monitoring import created_since
from ..storable import text_problem
from ..store.base import JobQuery

PAGE_SIZE = 50  # jobs or workflows per page, unless ?limit= says otherwise
MAX_PAGE_SIZE = 500
MAX_TEXT = 200  # the longest queue or job name a filter takes
STATES = tuple(s.value for s in JobState)


class BadRequest(Exception):
    """A request the dashboard cannot answer, with the sentence that says why (a 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(Exception):
    """What the request names does not exist (a 404), with the sentence that says so."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_id(value: str, what: str = "job") -> JobId:
    try:
        return coerce_job_id(value)
    except ValueError:
        raise BadRequest(f"{value!r} is not a {what} id (a UUID, like the ids listed)") from None


def _text(params: QueryParams, key: str) -> str | None:
    value = params.get(key, "").strip()
    if len(value) > MAX_TEXT:
        raise BadRequest(f"the {key} filter is over {MAX_TEXT} characters long")
    if why := text_problem(value):
        raise BadRequest(f"the {key} filter {value!r} cannot match a stored name: {why}")
    return value or None


def parse_limit(params: QueryParams) -> int:
    raw = params.get("limit", "").strip()
    if not raw:
        return PAGE_SIZE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE_SIZE:
        raise BadRequest(f"limit {raw!r} is not a number from 1 to {MAX_PAGE_SIZE}")
    return int(raw)


def parse_before(params: QueryParams, what: str = "job") -> JobId | None:
    raw = params.get("before", "").strip()
    return parse_id(raw, what) if raw else None


def since_floor(value: str, now: float | None = None) -> JobId:
    """``monitoring.created_since``, with a bad value as a ``BadRequest``."""
    try:
        return created_since(value, now)
    except ValueError as exc:
        raise BadRequest(f"since {exc}") from None


class JobFilters(NamedTuple):
    """The job list's filters, as the query string gave them."""

    state: str | None = None
    queue: str | None = None
    name: str | None = None
    since: str | None = None
    limit: int = PAGE_SIZE

    @classmethod
    def parse(cls, params: QueryParams) -> JobFilters:
        state = _text(params, "state")
        if state is not None and state not in STATES:
            raise BadRequest(f"state {state!r} is not a job state; use one of {', '.join(STATES)}")
        since = _text(params, "since")
        if since is not None:
            since_floor(since)  # rejects a bad value before any query
        return cls(state, _text(params, "queue"), _text(params, "name"), since, parse_limit(params))

    def query(self, before: JobId | None) -> JobQuery:
        since = since_floor(self.since) if self.since else None
        return JobQuery(self.state, self.queue, self.name, since, before, self.limit)

    def link(self, before: JobId | None = None, **changes: str | None) -> str:
        """The job list's URL with these filters (and ``changes``), from ``before``."""
        fields = {"state": self.state, "queue": self.queue, "name": self.name,
                  "since": self.since} | changes  # fmt: skip
        if self.limit != PAGE_SIZE:
            fields["limit"] = str(self.limit)
        if before is not None:
            fields["before"] = str(before)
        query = urlencode({k: v for k, v in fields.items() if v})
        return f"/jobs?{query}" if query else "/jobs"

    @property
    def active(self) -> bool:
        return any((self.state, self.queue, self.name, self.since))
