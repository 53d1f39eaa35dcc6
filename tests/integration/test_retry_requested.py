"""``RetryRequested``: a job asks to run again, after a delay of its choosing (what Celery's
``self.retry(countdown=...)`` does), on both stores, as a coroutine and in the pool."""

from __future__ import annotations

from datetime import timedelta

import pytest

from asyncjobs import JobContext, JobState, Retry, RetryRequested, Settings
from asyncjobs.testing import Harness
from tests import pool_jobs


class Other(Exception):
    pass


async def test_a_requested_retry_waits_its_own_delay_whatever_exceptions_the_policy_names(
    any_settings: Settings,
) -> None:
    app = pool_jobs.build_app(any_settings)

    @app.job(retry=Retry(attempts=3, backoff=1.0, jitter=0.0, on=(Other,)))
    async def polls(ctx: JobContext) -> int:
        if ctx.attempt < 3:
            raise RetryRequested(600, ConnectionError("not ready"))
        return ctx.attempt

    @app.job()
    async def never_retried() -> None:
        raise RetryRequested(5)

    async with Harness(app) as h:
        job = await h.app.enqueue(polls)
        isolated = await h.app.enqueue("retry_later", 300)
        once = await h.app.enqueue(never_retried)
        await h.run_until_idle()
        assert (await h.app.get(job)).state is JobState.SCHEDULED
        await h.clock.advance(timedelta(seconds=299))  # the policy's 1 s backoff is not used
        assert (await h.app.get(job)).attempt == 1
        assert (await h.app.get(isolated)).state is JobState.SCHEDULED
        await h.clock.advance(timedelta(seconds=1))
        assert await h.assert_succeeded(isolated) == 2  # asked for 300 s, ran at 300 s
        await h.clock.advance(timedelta(seconds=300))
        assert (await h.app.get(job)).attempt == 2
        await h.clock.advance(timedelta(seconds=600))
        assert await h.assert_succeeded(job) == 3
        record = await h.app.get(once)
    assert record.state is JobState.FAILED  # no retry policy: one attempt
    assert record.error is not None
    assert record.error["message"] == "retry requested in 5 s (the job asked)"


def test_a_requested_retry_with_a_bad_delay_is_a_sentence() -> None:
    with pytest.raises(ValueError, match="use zero or more seconds"):
        RetryRequested(-1)
    assert RetryRequested().delay is None
