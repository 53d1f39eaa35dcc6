"""Settings: defaults, validation messages, environment loading, replace() and DSN masking."""

from __future__ import annotations

import math
from typing import Any

import pytest

from asyncjobs import ConfigurationError, Settings
from asyncjobs.settings import mask_dsn

PG = "postgresql://app@db.example:5432/jobs"


def reject(field: str, **kwargs: Any) -> ConfigurationError:
    """Build Settings(**kwargs), expect a ConfigurationError about ``field``, and return it."""
    with pytest.raises(ConfigurationError) as info:
        Settings(**kwargs)
    assert info.value.field == field, str(info.value)
    assert field in str(info.value)
    return info.value


# -- defaults ------------------------------------------------------------------------------------


def test_defaults_validate_and_have_no_dsn() -> None:
    settings = Settings()
    settings.validate()
    assert settings.dsn is None
    assert settings.queues == (("default", None),)
    assert settings.node_timeout_s >= 2 * settings.heartbeat_interval_s


def test_memory_dsn_is_accepted() -> None:
    assert Settings(dsn="memory://").dsn == "memory://"


@pytest.mark.parametrize(
    "dsn",
    [PG, "postgres://u:pw@localhost/db", "postgresql://h/db", "postgresql:///db?host=/run/pg"],
)
def test_postgres_dsns_are_accepted(dsn: str) -> None:
    assert Settings(dsn=dsn).dsn == dsn


# -- numbers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, -1, 10**9, True, "x", 2.5])
def test_invalid_concurrency_is_refused_with_field_and_value(value: Any) -> None:
    error = reject("concurrency", concurrency=value)
    assert error.value == value
    assert repr(value) in str(error)


@pytest.mark.parametrize(
    "field", ["poll_interval_s", "heartbeat_interval_s", "cancel_grace_s", "connect_timeout_s"]
)
@pytest.mark.parametrize("value", [-1.0, 0.0, math.nan, math.inf, 366 * 86400.0, "5", False])
def test_invalid_seconds_are_refused_with_field_and_value(field: str, value: Any) -> None:
    error = reject(field, **{field: value})
    assert error.value is value
    assert f"{field}={value!r}" in str(error)


def test_shutdown_grace_may_be_zero_but_not_negative() -> None:
    assert Settings(shutdown_grace_s=0).shutdown_grace_s == 0
    reject("shutdown_grace_s", shutdown_grace_s=-0.5)


def test_a_duration_longer_than_a_year_is_called_a_typo() -> None:
    error = reject("node_timeout_s", node_timeout_s=400 * 86400.0)
    assert "year" in error.why


def test_node_timeout_shorter_than_two_heartbeats_is_refused() -> None:
    error = reject("node_timeout_s", heartbeat_interval_s=5.0, node_timeout_s=9.0)
    assert error.value == 9.0
    assert "heartbeat_interval_s" in str(error)
    assert Settings(heartbeat_interval_s=5.0, node_timeout_s=10.0).node_timeout_s == 10.0


def test_pool_min_size_above_max_is_refused() -> None:
    reject("pool_min_size", pool_min_size=20, pool_max_size=10)


# -- SQL names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["schema", "table_prefix"])
@pytest.mark.parametrize(
    "value",
    ["Public", "1jobs", "a" * 41, "", "x; drop", 'x"; DROP TABLE jobs; --', "a-b", "a.b", 5],
)
def test_bad_sql_names_are_refused_with_field_and_value(field: str, value: Any) -> None:
    error = reject(field, **{field: value})
    assert error.value == value
    assert repr(value) in str(error)


@pytest.mark.parametrize("field", ["schema", "table_prefix"])
def test_sql_names_with_a_trailing_newline_are_refused(field: str) -> None:
    # `$` in a regular expression also matches before a final newline.
    reject(field, **{field: "jobs\n"})


def test_schema_and_prefix_too_long_for_the_notify_channel_are_refused() -> None:
    error = reject("table_prefix", schema="s" * 40, table_prefix="p" * 20)
    assert "63" in str(error)
    assert "NOTIFY" in str(error)
    assert Settings(schema="s" * 36, table_prefix="p" * 20).schema == "s" * 36


# -- queues --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["has space", "", "q" * 65, "é", "a/b", "default\n"])
def test_bad_queue_names_are_refused_with_the_name(name: str) -> None:
    error = reject("queues", queues=((name, None),))
    assert error.value == name
    assert repr(name) in str(error)


def test_a_queue_listed_twice_is_refused() -> None:
    error = reject("queues", queues="reports,default,reports")
    assert error.value == "reports"
    assert "twice" in str(error)


@pytest.mark.parametrize("limit", [0, -3, True])
def test_a_queue_limit_below_one_is_refused(limit: Any) -> None:
    error = reject("queues['a']", queues={"a": limit})
    assert error.value == limit


def test_a_queue_limit_that_is_not_a_number_is_refused() -> None:
    error = reject("queues", queues="a,b=many")
    assert "'many'" in str(error)


def test_an_empty_queue_list_is_refused() -> None:
    reject("queues", queues="")


@pytest.mark.parametrize("spec", ["a,b=5", {"a": None, "b": 5}, ["a", ("b", 5)], " a , b = 5 "])
def test_queue_specs_normalise_to_the_tuple_form(spec: Any) -> None:
    assert Settings(queues=spec).queues == (("a", None), ("b", 5))
    assert Settings(queues=spec).queue_names == ("a", "b")


# -- DSNs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "why"),
    [
        ("mysql://h/db", "postgresql://"),
        ("localhost:5432", "postgresql://"),
        ("postgresql://h:abc/db", "cannot be parsed"),
        ("postgresql://h:99999/db", "cannot be parsed"),
        ("postgresql:///db", "no host"),
        ("postgresql://", "no host"),
    ],
)
def test_malformed_dsns_are_refused_with_the_reason(dsn: str, why: str) -> None:
    error = reject("dsn", dsn=dsn)
    assert error.value == dsn
    assert repr(dsn) in str(error)
    assert why in error.why


def test_a_refused_dsn_does_not_show_its_password() -> None:
    error = reject("dsn", dsn="mysql://u:hunter2@h/db")
    assert "hunter2" not in str(error)
    assert "***" in str(error)


def test_an_unparseable_port_does_not_show_the_password() -> None:
    error = reject("dsn", dsn="postgresql://u:hunter2@h:abc/db")
    assert "hunter2" not in str(error)


def test_mask_dsn_hides_the_password_and_keeps_the_rest() -> None:
    assert mask_dsn("postgresql://u:s3cr:t@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_dsn(PG) == PG


def test_mask_dsn_hides_a_password_given_as_a_query_parameter() -> None:
    masked = mask_dsn("postgresql://u@h/db?sslmode=require&password=hunter2")
    assert "hunter2" not in masked
    assert "sslmode=require" in masked


def test_describe_masks_the_password() -> None:
    described = Settings(dsn="postgresql://u:hunter2@h/db").describe()
    assert described["dsn"] == "postgresql://u:***@h/db"
    assert "extra" not in described


# -- the environment -----------------------------------------------------------------------------


def test_from_env_reads_and_coerces_every_kind_of_value() -> None:
    settings = Settings.from_env(
        {
            "ASYNCJOBS_DSN": PG,
            "ASYNCJOBS_CONCURRENCY": "50",
            "ASYNCJOBS_POLL_INTERVAL_S": "0.25",
            "ASYNCJOBS_MIGRATE_ON_START": "0",
            "ASYNCJOBS_QUEUES": "a,b=5",
            "PATH": "/usr/bin",
        }
    )
    assert settings.dsn == PG
    assert settings.concurrency == 50
    assert settings.poll_interval_s == 0.25
    assert settings.migrate_on_start is False
    assert settings.queues == (("a", None), ("b", 5))


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("TRUE", True), ("1", True), ("yes", True), ("0", False), ("off", False)],
)
def test_from_env_reads_booleans(raw: str, expected: bool) -> None:
    settings = Settings.from_env({"ASYNCJOBS_MIGRATE_ON_START": raw})
    assert settings.migrate_on_start is expected


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("ASYNCJOBS_CONCURRENCY", "lots"),
        ("ASYNCJOBS_CONCURRENCY", "1.5"),
        ("ASYNCJOBS_NODE_TIMEOUT_S", "soon"),
        ("ASYNCJOBS_MIGRATE_ON_START", "maybe"),
    ],
)
def test_from_env_refuses_values_of_the_wrong_type(key: str, raw: str) -> None:
    field = key.removeprefix("ASYNCJOBS_").lower()
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({key: raw})
    assert info.value.field == field
    assert repr(raw) in str(info.value)


@pytest.mark.parametrize("key", ["ASYNCJOBS_FOO", "ASYNCJOBS_CONCURENCY", "ASYNCJOBS_EXTRA"])
def test_from_env_refuses_an_unknown_variable_and_lists_known_settings(key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({key: "1"})
    message = str(info.value)
    assert key in message
    assert "Known settings" in message
    assert "concurrency" in message
    assert "heartbeat_interval_s" in message


def test_from_env_ignores_the_variables_that_are_not_settings() -> None:
    settings = Settings.from_env(
        {
            "ASYNCJOBS_TEST_DSN": "not a dsn",
            "ASYNCJOBS_APP": "mymodule:app",
            "ASYNCJOBS_LOG_LEVEL": "debug",
        }
    )
    assert settings == Settings()


def test_code_overrides_beat_the_environment() -> None:
    env = {"ASYNCJOBS_CONCURRENCY": "50", "ASYNCJOBS_QUEUES": "a"}
    settings = Settings.from_env(env, concurrency=7, queues="b=2")
    assert settings.concurrency == 7
    assert settings.queues == (("b", 2),)


def test_from_env_refuses_an_unknown_override() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({}, concurency=5)
    assert "concurency" in str(info.value)


def test_from_env_validates_the_result() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"ASYNCJOBS_CONCURRENCY": "0"})
    assert info.value.field == "concurrency"


def test_from_env_reads_the_process_environment_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASYNCJOBS_CLAIM_BATCH_SIZE", "42")
    assert Settings.from_env().claim_batch_size == 42


# -- replace -------------------------------------------------------------------------------------


def test_replace_applies_changes_and_keeps_the_original() -> None:
    base = Settings(dsn="memory://")
    changed = base.replace(concurrency="12", queues="x=1")
    assert changed.concurrency == 12
    assert changed.queues == (("x", 1),)
    assert changed.dsn == "memory://"
    assert base.concurrency == Settings().concurrency


def test_replace_validates() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings().replace(concurrency=0)
    assert info.value.field == "concurrency"


def test_replace_refuses_unknown_names() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings().replace(concurency=5)
    assert info.value.field == "concurency"
    assert "Known settings" in str(info.value)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.concurrency = 5  # type: ignore[misc]
