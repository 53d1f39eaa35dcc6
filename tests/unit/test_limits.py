"""Declaring concurrency keys and rate limits: values, and clear errors at declaration."""

from __future__ import annotations

import pytest

from asyncjobs import App, InvalidJobOptionError, JobContext, JobDefinitionError
from asyncjobs.ids import new_id
from asyncjobs.limits import RateLimit, parse_rate
from asyncjobs.prepare import prepare


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("20/s", RateLimit(20, 1.0)),
        ("100/m", RateLimit(100, 60.0)),
        ("100 / min", RateLimit(100, 60.0)),
        ("1000/h", RateLimit(1000, 3600.0)),
        ("5/10s", RateLimit(5, 10.0)),
        ("10000/day", RateLimit(10000, 86400.0)),
    ],
)
def test_rate_strings(spec: str, expected: RateLimit) -> None:
    assert parse_rate(spec) == expected


@pytest.mark.parametrize("spec", ["", "20", "20/", "0/s", "-1/s", "20/w", "x/s", "20/0s"])
def test_malformed_rates_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="count"):
        parse_rate(spec)


def values(app: App, name: str, *args: object, **kwargs: object) -> tuple[object, ...]:
    job = prepare(app.signature(name, *args, **kwargs), app.registry[name], new_id(), 0.0, 1 << 20)
    return job[9:14]  # concurrency_key .. rate_period


def test_keys_are_filled_from_the_arguments_by_name() -> None:
    app = App(dsn="memory://")

    @app.job(concurrency_key="vm:{vm_id}")
    async def provision(ctx: JobContext, vm_id: str, size: str = "small") -> None: ...

    @app.job(concurrency_key="{site}/{array}", concurrency_limit=5)
    async def snapshot(site: str, array: int = 7) -> None: ...

    @app.job(concurrency_limit=2)
    async def report() -> None: ...

    @app.job(rate_limit="100/m", rate_limit_key="api:{tenant}")
    async def call_api(tenant: str) -> None: ...

    @app.job(rate_limit="10/s")
    async def poll() -> None: ...

    assert values(app, "provision", "vm-42") == ("vm:vm-42", 1, None, None, None)
    assert values(app, "provision", vm_id="vm-7", size="l") == ("vm:vm-7", 1, None, None, None)
    assert values(app, "snapshot", "paris") == ("paris/7", 5, None, None, None)
    assert values(app, "report") == ("report", 2, None, None, None)  # the job itself
    assert values(app, "call_api", "acme") == (None, None, "api:acme", 100, 60.0)
    assert values(app, "poll") == (None, None, "poll", 10, 1.0)
    overridden = app.signature("report").set()._replace(concurrency_key="nightly")
    job = prepare(overridden, app.registry["report"], new_id(), 0.0, 1 << 20)
    assert job[9:11] == ("nightly", 2)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"concurrency_limit": 0}, "concurrency_limit=0 must be a whole number from 1"),
        ({"concurrency_limit": True}, "concurrency_limit=True"),
        ({"concurrency_key": "vm:{vm}"}, r"uses \{vm\}, which is not a parameter.*vm_id"),
        ({"concurrency_key": "vm:{"}, "is not a template"),
        ({"concurrency_key": ""}, "not a string of 1 to 512"),
        ({"rate_limit": "fast"}, "rate_limit='fast' is invalid: write it as a count per period"),
        ({"rate_limit_key": "x"}, "rate_limit_key needs a rate_limit"),
    ],
)
def test_bad_declarations_say_what_to_write(options: dict[str, object], match: str) -> None:
    app = App(dsn="memory://")

    async def provision(vm_id: str) -> None: ...

    with pytest.raises(JobDefinitionError, match=match):
        app.job(**options)(provision)  # type: ignore[call-overload]


def test_bad_enqueue_options_are_refused_before_anything_is_written() -> None:
    app = App(dsn="memory://")

    @app.job(concurrency_key="vm:{vm_id}")
    async def provision(vm_id: str) -> None: ...

    sig = app.signature("provision", "vm-1")._replace(concurrency_limit=-3)
    with pytest.raises(InvalidJobOptionError, match="concurrency_limit=-3"):
        prepare(sig, app.registry["provision"], new_id(), 0.0, 1 << 20)
    with pytest.raises(InvalidJobOptionError, match="concurrency_key"):
        prepare(sig._replace(concurrency_limit=None, concurrency_key=""), app.registry["provision"],
                new_id(), 0.0, 1 << 20)  # fmt: skip
    with pytest.raises(InvalidJobOptionError, match="missing a required argument: 'vm_id'"):
        prepare(app.signature("provision"), app.registry["provision"], new_id(), 0.0, 1 << 20)
