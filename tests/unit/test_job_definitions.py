"""Declaring jobs with ``@app.job``, signatures, and what ``App.enqueue`` refuses."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import asyncjobs
from asyncjobs import (
    App,
    ClosedError,
    InvalidJobOptionError,
    JobContext,
    JobDef,
    JobDefinitionError,
    MemoryStore,
    NotStartedError,
    PayloadEncodeError,
    PayloadTooLargeError,
    Retry,
    Settings,
    Signature,
    UnknownJobError,
)


def memory_app(**overrides: Any) -> tuple[App, MemoryStore]:
    store = MemoryStore()
    return App(settings=Settings(dsn="memory://", **overrides), store=store), store


def compile_function(source: str, name: str) -> Callable[..., Any]:
    """Define a function from source, without this module's ``from __future__`` import."""
    namespace: dict[str, Any] = {"JobContext": JobContext}
    exec(compile(source, f"<{name}>", "exec", dont_inherit=True), namespace)
    return namespace[name]  # type: ignore[no-any-return]


# -- registration --------------------------------------------------------------------------------


def test_plain_function_is_refused_with_the_reason() -> None:
    app, _ = memory_app()

    def resize(path: str) -> None:
        pass

    with pytest.raises(JobDefinitionError) as info:
        app.job(resize)
    message = str(info.value)
    assert info.value.name == "resize"
    assert "'resize'" in message
    assert "block the event loop" in message
    assert "async def" in message
    assert "isolated=True" in message
    assert app.registry == {}


def test_plain_function_is_accepted_as_an_isolated_job() -> None:
    app, _ = memory_app()
    definition = app.job(isolated=True)(_module_level_cpu_job)
    assert definition.isolated and app.registry["_module_level_cpu_job"] is definition


def test_isolated_job_defined_inside_a_function_is_refused_as_the_zygote_cannot_import_it() -> None:
    app, _ = memory_app()

    def nested(x: int) -> int:
        return x

    with pytest.raises(JobDefinitionError) as info:
        app.job(isolated=True)(nested)
    assert "module-level function" in str(info.value) and "zygote" in str(info.value)


def test_isolated_must_be_a_bool() -> None:
    app, _ = memory_app()
    with pytest.raises(JobDefinitionError, match="isolated='yes'"):
        app.job(isolated="yes")(_module_level_cpu_job)  # type: ignore[call-overload]


def _module_level_cpu_job(x: int) -> int:
    return x * x


def test_an_async_function_is_registered_under_its_name_with_defaults() -> None:
    app, _ = memory_app()

    @app.job
    async def send(to: str) -> str:
        return to

    assert isinstance(send, JobDef)
    assert app.registry == {"send": send}
    assert (send.name, send.queue, send.priority, send.max_attempts) == ("send", "default", 0, 1)


def test_declared_options_are_kept() -> None:
    app, _ = memory_app()

    @app.job(name="mail.send", queue="mail", priority=5, timeout=10, retry=Retry(attempts=4))
    async def send() -> None:
        pass

    assert (send.name, send.queue, send.priority, send.timeout) == ("mail.send", "mail", 5, 10)
    assert send.max_attempts == 4


def test_a_duplicate_name_is_refused_naming_both_functions() -> None:
    app, _ = memory_app()

    @app.job(name="send")
    async def send_email() -> None:
        pass

    async def send_sms() -> None:
        pass

    with pytest.raises(JobDefinitionError) as info:
        app.job(name="send")(send_sms)
    message = str(info.value)
    assert "'send'" in message
    assert "send_email" in message
    assert "send_sms" in message
    assert app.registry["send"] is send_email


def test_registering_the_same_function_twice_is_harmless() -> None:
    app, _ = memory_app()

    async def send() -> None:
        pass

    app.job(send)
    assert app.job(send).fn is send


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"queue": "bad queue"}, "queue"),
        ({"queue": ""}, "queue"),
        ({"priority": 40_000}, "priority=40000"),
        ({"priority": -40_000}, "priority=-40000"),
        ({"priority": True}, "priority=True"),
        ({"priority": "high"}, "priority='high'"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": math.nan}, "timeout"),
        ({"soft_timeout": "5"}, "soft_timeout"),
        ({"timeout": 10, "soft_timeout": 10}, "soft_timeout (10 s)"),
        ({"timeout": 10, "soft_timeout": 20}, "soft_timeout (20 s)"),
        ({"retry": 3}, "retry=3"),
        ({"name": ""}, "1 to 200"),
        ({"name": "n" * 201}, "1 to 200"),
    ],
)
def test_bad_declarations_are_refused_with_the_offending_option(
    options: dict[str, Any], fragment: str
) -> None:
    app, _ = memory_app()

    async def job() -> None:
        pass

    with pytest.raises(JobDefinitionError) as info:
        app.job(**options)(job)
    assert fragment in str(info.value)
    assert app.registry == {}


def test_a_soft_timeout_shorter_than_the_timeout_is_accepted() -> None:
    app, _ = memory_app()

    @app.job(timeout=10, soft_timeout=9.5)
    async def job() -> None:
        pass

    assert (job.timeout, job.soft_timeout) == (10, 9.5)


# -- does the job want a JobContext? -------------------------------------------------------------


@pytest.mark.parametrize("future", ["", "from __future__ import annotations\n"])
@pytest.mark.parametrize(
    ("signature", "expected"),
    [
        ("ctx: JobContext, vm: str", True),
        ("ctx: JobContext", True),
        ("ctx: 'JobContext'", True),
        ("vm: str, ctx: JobContext", False),
        ("ctx, vm: str", False),
        ("ctx: int", False),
        ("", False),
    ],
)
def test_a_first_parameter_annotated_job_context_is_detected(
    future: str, signature: str, expected: bool
) -> None:
    fn = compile_function(f"{future}async def job({signature}):\n    pass\n", "job")
    app, _ = memory_app()
    assert app.job(fn).wants_context is expected


def test_a_qualified_string_annotation_is_detected() -> None:
    async def job(ctx: asyncjobs.JobContext) -> None:
        pass

    assert job.__annotations__["ctx"] == "asyncjobs.JobContext"
    app, _ = memory_app()
    assert app.job(job).wants_context is True


def test_this_modules_string_annotations_are_detected() -> None:
    app, _ = memory_app()

    @app.job
    async def with_ctx(ctx: JobContext, n: int) -> None:
        pass

    @app.job
    async def without_ctx(n: int, ctx: JobContext) -> None:
        pass

    assert with_ctx.wants_context is True
    assert without_ctx.wants_context is False


# -- JobDef and Signature ------------------------------------------------------------------------


async def test_a_job_definition_calls_the_function_directly() -> None:
    app, _ = memory_app()

    @app.job
    async def add(a: int, b: int = 0) -> int:
        return a + b

    assert await add(2, b=3) == 5
    assert add.__name__ == "add"


def test_s_builds_a_signature_with_the_arguments() -> None:
    app, _ = memory_app()

    @app.job(queue="math")
    async def add(a: int, b: int = 0) -> int:
        return a + b

    sig = add.s(1, b=2)
    assert sig == Signature("add", (1,), {"b": 2})
    assert not sig.has_options
    assert app.signature("add", 1, b=2) == sig


def test_signature_set_replaces_only_the_given_options() -> None:
    when = datetime(2030, 1, 1, tzinfo=UTC)
    sig = Signature("add", (1,), {}).set(queue="q", priority=3, run_at=when, unique_key="k")
    changed = sig.set(priority=0)
    assert (changed.queue, changed.priority, changed.run_at, changed.unique_key) == (
        "q",
        0,
        when,
        "k",
    )
    assert changed.args == (1,)
    assert sig.priority == 3
    assert changed.has_options


# -- enqueue validation --------------------------------------------------------------------------


def declare_jobs(app: App) -> None:
    @app.job
    async def send(to: str) -> None:
        pass

    @app.job
    async def report(ctx: JobContext) -> None:
        pass


@pytest.fixture
async def started() -> AsyncIterator[tuple[App, MemoryStore]]:
    app, store = memory_app(max_payload_bytes=256)
    declare_jobs(app)
    await app.start(node=False)
    yield app, store
    await app.stop()


async def test_a_valid_enqueue_stores_exactly_one_job(started: tuple[App, MemoryStore]) -> None:
    app, store = started
    job_id = await app.enqueue("send", "a@example.com", delay=60, priority=3, queue="mail")
    assert list(store.jobs) == [job_id]
    record = await app.get(job_id)
    assert (record.state, record.queue, record.priority) == ("scheduled", "mail", 3)
    assert record.args == ["a@example.com"]


async def test_an_unknown_job_is_refused_listing_the_registered_jobs(
    started: tuple[App, MemoryStore],
) -> None:
    app, store = started
    with pytest.raises(UnknownJobError) as info:
        await app.enqueue("sned", "a@example.com")
    assert info.value.name == "sned"
    assert "'sned'" in str(info.value)
    assert "report, send" in str(info.value)
    assert store.jobs == {}


NAIVE = datetime(2030, 1, 1, 12, 0)
AWARE = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("options", "option"),
    [
        ({"priority": 40_000}, "priority"),
        ({"priority": -40_000}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"queue": "no spaces"}, "queue"),
        ({"queue": ""}, "queue"),
        ({"delay": -1}, "delay"),
        ({"delay": timedelta(seconds=-1)}, "delay"),
        ({"delay": math.nan}, "delay"),
        ({"delay": math.inf}, "delay"),
        ({"delay": "5"}, "delay"),
        ({"delay": True}, "delay"),
        ({"run_at": NAIVE}, "run_at"),
        ({"run_at": "2030-01-01T12:00:00Z"}, "run_at"),
        ({"run_at": AWARE, "delay": 5}, "run_at"),
        ({"unique_key": "k" * 513}, "unique_key"),
        ({"unique_key": ""}, "unique_key"),
        ({"unique_key": 5}, "unique_key"),
    ],
)
async def test_a_bad_option_is_refused_naming_it_and_nothing_is_stored(
    started: tuple[App, MemoryStore], options: dict[str, Any], option: str
) -> None:
    app, store = started
    with pytest.raises(InvalidJobOptionError) as info:
        await app.enqueue("send", "a@example.com", **options)
    assert info.value.option == option
    assert info.value.job == "send"
    assert f"{option}=" in str(info.value)
    assert store.jobs == {}


async def test_a_naive_run_at_is_refused_with_a_hint(started: tuple[App, MemoryStore]) -> None:
    app, _ = started
    with pytest.raises(InvalidJobOptionError) as info:
        await app.enqueue("send", "x", run_at=NAIVE)
    assert "time zone" in str(info.value)


async def test_unencodable_arguments_are_refused_and_nothing_is_stored(
    started: tuple[App, MemoryStore],
) -> None:
    app, store = started
    with pytest.raises(PayloadEncodeError) as info:
        await app.enqueue("send", to={"a@example.com"})
    assert info.value.job == "send"
    assert info.value.path == "kwargs['to']"
    assert store.jobs == {}


async def test_arguments_over_the_size_limit_are_refused_and_nothing_is_stored(
    started: tuple[App, MemoryStore],
) -> None:
    app, store = started
    with pytest.raises(PayloadTooLargeError) as info:
        await app.enqueue("send", "x" * 300)
    assert info.value.limit == 256
    assert store.jobs == {}


async def test_enqueue_with_something_that_is_not_a_job_is_a_type_error(
    started: tuple[App, MemoryStore],
) -> None:
    app, store = started
    with pytest.raises(TypeError, match=r"@app\.job"):
        await app.enqueue(print)  # type: ignore[arg-type]
    assert store.jobs == {}


async def test_enqueue_before_start_raises_not_started() -> None:
    app, store = memory_app()
    declare_jobs(app)
    with pytest.raises(NotStartedError):
        await app.enqueue("send", "a@example.com")
    assert store.jobs == {}


async def test_enqueue_after_stop_raises_closed() -> None:
    app, store = memory_app()
    declare_jobs(app)
    await app.start(node=False)
    await app.stop()
    with pytest.raises(ClosedError, match="start it again"):
        await app.enqueue("send", "a@example.com")
    assert store.jobs == {}


async def test_a_stopped_app_can_be_started_again_and_keeps_working() -> None:
    app, store = memory_app()
    declare_jobs(app)
    await app.start(node=False)
    first = await app.enqueue("send", "a@example.com")
    await app.stop()
    await app.start(node=False)
    second = await app.enqueue("send", "b@example.com")
    assert set(store.jobs) == {first, second}
    await app.stop()
