"""Every Celery option without a counterpart raises its sentence (never ignored), options
that map are mapped, and the retry delays and states follow Celery's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from asyncjobs import IsolationError, JobRecord, JobState, MemoryStore
from asyncjobs.celery_compat import Celery, CeleryOptionError, crontab, group
from asyncjobs.celery_compat.options import APP_OPTIONS, CALL_OPTIONS, TASK_OPTIONS
from asyncjobs.celery_compat.results import celery_state
from asyncjobs.ids import new_id
from asyncjobs.pool import worker as pool_worker


def new_app() -> Celery:
    return Celery("proj", store=MemoryStore())


def declare(app: Celery, **options: Any) -> Any:
    async def add(x: int, y: int) -> int:
        return x + y

    add.__qualname__ = "add"  # module level, as far as the checks go
    return app.task(name="proj.add", **options)(add)


@pytest.mark.parametrize("option", sorted(TASK_OPTIONS))
def test_each_task_option_without_counterpart_raises_its_sentence(option: str) -> None:
    app = new_app()
    with pytest.raises(CeleryOptionError) as raised:
        declare(app, **{option: True})
    message = str(raised.value)
    assert f"{option}=" in message and TASK_OPTIONS[option] in message
    assert "migrating-from-celery" in message
    assert "proj.add" not in app.registry  # nothing half-declared


@pytest.mark.parametrize("option", sorted(CALL_OPTIONS))
def test_each_call_option_without_counterpart_raises_before_anything_is_sent(
    option: str,
) -> None:
    task = declare(new_app())
    with pytest.raises(CeleryOptionError, match=f"{option}="):
        task.apply_async((1, 2), **{option: "x"})  # the app is not even started
    with pytest.raises(CeleryOptionError, match=f"{option}="):
        task.s(1, 2).set(**{option: "x"})


@pytest.mark.parametrize("option", sorted(APP_OPTIONS))
def test_each_app_option_without_counterpart_raises_in_the_constructor_and_in_conf(
    option: str,
) -> None:
    with pytest.raises(CeleryOptionError) as raised:
        Celery("proj", store=MemoryStore(), **{option: "x"})
    assert APP_OPTIONS[option] in str(raised.value)
    with pytest.raises(CeleryOptionError, match=f"{option}="):
        setattr(new_app().conf, option, "x")


def test_json_serializer_settings_are_accepted_and_others_refused() -> None:
    app = new_app()
    app.conf.update(task_serializer="json", accept_content=["json"], enable_utc=True)
    with pytest.raises(CeleryOptionError, match="always JSON"):
        app.conf.task_serializer = "pickle"
    with pytest.raises(CeleryOptionError, match="UTC"):
        app.conf.enable_utc = False


def test_conf_maps_concurrency_queue_and_result_expiry() -> None:
    app = new_app()
    app.conf.update(worker_concurrency=7, result_expires=timedelta(hours=2))
    app.conf.task_default_queue = "jobs"
    assert (app.settings.concurrency, app.settings.retention_s) == (7, 7200.0)
    assert declare(app).queue == "jobs"


def test_unknown_options_are_refused_naming_the_ones_that_map() -> None:
    with pytest.raises(CeleryOptionError, match="retry_backoff") as raised:
        declare(new_app(), retry_bakoff=True)
    assert "retry_bakoff=" in str(raised.value)
    with pytest.raises(CeleryOptionError, match="countdown"):
        declare(new_app()).apply_async((1, 2), count_down=5)
    with pytest.raises(CeleryOptionError, match="unknown_setting="):
        new_app().conf.unknown_setting = 1


def test_retry_delays_follow_celery() -> None:
    fixed = declare(new_app(), default_retry_delay=7)
    assert [fixed.auto_delay(n) for n in range(3)] == [7, 7, 7]
    backoff = declare(new_app(), retry_backoff=True, retry_jitter=False, retry_backoff_max=10)
    assert [backoff.auto_delay(n) for n in range(6)] == [1, 2, 4, 8, 10, 10]
    scaled = declare(new_app(), retry_backoff=3, retry_jitter=False)
    assert scaled.auto_delay(2) == 12
    jittered = declare(new_app(), retry_backoff=True, retry_backoff_max=600)
    assert all(0 <= jittered.auto_delay(4) <= 16 for _ in range(200))
    forever = declare(new_app(), max_retries=None)
    assert forever.job.max_attempts == 10_000


def test_retry_outside_a_running_task_is_a_sentence() -> None:
    task = declare(new_app(), bind=True)
    with pytest.raises(Exception, match="only while the task runs"):
        task.retry()
    with pytest.raises(CeleryOptionError, match="args="):
        task.retry(args=(1, 2))


def test_states_are_celery_s_names() -> None:
    def record(state: JobState, attempt: int = 1, error: Any = None) -> JobRecord:
        now = datetime.now(UTC)
        return JobRecord(
            id=new_id(), name="n", queue="q", priority=0, state=state, args=[], kwargs={},
            attempt=attempt, max_attempts=3, run_at=now, created_at=now, error=error,
        )  # fmt: skip

    assert celery_state(None) == "PENDING"
    assert celery_state(record(JobState.QUEUED, attempt=0)) == "PENDING"
    assert celery_state(record(JobState.RUNNING)) == "STARTED"
    assert celery_state(record(JobState.SCHEDULED, error={"message": "x"})) == "RETRY"
    assert celery_state(record(JobState.SUCCEEDED)) == "SUCCESS"
    assert celery_state(record(JobState.LOST)) == "FAILURE"
    assert celery_state(record(JobState.CANCELLED)) == "REVOKED"


def test_beat_entries_that_do_not_map_are_refused() -> None:
    app = new_app()
    declare(app)
    assert crontab(minute="*/5", day_of_week="mon-fri").expression == "*/5 * * * mon-fri"
    bad: list[tuple[dict[str, Any], str]] = [
        ({"task": "proj.add", "schedule": "daily"}, "neither a crontab"),
        ({"task": "proj.add", "schedule": 5, "relative": True}, "relative="),
        ({"task": "proj.add", "schedule": 5, "options": {"expires": 3}}, "expires="),
        ({"task": "proj.add", "schedule": 5, "every": 3}, "every="),
        ({"task": 42, "schedule": 5}, "task="),
    ]
    for entry, message in bad:
        with pytest.raises(CeleryOptionError, match=message):
            app.conf.beat_schedule = {"e": entry}
    assert not app.schedules


def test_a_blocking_call_in_a_pool_worker_is_an_isolation_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    task = declare(new_app())
    monkeypatch.setattr(pool_worker, "IN_WORKER", True)
    with pytest.raises(IsolationError, match="pool worker"):
        task.delay(1, 2)


def test_an_empty_group_is_a_sentence() -> None:
    with pytest.raises(ValueError, match="at least one"):
        group([])


# -- app.conf as Celery reads it: late settings, replaced schedules, item access -----------------


def beat_entry(task: Any, schedule: Any) -> dict[str, Any]:
    return {"task": task.name, "schedule": schedule, "args": [1, 2]}


def test_assigning_beat_schedule_again_replaces_what_it_declared() -> None:
    app = new_app()
    add = declare(app)
    app.conf.beat_schedule = {"a": beat_entry(add, 5), "b": beat_entry(add, 6)}
    app.conf.beat_schedule = {"b": beat_entry(add, 7)}
    assert sorted(app.schedules) == ["b"] and app.schedules["b"].every_s == 7
    app.conf.beat_schedule["c"] = beat_entry(add, crontab(minute=0))
    assert sorted(app.schedules) == ["b", "c"]
    del app.conf.beat_schedule["b"]
    assert sorted(app.schedules) == ["c"] and list(app.conf.beat_schedule) == ["c"]


def test_a_timezone_set_after_the_beat_schedule_applies_to_its_crontabs() -> None:
    app = new_app()
    add = declare(app)
    app.conf.beat_schedule = {"nightly": beat_entry(add, crontab(hour=3, minute=0))}
    app.conf.timezone = "Europe/Paris"
    assert app.schedules["nightly"].tz == "Europe/Paris"


def test_a_default_queue_set_after_tasks_use_the_old_one_is_refused() -> None:
    app = new_app()
    app.conf.task_default_queue = "early"
    add = declare(app)
    assert add.queue == "early"
    with pytest.raises(CeleryOptionError, match="set it before the tasks are declared"):
        app.conf.task_default_queue = "late"


def test_conf_takes_items_and_config_from_object_reads_a_namespace() -> None:
    app = new_app()
    app.conf["worker_concurrency"] = 7
    assert app.settings.concurrency == 7 and app.conf["worker_concurrency"] == 7

    class Settings:
        CELERY_RESULT_EXPIRES = 60
        CELERY_TIMEZONE = "Europe/Paris"
        DEBUG = True  # not in the namespace: not read

    app.config_from_object(Settings, namespace="CELERY")
    assert app.settings.retention_s == 60.0 and app.timezone == "Europe/Paris"

    class WithBroker:
        CELERY_BROKER_URL = "redis://localhost"

    with pytest.raises(CeleryOptionError, match="ASYNCJOBS_DSN"):
        app.config_from_object(WithBroker, namespace="CELERY")

    class Module:  # a config module without a namespace: its imports are not settings
        import os

        worker_concurrency = 9

    app.config_from_object(Module)
    assert app.settings.concurrency == 9


def test_autodiscover_tasks_imports_each_packages_tasks_module() -> None:
    app = new_app()
    app.autodiscover_tasks(["tests", "asyncjobs"], related_name="celery_tasks", force=True)
    import sys

    assert "tests.celery_tasks" in sys.modules  # tests has one; asyncjobs has none: skipped


def test_a_handles_id_is_a_string_as_celerys_is() -> None:
    app = new_app()
    job_id = new_id()
    result = app.AsyncResult(job_id)
    assert result.id == str(job_id) and result.job_id == job_id
    assert result == app.AsyncResult(str(job_id))
