"""The web dashboard against a real Postgres: its token, its pages, its actions.

Requests go through httpx to the ASGI app in this event loop (the store's connections belong
to it); one test serves it with uvicorn on a real port.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import anyio
import httpx
import pytest

from asyncjobs import App, JobContext, JobFailedError, Settings, chain
from asyncjobs.dashboard import create_app, serve
from asyncjobs.dashboard.auth import COOKIE
from asyncjobs.errors import ConfigurationError
from asyncjobs.jobs import JobId, JobState
from tests.helpers import wait_until

TOKEN = "dashboard-test-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
TIMEOUT = 20.0
PAGES = ("/", "/jobs", "/jobs?state=failed", "/workflows", "/schedules")


class World(NamedTuple):
    app: App
    web: httpx.AsyncClient
    failed: JobId  # failed once, with a traceback; succeeds if retried
    queued: JobId  # in a queue no node serves: stays queued
    attempts: list[int]


@pytest.fixture
async def world(pg_settings: Settings) -> AsyncIterator[World]:
    app = App(settings=pg_settings.replace(queues="default"))
    attempts: list[int] = []

    @app.job()
    async def flaky(n: int) -> int:
        attempts.append(n)
        if len(attempts) == 1:
            raise ValueError(f"bad input {n}")
        return n

    @app.job(queue="elsewhere")
    async def later() -> None: ...

    @app.job()
    async def step(*_: Any) -> None:
        raise RuntimeError("step broke")

    app.schedule("nightly", step, cron="0 3 * * *")  # recorded by the node, never due here
    async with app:
        await wait_until(app.store.list_schedules, timeout=TIMEOUT, what="the schedule")
        failed = await app.enqueue(flaky, 7)
        with contextlib.suppress(JobFailedError):
            await app.result(failed, timeout=TIMEOUT)
        queued = await app.enqueue(later)
        transport = httpx.ASGITransport(create_app(app.store, TOKEN))
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as web:
            yield World(app, web, failed, queued, attempts)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert match, "no CSRF field on the page"
    return match[1]


async def log_in(web: httpx.AsyncClient) -> None:
    response = await web.post("/login", data={"token": TOKEN, "next": "/"})
    assert response.status_code == 303 and COOKIE in web.cookies


async def test_anonymous_requests_get_401_with_the_login_form_or_json(world: World) -> None:
    web = world.web
    for path in (*PAGES, f"/jobs/{world.failed}", "/no/such/page"):
        response = await web.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert 'name="token"' in response.text and "bad input" not in response.text
    response = await web.post(f"/jobs/{world.queued}/cancel")
    assert response.status_code == 401
    assert (await world.app.get(world.queued)).state is JobState.QUEUED
    response = await web.get("/jobs", headers={"Accept": "application/json"})
    assert response.status_code == 401
    assert response.json() == {"error": "This dashboard needs its token."}
    assert 'name="csrf"' not in (await web.get("/")).text  # no CSRF value for strangers
    # Nor on the error pages a stranger can reach (/login is open to everyone).
    for response in (await web.put("/login"), await web.post("/login", content=b"x" * 9000)):
        assert response.status_code in (400, 405), response.status_code
        assert 'name="csrf"' not in response.text and "Log out" not in response.text


async def test_a_wrong_token_gets_401_by_header_form_or_cookie(world: World) -> None:
    web = world.web
    wrong = TOKEN[:-1] + "x"
    assert (await web.get("/", headers={"Authorization": f"Bearer {wrong}"})).status_code == 401
    assert (await web.get("/", headers={"Authorization": TOKEN})).status_code == 401
    response = await web.post("/login", data={"token": wrong, "next": "/schedules"})
    assert response.status_code == 401
    assert "not the dashboard&#39;s token" in response.text and COOKIE not in web.cookies
    assert 'name="next" value="/schedules"' in response.text  # the next try goes there
    web.cookies.set(COOKIE, "0" * 64)
    assert (await web.get("/")).status_code == 401
    web.cookies.set(COOKIE, TOKEN)  # the token itself is not the session value
    assert (await web.get("/")).status_code == 401


async def test_the_bearer_header_opens_every_page(world: World) -> None:
    for path in PAGES:
        response = await world.web.get(path, headers=BEARER)
        assert response.status_code == 200, path
        assert "default-src 'none'" in response.headers["content-security-policy"]
    overview = (await world.web.get("/", headers=BEARER)).text
    assert "elsewhere" in overview and "flaky" in overview  # a queue; a recent failure
    assert str(world.app.node.id) in overview  # the live node
    schedules = (await world.web.get("/schedules", headers=BEARER)).text
    assert "nightly" in schedules and "0 3 * * *" in schedules


async def test_the_login_form_sets_a_strict_httponly_cookie_and_logout_clears_it(
    world: World,
) -> None:
    web = world.web
    login_page = await web.get("/jobs?state=failed")
    assert 'value="/jobs?state=failed"' in login_page.text  # comes back here after logging in
    response = await web.post("/login", data={"token": TOKEN, "next": "/jobs?state=failed"})
    assert response.status_code == 303 and response.headers["location"] == "/jobs?state=failed"
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and TOKEN not in cookie
    page = await web.get("/jobs?state=failed")
    assert page.status_code == 200 and str(world.failed) in page.text
    response = await web.post("/logout", data={"csrf": csrf_of(page.text)})
    assert response.status_code == 303 and COOKIE not in web.cookies
    assert (await web.get("/")).status_code == 401
    response = await web.post("/login", data={"token": TOKEN, "next": "//evil.example/"})
    assert response.headers["location"] == "/"  # never to another site


async def test_the_job_list_filters_by_state_queue_name_and_age(world: World) -> None:
    async def listed(query: str) -> str:
        response = await world.web.get(f"/jobs?{query}", headers=BEARER)
        assert response.status_code == 200, query
        return response.text

    failed, queued = str(world.failed), str(world.queued)
    page = await listed("state=failed")
    assert failed in page and queued not in page and "ValueError: bad input 7" in page
    page = await listed("state=queued&queue=elsewhere")
    assert queued in page and failed not in page
    page = await listed("name=flaky&since=1h")
    assert failed in page and queued not in page
    assert "No jobs match" in await listed("name=flaky&state=running")
    assert "No jobs match" in await listed("since=2999-01-01T00:00:00")


async def test_the_job_list_pages_with_before_until_the_oldest(world: World) -> None:
    app = world.app
    ids = [await app.enqueue("later") for _ in range(7)]
    expected = [str(i) for i in [*reversed(ids), world.queued, world.failed]]
    seen: list[str] = []
    link: str | None = "/jobs?limit=4"
    while link is not None:
        page = (await world.web.get(link.replace("&amp;", "&"), headers=BEARER)).text
        seen += re.findall(r'<a href="/jobs/([0-9a-f-]{36})">', page)
        found = re.search(r'<a href="([^"]+)" rel="next">', page)
        link = found[1] if found else None
        if link is not None:
            assert "before=" in link and "limit=4" in link
    assert seen == expected


async def test_the_job_page_shows_the_error_with_its_traceback_and_timings(world: World) -> None:
    page = (await world.web.get(f"/jobs/{world.failed}", headers=BEARER)).text
    assert "ValueError: bad input 7" in page
    assert "Traceback (most recent call last)" in page and "in flaky" in page
    assert "Run time" in page and "Waited in queue" in page and "CPU time" in page
    assert str(world.app.node.id) in page  # the node that ran it
    assert "Retry job" in page and "Cancel job" not in page
    queued_page = (await world.web.get(f"/jobs/{world.queued}", headers=BEARER)).text
    assert "Cancel job" in queued_page and "Retry job" not in queued_page


async def test_bad_input_gets_400_naming_the_value_and_never_a_traceback(world: World) -> None:
    cases = {
        "/jobs/not-a-uuid": "'not-a-uuid' is not a job id",
        "/jobs?state=exploded": "state 'exploded' is not a job state",
        "/jobs?limit=0": "limit '0' is not a number from 1 to 500",
        "/jobs?since=yesterday": "since 'yesterday' is neither a duration",
        "/jobs?before=42": "'42' is not a job id",
        "/workflows/zzz": "'zzz' is not a workflow id",
        "/workflows?before=x": "'x' is not a workflow id",
    }
    for path, sentence in cases.items():
        response = await world.web.get(path, headers=BEARER)
        assert response.status_code == 400, path
        assert sentence in response.text.replace("&#39;", "'"), path
        assert "Traceback" not in response.text
    missing = uuid.uuid4()
    response = await world.web.get(f"/jobs/{missing}", headers=BEARER)
    assert response.status_code == 404 and f"There is no job {missing}" in response.text
    response = await world.web.post(f"/jobs/{missing}/cancel", headers=BEARER)
    assert response.status_code == 404


async def test_cancel_and_retry_change_the_jobs_state(world: World) -> None:
    web, app = world.web, world.app
    await log_in(web)
    csrf = csrf_of((await web.get(f"/jobs/{world.queued}")).text)

    response = await web.post(f"/jobs/{world.queued}/cancel", data={"csrf": csrf})
    assert response.status_code == 303
    assert response.headers["location"] == f"/jobs/{world.queued}?done=cancelled"
    record = await app.get(world.queued)
    assert record.state is JobState.CANCELLED and record.reason == "cancelled from the dashboard"
    assert "Cancelled." in (await web.get(response.headers["location"])).text

    response = await web.post(f"/jobs/{world.failed}/retry", data={"csrf": csrf})
    assert response.headers["location"] == f"/jobs/{world.failed}?done=retried"
    assert await app.result(world.failed, timeout=TIMEOUT) == 7
    assert world.attempts == [7, 7]
    response = await web.post(f"/jobs/{world.failed}/retry", data={"csrf": csrf})
    assert response.headers["location"].endswith("?done=not-retried")  # it succeeded


async def test_a_form_without_its_csrf_field_gets_403_and_changes_nothing(world: World) -> None:
    web = world.web
    await log_in(web)
    for data in ({}, {"csrf": "0" * 64}, {"csrf": TOKEN}):
        response = await web.post(f"/jobs/{world.queued}/cancel", data=data)
        assert response.status_code == 403, data
        assert "did not come from this dashboard" in response.text
    assert (await world.app.get(world.queued)).state is JobState.QUEUED
    assert (await web.post("/logout")).status_code == 403


async def test_workflow_pages_list_workflows_and_show_failed_steps(world: World) -> None:
    app = world.app
    workflow_id = await app.submit(chain(app.signature("step"), app.signature("later")), name="wf")

    async def finished() -> bool:
        return (await app.workflow_status(workflow_id)).is_finished

    await wait_until(finished, timeout=TIMEOUT, what="the workflow to fail")
    listing = (await world.web.get("/workflows", headers=BEARER)).text
    assert str(workflow_id) in listing and "failed" in listing
    page = (await world.web.get(f"/workflows/{workflow_id}", headers=BEARER)).text
    assert "RuntimeError: step broke" in page and "cancelled 1" in page
    response = await world.web.get(f"/workflows/{uuid.uuid4()}", headers=BEARER)
    assert response.status_code == 404


async def test_serve_answers_on_a_real_port_and_stops_when_cancelled(world: World) -> None:
    async with anyio.create_task_group() as tg:
        url = await tg.start(serve, world.app.store, TOKEN, "127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/")).status_code == 401
            assert (await client.get("/", headers=BEARER)).status_code == 200
        tg.cancel_scope.cancel()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=url) as client:
            await client.get("/")


def test_the_dashboard_refuses_a_missing_or_short_token() -> None:
    from asyncjobs import MemoryStore

    for token in ("", "short", " " + TOKEN):
        with pytest.raises(ConfigurationError, match="dashboard_token") as info:
            create_app(MemoryStore(), token)
        assert "short" not in str(info.value)  # the value is never shown


async def test_the_job_page_of_a_durable_job_lists_its_steps(pg_settings: Settings) -> None:
    app = App(settings=pg_settings.replace(queues="default"))

    async def act(what: str) -> str:
        return what

    @app.job(durable=True)
    async def provision(ctx: JobContext) -> None:
        await ctx.step("create_vm", act, "vm")
        await ctx.step("create_disk", act, "disk", idempotent=True)
        await ctx.step("fails", _broken)

    async with app:
        job_id = await app.enqueue(provision)
        with contextlib.suppress(JobFailedError):
            await app.result(job_id, timeout=TIMEOUT)
        transport = httpx.ASGITransport(create_app(app.store, TOKEN))
        async with httpx.AsyncClient(transport=transport, base_url="http://dash") as web:
            page = (await web.get(f"/jobs/{job_id}", headers=BEARER)).text
    assert "<h2>Steps</h2>" in page
    for name in ("create_vm", "create_disk", "fails"):
        assert f'<td class="mono">{name}</td>' in page
    assert "RuntimeError: the array is read-only" in page
    assert page.count("state-succeeded") >= 2 and "state-failed" in page


async def _broken() -> None:
    raise RuntimeError("the array is read-only")
