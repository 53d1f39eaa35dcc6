"""The asyncjobs pytest plugin, as a user's test suite sees it (pytest's ``pytester``).

A sample project (an app module, a conftest naming the app, a test file) runs in a pytest
subprocess: its tests pass on the MemoryStore and on Postgres, and a deliberately wrong
assertion fails with a message a person can act on.
"""

from __future__ import annotations

import pytest

APP = """
from asyncjobs import App, JobContext, Retry

app = App()


@app.job()
async def send_invoice(customer: int) -> str:
    return f"invoice for {customer}"


@app.job(retry=Retry(attempts=3, backoff=60, jitter=0))
async def sync_ledger(ctx: JobContext) -> int:
    if ctx.attempt < 3:
        raise ConnectionError("ledger unreachable")
    return ctx.attempt


@app.job()
async def total(amounts: list[int]) -> int:
    return sum(amounts)


@app.job()
async def amount(customer: int) -> int:
    return customer * 10


@app.job()
async def cleanup() -> None:
    raise PermissionError("the archive is read-only")


app.schedule("hourly-cleanup", cleanup, cron="0 * * * *")
"""

CONFTEST = """
import pytest

import billing


@pytest.fixture
def asyncjobs_app():
    return billing.app


@pytest.fixture(params=["memory", "postgres"])
def harness(request):
    name = "asyncjobs_harness" if request.param == "memory" else "asyncjobs_pg_harness"
    return request.getfixturevalue(name)
"""

TESTS = """
from datetime import timedelta

from asyncjobs import chord, group

from billing import amount, total


async def test_a_job(harness):
    job_id = await harness.app.enqueue("send_invoice", 7)
    await harness.run_until_idle()
    assert await harness.assert_succeeded(job_id) == "invoice for 7"
    await harness.assert_enqueued("send_invoice", args=[7])


async def test_retries_follow_the_clock(harness):
    job_id = await harness.app.enqueue("sync_ledger")
    await harness.run_until_idle()
    ran = await harness.clock.advance(timedelta(minutes=2))  # backoff 60 s, then 120 s
    assert [r.attempt for r in ran] == [2]
    ran = await harness.clock.advance(timedelta(minutes=2))
    assert [(r.attempt, r.outcome) for r in ran] == [(3, "succeeded")]
    assert await harness.assert_succeeded(job_id) == 3


async def test_a_workflow(harness):
    workflow_id = await harness.app.submit(
        chord(group(amount.s(c) for c in (1, 2, 3)), total.s())
    )
    await harness.run_until_idle()
    assert await harness.app.workflow_result(workflow_id, timeout=5) == 60


async def test_a_schedule(harness):
    ran = await harness.clock.advance(timedelta(hours=3))
    assert [r.name for r in ran] == ["cleanup"] * 3
"""

WRONG = """
async def test_expects_the_cleanup_to_succeed(harness):
    ran = await harness.clock.advance(timedelta(hours=1))
    await harness.assert_succeeded(ran[0].job_id)

from datetime import timedelta
"""


@pytest.fixture
def sample(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(billing=APP, conftest=CONFTEST)
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    return pytester


def test_a_users_tests_pass_on_the_memory_store_and_on_postgres(sample: pytest.Pytester) -> None:
    sample.makepyfile(test_billing=TESTS)
    result = sample.runpytest_subprocess("-v")
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(
        ["*test_a_schedule?memory? PASSED*", "*test_a_schedule?postgres? PASSED*"]
    )


def test_a_wrong_assertion_fails_with_a_readable_message(sample: pytest.Pytester) -> None:
    sample.makepyfile(test_wrong=WRONG)
    result = sample.runpytest_subprocess("-k", "memory")
    result.assert_outcomes(failed=1, deselected=1)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: job 'cleanup' (*) is failed, not succeeded*",
            "*PermissionError: the archive is read-only*",
        ]
    )


def test_without_an_app_fixture_the_plugin_says_what_to_define(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\n")
    pytester.makepyfile(test_no_app="async def test_it(asyncjobs_harness):\n    pass\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*define a fixture named asyncjobs_app*"])
