"""The dashboard as a person uses it: ``asyncjobs dashboard`` in its own process, driven by a
real headless Chromium (Debian's ``chromium`` package, through Playwright; no browser is ever
downloaded). The test logs in, filters the failed jobs, opens one and reads its traceback,
cancels a queued job, and takes the screenshot the README shows (docs/dashboard.png, rewritten
when ASYNCJOBS_TEST_UPDATE_SCREENSHOT=1).

Without Chromium or Playwright the test fails, saying what to install: it never skips.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from asyncjobs import App, JobFailedError, Settings
from asyncjobs.jobs import JobId, JobState
from tests.helpers import wait_until

from .nodes import CLI, ROOT, subprocess_env

TOKEN = "browser-test-token-0123456789abcdef"
CHROMIUM = os.environ.get("ASYNCJOBS_TEST_CHROMIUM", "/usr/bin/chromium")
# The machine has no network: without these, Chromium waits on connections to Google's
# services (updates, sync, QUIC probes) that never answer.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip
INSTALL_CHROMIUM = (
    "The browser test needs Debian's chromium, and {path} is missing: run `make install` as "
    "root, or `sudo apt-get install -y --no-install-recommends chromium`, or set "
    "ASYNCJOBS_TEST_CHROMIUM to a Chromium binary."
)
SCREENSHOT = ROOT / "docs" / "dashboard.png"
UPDATE_SCREENSHOT = "ASYNCJOBS_TEST_UPDATE_SCREENSHOT"
START_TIMEOUT_S = 20.0
TIMEOUT = 20.0
EXPECT_MS = 10_000


class Data(NamedTuple):
    app: App
    failed: list[JobId]
    queued: JobId
    release: asyncio.Event  # lets the running job finish


@pytest.fixture
async def data(pg_settings: Settings) -> AsyncIterator[Data]:
    """A node in this process, with jobs in every state the pages show: succeeded, failed
    (with tracebacks), running, scheduled, and queued in a queue no node serves."""
    app = App(settings=pg_settings.replace(queues="default,images=20"))
    release = asyncio.Event()

    @app.job(queue="images")
    async def resize_image(name: str, width: int) -> dict[str, Any]:
        return {"name": name, "width": width}

    @app.job()
    async def send_invoice(customer: str) -> str:
        if customer.startswith("acme"):
            raise ConnectionError(f"smtp.example.com refused the invoice for {customer}")
        return f"sent to {customer}"

    @app.job()
    async def rebuild_index() -> None:
        await release.wait()

    @app.job(queue="reports")
    async def monthly_report(month: str) -> None: ...

    async with app:
        done = [await app.enqueue(resize_image, f"photo-{i}.jpg", 640) for i in range(30)]
        invoices = [await app.enqueue(send_invoice, c) for c in ("acme-1", "globex", "acme-2")]
        for job in (*done, *invoices):
            with contextlib.suppress(JobFailedError):
                await app.result(job, timeout=TIMEOUT)
        failed = [j for j in invoices if (await app.get(j)).state is JobState.FAILED]
        running = await app.enqueue(rebuild_index)
        await wait_until(
            lambda: _state_is(app, running, JobState.RUNNING), timeout=TIMEOUT, what="a start"
        )
        await app.enqueue(monthly_report, "2026-10", delay=3600)
        queued = await app.enqueue(monthly_report, "2026-11")
        try:
            yield Data(app, failed, queued, release)
        finally:
            release.set()


async def _state_is(app: App, job: JobId, state: JobState) -> bool:
    return (await app.get(job)).state is state


@pytest.fixture
def dashboard(pg_dsn: str, pg_schema: str, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """``asyncjobs dashboard --port 0`` in its own process group; (its URL, the process)."""
    log = tmp_path / "dashboard.log"
    env = subprocess_env(pg_dsn, pg_schema, dashboard_token=TOKEN)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*CLI, "dashboard", "--port", "0"], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        yield str(log), proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


async def started_url(log: str, proc: Any) -> str:
    def url() -> str | None:
        if proc.poll() is not None:
            pytest.fail(f"asyncjobs dashboard exited:\n{output(log)}", pytrace=False)
        match = re.search(r"dashboard on (http://\S+)", output(log))
        return match[1] if match else None

    found: str = await wait_until(url, timeout=START_TIMEOUT_S, what="the dashboard to start")
    return found


def chromium_binary() -> str:
    """Debian's chromium (or ASYNCJOBS_TEST_CHROMIUM); the test fails, saying how to install
    it, if it is missing."""
    found = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which(CHROMIUM)
    if not found and "ASYNCJOBS_TEST_CHROMIUM" not in os.environ:
        found = shutil.which("chromium")  # where .ci/install-chromium (make install) looks
    if not found:
        pytest.fail(INSTALL_CHROMIUM.format(path=CHROMIUM), pytrace=False)
    return found


def output(log: str) -> str:
    return Path(log).read_text(errors="replace")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    binary = chromium_binary()
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.fail(
            "the browser test needs Playwright (the Python package only): pip install "
            "playwright, or make install. Never `playwright install`: it drives Debian's "
            "chromium",
            pytrace=False,
        )
    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(executable_path=binary, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


async def test_a_person_logs_in_reads_a_traceback_and_cancels_a_queued_job(
    data: Data, dashboard: tuple[str, Any], browser: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    expect.set_options(timeout=EXPECT_MS)
    url = await started_url(*dashboard)
    page = await browser.new_page(viewport={"width": 1280, "height": 860})

    # Anonymous: 401, and the login form.
    response = await page.goto(url)
    assert response is not None and response.status == 401
    await page.get_by_label("Token").fill(TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name=re.compile("^Overview"))).to_be_visible()
    await expect(page.get_by_role("cell", name="reports", exact=True)).to_be_visible()

    # The failed jobs, through the filter form.
    await page.get_by_role("link", name="Jobs", exact=True).click()
    await page.get_by_label("State").select_option("failed")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"/jobs\?state=failed"))
    rows = page.locator("table tr:has(td)")
    await expect(rows).to_have_count(len(data.failed))
    await expect(rows.locator(".state")).to_have_text(["failed"] * len(data.failed))

    # One of them, with its traceback.
    await rows.first.get_by_role("link").click()
    traceback = page.locator("pre.traceback")
    await expect(traceback).to_contain_text("Traceback (most recent call last)")
    await expect(traceback).to_contain_text("ConnectionError: smtp.example.com refused")
    await expect(page.get_by_role("button", name="Retry job")).to_be_visible()

    # The queued job: open it and cancel it.
    await page.goto(f"{url}jobs?state=queued&queue=reports")
    await page.get_by_role("link", name=str(data.queued)).click()
    await page.get_by_role("button", name="Cancel job").click()
    await expect(page.locator(".notice")).to_have_text("Cancelled.")
    await expect(page.locator("h1 .state")).to_have_text("cancelled")
    record = await data.app.get(data.queued)
    assert record.state is JobState.CANCELLED, record

    # The picture in the README: the overview, as it is now. Written to docs/ only when asked
    # (ASYNCJOBS_TEST_UPDATE_SCREENSHOT=1), so that a test run leaves the work tree clean.
    shot = SCREENSHOT if os.environ.get(UPDATE_SCREENSHOT) == "1" else tmp_path / "overview.png"
    shot.unlink(missing_ok=True)
    await page.get_by_role("link", name="Overview").click()
    await expect(page.get_by_role("heading", name=re.compile("^Overview"))).to_be_visible()
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # SIGTERM stops the dashboard cleanly.
    log, proc = dashboard
    proc.send_signal(signal.SIGTERM)
    await wait_until(lambda: proc.poll() is not None, timeout=TIMEOUT, what="its exit")
    assert proc.returncode == 0, output(log)
