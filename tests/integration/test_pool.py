"""Isolated jobs in real forked workers: results, failures, limits, recycling (DESIGN §7, §10).

Every test starts a real zygote and real workers through ``App.start()``; nothing is mocked.
Most run on the MemoryStore (the pool does not care where jobs come from); those that touch the
delivery contract run on both stores.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from asyncjobs import App, JobCancelledError, JobFailedError, JobState, Settings
from asyncjobs.errors import ConfigurationError, PoolError
from asyncjobs.pool.memory import memory_use
from tests import pool_jobs
from tests.helpers import wait_until
from tests.procfs import alive


@asynccontextmanager
async def running(settings: Settings, *, store: Any = None, **options: Any) -> AsyncIterator[App]:
    app = pool_jobs.build_app(settings, store, **options)
    async with app:
        yield app


def pool_of(app: App) -> Any:
    assert app.node is not None and app.node.pool is not None
    return app.node.pool


async def failure(app: App, job_id: Any) -> JobFailedError:
    with pytest.raises(JobFailedError) as info:
        await app.result(job_id, timeout=30)
    return info.value


# -- the basics ---------------------------------------------------------------------------------


async def test_isolated_job_runs_in_a_worker_process_and_returns_its_result(
    any_settings: Settings,
) -> None:
    async with running(any_settings) as app:
        job_id = await app.enqueue("whoami", "hello")
        seen = await app.result(job_id, timeout=30)
        assert seen["pid"] != os.getpid()
        assert seen["ppid"] == pool_of(app).zygote_pid
        assert seen["sid"] == seen["pid"] == seen["pgid"]  # its own session and process group
        assert seen["id"] == str(job_id) and seen["attempt"] == 1 and seen["tag"] == "hello"
        assert await app.result(await app.enqueue("echo", {"a": [1, 2.5, None]})) == {
            "a": [1, 2.5, None]
        }
        assert await app.result(await app.enqueue("async_double", 21), timeout=30) == 42


async def test_an_exception_in_an_isolated_job_fails_it_with_type_message_and_traceback(
    memory_settings: Settings,
) -> None:
    async with running(memory_settings) as app:
        error = await failure(app, await app.enqueue("fail", "disk full"))
        assert error.error_type == "tests.pool_jobs.Boom"
        assert error.error_message == "disk full"
        assert "raise Boom(message)" in error.traceback
        assert await app.result(await app.enqueue("echo", 1), timeout=30) == 1


async def test_the_worker_environment_holds_only_allowlisted_keys(
    memory_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_PASSWORD", "hunter2")
    monkeypatch.setenv("POOL_TEST_PASSED", "yes")
    monkeypatch.setenv("ASYNCJOBS_TEST_SECRET", "postgresql://u:secret@db/x")
    settings = memory_settings.replace(worker_env=("POOL_TEST_PASSED",))
    async with running(settings) as app:
        seen = await app.result(await app.enqueue("whoami", "env"), timeout=30)
    allowed = {"PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONHASHSEED",
               "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "PYTHONDONTWRITEBYTECODE", "POOL_TEST_PASSED"}  # fmt: skip
    assert set(seen["env"]) <= allowed, set(seen["env"]) - allowed
    assert "POOL_TEST_PASSED" in seen["env"] and "OPENBLAS_NUM_THREADS" in seen["env"]


async def test_the_zygote_gets_no_secrets_either(memory_settings: Settings) -> None:
    os.environ["ASYNCJOBS_TEST_DSN_LEAK"] = "postgresql://u:secret@db/x"
    try:
        async with running(memory_settings) as app:
            zygote = pool_of(app).zygote_pid
            environ = Path(f"/proc/{zygote}/environ").read_bytes()  # noqa: ASYNC240 - /proc
    finally:
        del os.environ["ASYNCJOBS_TEST_DSN_LEAK"]
    assert b"ASYNCJOBS" not in environ and b"secret" not in environ


# -- crashes, time limits and cancel (DESIGN §10) --------------------------------------------


async def test_after_isolated_job_hooks_run_after_every_job_before_its_outcome(
    memory_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "teardowns"
    monkeypatch.setenv(pool_jobs.TEARDOWN_ENV, str(log))
    settings = memory_settings.replace(
        workers_min=1, workers_max=1, worker_env=(pool_jobs.TEARDOWN_ENV,)
    )
    async with running(settings, teardown=pool_jobs.log_teardown) as app:
        zygote_line = log.read_text().splitlines()  # once in the zygote, before any fork
        pid = (await app.result(await app.enqueue("whoami", "a"), timeout=30))["pid"]
        assert log.read_text().splitlines() == [*zygote_line, str(pid)]  # before the outcome
        await failure(app, await app.enqueue("fail", "boom"))  # whatever the outcome
        assert await app.result(await app.enqueue("echo", 1), timeout=30) == 1
    lines = log.read_text().splitlines()
    assert len(zygote_line) == 1 and zygote_line[0] != str(pid)
    assert lines == [zygote_line[0], str(pid), str(pid), str(pid)]


async def test_a_teardown_hook_that_raises_keeps_the_outcome_and_replaces_the_worker(
    memory_settings: Settings,
) -> None:
    settings = memory_settings.replace(workers_min=1, workers_max=1)
    async with running(settings, teardown=pool_jobs.failing_teardown) as app:
        first = await app.result(await app.enqueue("whoami", "a"), timeout=30)
        second = await app.result(await app.enqueue("whoami", "b"), timeout=30)
    assert (first["tag"], second["tag"]) == ("a", "b")
    assert first["pid"] != second["pid"]  # its state unknown, the first worker retired


def test_an_after_isolated_job_hook_must_be_a_module_level_function() -> None:
    app = App(dsn="memory://")
    with pytest.raises(ConfigurationError, match="after isolated job hook is a module-level"):
        app.after_isolated_job(lambda: None)


async def test_a_crashed_worker_fails_only_its_job_and_is_replaced(any_settings: Settings) -> None:
    async with running(any_settings) as app:
        pool = pool_of(app)
        victim = await app.enqueue("nap", 30)
        bystander = await app.enqueue("nap", 0.5)
        worker_pids = await wait_until(
            lambda: set(pool.workers) if len(pool.workers) >= 2 else None
        )
        await wait_until(lambda: all(w.busy for w in pool.workers.values()), what="both busy")
        record = await app.get(victim)
        assert record.state is JobState.RUNNING
        # Which worker runs the victim: the one still busy after the bystander is done.
        assert await app.result(bystander, timeout=30) == 0.5
        busy = [pid for pid, w in pool.workers.items() if w.busy]
        assert len(busy) == 1
        os.kill(busy[0], signal.SIGKILL)
        error = await failure(app, victim)
        assert error.error_type == "asyncjobs.errors.WorkerCrashedError"
        assert "killed by SIGKILL" in error.error_message
        assert await app.result(await app.enqueue("echo", "still here"), timeout=30) == "still here"
        assert busy[0] not in pool.workers and worker_pids - {busy[0]} <= set(pool.workers)


async def test_a_crashed_worker_requeues_a_retryable_job(any_settings: Settings) -> None:
    async with running(any_settings) as app:
        job_id = await app.enqueue("crash_on_first_attempt")
        assert await app.result(job_id, timeout=30) == 2
        record = await app.get(job_id)
        assert record.attempt == 2 and record.state is JobState.SUCCEEDED


async def test_soft_limit_raises_inside_the_job_which_can_clean_up(
    memory_settings: Settings, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    options = {"clean_up_at_soft_limit": {"soft_timeout": 0.3, "timeout": 20}}
    async with running(memory_settings, **options) as app:
        error = await failure(app, await app.enqueue("clean_up_at_soft_limit", str(marker)))
    assert error.error_type == "asyncjobs.errors.JobTimeoutError"
    assert "soft time limit" in error.error_message
    assert marker.read_text() == "cleaned up"


async def test_a_job_that_ignores_the_soft_limit_dies_at_the_hard_limit(
    memory_settings: Settings, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    options = {"ignore_soft_limit": {"soft_timeout": 0.3, "timeout": 1.5}}
    async with running(memory_settings, **options) as app:
        pool = pool_of(app)
        job_id = await app.enqueue("ignore_soft_limit", str(marker))
        worker = await wait_until(lambda: next((w for w in pool.workers.values() if w.busy), None))
        started = time.monotonic()
        error = await failure(app, job_id)
        elapsed = time.monotonic() - started
        assert (
            marker.read_text() == "ignored SoftTimeLimitExceeded"
        )  # it saw the soft limit, and went on
        assert "hard time limit of 1.5 s" in error.error_message
        assert 1.0 < elapsed < 10, elapsed  # not at the soft limit plus the cancel grace
        await wait_until(lambda: not alive(worker.pid), what="the killed worker to be gone")
        assert await app.result(await app.enqueue("echo", 1), timeout=30) == 1


async def test_cancel_of_a_running_pool_job_ends_it_cancelled_within_2_s(
    any_settings: Settings,
) -> None:
    async with running(any_settings) as app:
        pool = pool_of(app)
        job_id = await app.enqueue("nap", 60)
        await wait_until(lambda: any(w.busy for w in pool.workers.values()), timeout=30)
        await wait_until(lambda: app.get(job_id), what="the job to be stored")
        requested = time.monotonic()
        assert await app.cancel(job_id) is JobState.RUNNING
        with pytest.raises(JobCancelledError):
            await app.result(job_id, timeout=10)
        assert time.monotonic() - requested < 2.0


async def test_cancel_of_a_job_that_ignores_the_signal_kills_its_worker_after_the_grace(
    memory_settings: Settings, tmp_path: Path
) -> None:
    settings = memory_settings.replace(cancel_grace_s=0.5)
    async with running(settings) as app:
        pool = pool_of(app)
        job_id = await app.enqueue("ignore_soft_limit", str(tmp_path / "m"))
        worker = await wait_until(lambda: next((w for w in pool.workers.values() if w.busy), None))
        await app.cancel(job_id)
        with pytest.raises(JobCancelledError):
            await app.result(job_id, timeout=10)
        await wait_until(lambda: not alive(worker.pid), what="the stubborn worker to be killed")
    assert (tmp_path / "m").read_text() == "ignored CancelRequested"


# -- recycling and sizing ---------------------------------------------------------------------


async def test_workers_are_recycled_after_max_jobs_per_worker(memory_settings: Settings) -> None:
    settings = memory_settings.replace(max_jobs_per_worker=3, workers_min=1, workers_max=1)
    async with running(settings) as app:
        pids = [
            (await app.result(await app.enqueue("whoami", str(i)), timeout=30))["pid"]
            for i in range(12)
        ]
    assert len(set(pids)) >= 3  # 3 jobs per worker, +/-10% jitter rounds to 3
    assert all(pids.count(pid) <= 4 for pid in set(pids))


async def test_a_worker_over_its_uss_limit_is_retired_after_its_job(
    memory_settings: Settings,
) -> None:
    settings = memory_settings.replace(max_worker_uss_bytes=32 * 1024**2, workers_max=1)
    async with running(settings) as app:
        first = await app.result(await app.enqueue("hold_memory", 64), timeout=30)
        await wait_until(lambda: not alive(first), what="the bloated worker to exit")
        second = await app.result(await app.enqueue("whoami", "next"), timeout=30)
        assert second["pid"] != first


async def test_a_job_that_leaves_a_child_running_retires_its_worker_and_the_child_dies(
    memory_settings: Settings,
) -> None:
    async with running(memory_settings) as app:
        child = await app.result(await app.enqueue("spawn_child"), timeout=30)
        await wait_until(lambda: not alive(child), what="the job's leftover child to be killed")


async def test_the_pool_never_runs_more_workers_than_workers_max(memory_settings: Settings) -> None:
    settings = memory_settings.replace(workers_min=0, workers_max=2)
    async with running(settings) as app:
        pool = pool_of(app)
        ids = await app.enqueue_many([app.signature("nap", 0.2) for _ in range(6)])
        peak = 0

        async def all_done() -> bool:
            nonlocal peak
            peak = max(peak, len(pool.workers))
            return all([(await app.get(i)).state.is_terminal for i in ids])

        await wait_until(all_done, timeout=30, interval=0.005)
        assert 1 <= peak <= 2
        for i in ids:
            assert await app.result(i, timeout=30) == 0.2


async def test_idle_workers_above_the_minimum_are_pruned(memory_settings: Settings) -> None:
    settings = memory_settings.replace(workers_min=1, workers_max=3, worker_idle_timeout_s=0.3)
    async with running(settings) as app:
        pool = pool_of(app)
        ids = await app.enqueue_many([app.signature("nap", 0.3) for _ in range(3)])
        for i in ids:
            await app.result(i, timeout=30)
        await wait_until(lambda: len(pool.workers) == 1, what="idle workers to be pruned")


async def test_the_zygote_is_restarted_after_it_dies_and_jobs_run_again(
    memory_settings: Settings,
) -> None:
    async with running(memory_settings) as app:
        pool = pool_of(app)
        old_zygote = pool.zygote_pid
        old_workers = set(pool.workers)
        running_job = await app.enqueue("nap", 30)
        await wait_until(lambda: any(w.busy for w in pool.workers.values()))
        os.kill(old_zygote, signal.SIGKILL)
        error = await failure(app, running_job)
        assert error.error_type == "asyncjobs.errors.WorkerCrashedError"
        for pid in old_workers:
            await wait_until(lambda pid=pid: not alive(pid), what=f"worker {pid} to die")
        assert await app.result(await app.enqueue("echo", "again"), timeout=30) == "again"
        assert pool.zygote_pid not in (None, old_zygote)


# -- start-up errors ------------------------------------------------------------------------


async def test_a_failing_preload_hook_stops_the_app_from_starting_with_its_error(
    memory_settings: Settings,
) -> None:
    app = pool_jobs.build_app(memory_settings, preload=pool_jobs.broken_preload)
    with pytest.raises(PoolError, match="the model file is missing"):
        await app.start()


async def test_nothing_outlives_a_stopped_app(memory_settings: Settings) -> None:
    async with running(memory_settings.replace(workers_min=2)) as app:
        pool = pool_of(app)
        pids = [pool.zygote_pid, *pool.workers]
    for pid in pids:
        await wait_until(lambda pid=pid: not alive(pid), timeout=3, what=f"process {pid} to exit")


# -- shared memory --------------------------------------------------------------------------

PRELOAD_MB = 200


async def test_four_workers_share_a_200_mb_preload_instead_of_copying_it(
    memory_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(pool_jobs.PRELOAD_ENV, str(PRELOAD_MB))
    settings = memory_settings.replace(
        workers_min=4, workers_max=4, worker_env=(pool_jobs.PRELOAD_ENV,), max_worker_uss_bytes=0
    )
    preload = PRELOAD_MB * 1024 * 1024
    async with running(settings, preload=pool_jobs.preload_buffer) as app:
        pool = pool_of(app)
        workers = list(pool.workers.values())
        assert len(workers) == 4
        # Each worker reads all of it: hold all four so each job lands on a different one.
        taken = [await pool.acquire() for _ in range(4)]
        for worker in taken:
            header = {"op": "run", "id": "00000000-0000-0000-0000-000000000000",
                      "name": "read_preloaded", "attempt": 1}  # fmt: skip
            reply, body = await pool.call(worker, header, b"[[],{}]")
            assert reply["op"] == "ok", reply
            assert body.startswith(b'{"bytes":%d,"sevens":%d' % (preload, preload))
        uss = {w.pid: memory_use(w.pid) for w in taken}
        zygote = memory_use(pool.zygote_pid)
        for worker in taken:
            pool.release(worker)
    assert zygote is not None and all(u is not None for u in uss.values())
    for pid, use in uss.items():
        assert use is not None
        assert use.uss < 0.02 * preload + 16 * 1024**2, (pid, use)
    total_pss = zygote.pss + sum(u.pss for u in uss.values() if u is not None)
    assert total_pss < 1.3 * preload, (total_pss, zygote, uss)
