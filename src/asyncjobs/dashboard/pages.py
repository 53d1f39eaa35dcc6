"""The dashboard's pages and actions. Each page is a handful of indexed queries:

- ``/``: ``monitoring.snapshot`` (queues, nodes, throughput, recent failures, limits) and the
  per-job-name statistics of the last hour;
- ``/jobs``: ``store.list_jobs``, newest first, a keyset page (``before`` = the last id shown);
- ``/jobs/{id}``: ``store.get``; POST ``/jobs/{id}/cancel`` and ``/jobs/{id}/retry``;
- ``/workflows`` (keyset pages) and ``/workflows/{id}``; ``/schedules``.

Actions are forms that POST, then redirect to the job's page (POST, redirect, GET), which says
what happened.
"""

from __future__ import annotations

import asyncio
import time

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from .. import monitoring
from ..jobs import JobId, JobState
from ..store.base import Store
from ..workflows import MAX_FAILURES_SHOWN, status_from
from .auth import CsrfError, TokenAuth, read_form
from .params import STATES, JobFilters, NotFound, parse_before, parse_id, parse_limit
from .render import Renderer

STATS_WINDOW_S = 3600.0  # the overview's per-job-name statistics cover the last hour
CANCEL_REASON = "cancelled from the dashboard"
# What the job page says after an action (?done=...): fixed sentences, never echoed input.
DONE = {
    "cancelled": "Cancelled.",
    "stopping": "The job is running: its node was asked to stop it.",
    "finished": "Not cancelled: the job had already finished.",
    "retried": "Queued again, for one more attempt.",
    "not-retried": "Not retried: only failed or lost jobs are, and not while another "
    "unfinished job holds their unique key.",
}


class Pages:
    """The handlers, bound to one store."""

    def __init__(self, store: Store, auth: TokenAuth, renderer: Renderer) -> None:
        self.store = store
        self.auth = auth
        self.render = renderer

    def routes(self) -> list[Route]:
        return [
            Route("/", self.overview),
            Route("/jobs", self.jobs),
            Route("/jobs/{id}", self.job),
            Route("/jobs/{id}/cancel", self.cancel, methods=["POST"]),
            Route("/jobs/{id}/retry", self.retry, methods=["POST"]),
            Route("/workflows", self.workflows),
            Route("/workflows/{id}", self.workflow),
            Route("/schedules", self.schedules),
        ]

    async def overview(self, request: Request) -> Response:
        now = time.time()
        # On two of the pool's connections: the statistics need not wait for the snapshot.
        snap, stats = await asyncio.gather(
            monitoring.snapshot(self.store, now), self.store.job_stats(now - STATS_WINDOW_S)
        )
        totals = {
            field: sum(getattr(q, field) for q in snap.queues)
            for field in ("queued", "parked", "running", "scheduled")
        }
        return self.render.page(
            request, "overview.html", snap=snap, totals=totals,
            stats=[monitoring.classify(s) for s in stats], stats_window=STATS_WINDOW_S,
        )  # fmt: skip

    async def jobs(self, request: Request) -> Response:
        filters = JobFilters.parse(request.query_params)
        before = parse_before(request.query_params)
        records = await self.store.list_jobs(filters.query(before))
        more = len(records) == filters.limit
        return self.render.page(
            request, "jobs.html", records=records, filters=filters, states=STATES,
            before=before, next_link=filters.link(records[-1].id) if more else None,
            now=time.time(),
        )  # fmt: skip

    async def job(self, request: Request) -> Response:
        job_id = parse_id(request.path_params["id"])
        record = await self.store.get(job_id)
        if record is None:
            raise NotFound(f"There is no job {job_id} (it may have been pruned).")
        done = DONE.get(request.query_params.get("done", ""))
        steps = await self.store.job_steps(job_id)
        return self.render.page(
            request, "job.html", r=record, done=done, steps=steps,
            can_cancel=not record.state.is_terminal,
            can_retry=record.state in (JobState.FAILED, JobState.LOST),
        )  # fmt: skip

    async def _action_on(self, request: Request) -> JobId:
        """The job an action form names, once its CSRF field is checked."""
        form = await read_form(request)
        if not self.auth.csrf_ok(request, form):
            raise CsrfError
        return parse_id(request.path_params["id"])

    async def cancel(self, request: Request) -> Response:
        job_id = await self._action_on(request)
        state = await self.store.cancel(job_id, CANCEL_REASON, time.time())
        if state is None:
            raise NotFound(f"There is no job {job_id} to cancel.")
        done = {JobState.CANCELLED: "cancelled", JobState.RUNNING: "stopping"}.get(
            state, "finished"
        )
        return RedirectResponse(f"/jobs/{job_id}?done={done}", 303)

    async def retry(self, request: Request) -> Response:
        job_id = await self._action_on(request)
        again = await self.store.retry_jobs([job_id], time.time())
        if job_id not in again and await self.store.get(job_id) is None:
            raise NotFound(f"There is no job {job_id} to retry.")
        done = "retried" if job_id in again else "not-retried"
        return RedirectResponse(f"/jobs/{job_id}?done={done}", 303)

    async def workflows(self, request: Request) -> Response:
        before = parse_before(request.query_params, "workflow")
        limit = parse_limit(request.query_params)
        infos = await self.store.list_workflows(before, limit)
        more = len(infos) == limit
        return self.render.page(
            request, "workflows.html", workflows=[status_from(i, []) for i in infos],
            before=before, next_before=infos[-1].id if more else None, limit=limit,
        )  # fmt: skip

    async def workflow(self, request: Request) -> Response:
        workflow_id = parse_id(request.path_params["id"], "workflow")
        info = await self.store.workflow_info(workflow_id)
        if info is None:
            raise NotFound(f"There is no workflow {workflow_id} (it may have been pruned).")
        failures = await self.store.workflow_failures(workflow_id, MAX_FAILURES_SHOWN)
        return self.render.page(request, "workflow.html", w=status_from(info, failures))

    async def schedules(self, request: Request) -> Response:
        records = await self.store.list_schedules()
        return self.render.page(request, "schedules.html", schedules=records, now=time.time())
