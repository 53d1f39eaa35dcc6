"""The dashboard's request parsing and token rules, without a server or a database."""

from __future__ import annotations

import pytest
from starlette.datastructures import QueryParams

from asyncjobs.cli import main
from asyncjobs.dashboard.auth import TokenAuth, check_token, safe_next
from asyncjobs.dashboard.params import BadRequest, JobFilters, since_floor
from asyncjobs.errors import ConfigurationError
from asyncjobs.ids import id_floor, new_id

NOW = 1_800_000_000.0


def test_since_takes_a_duration_or_an_iso_time() -> None:
    assert since_floor("90s", NOW) == id_floor(NOW - 90)
    assert since_floor("2h", NOW) == id_floor(NOW - 7200)
    assert since_floor("1.5d", NOW) == id_floor(NOW - 1.5 * 86400)
    assert since_floor("2027-01-15T08:00:00", NOW) == since_floor("2027-01-15T08:00:00+00:00")
    with pytest.raises(BadRequest, match="since 'soon' is neither a duration"):
        since_floor("soon", NOW)


def test_job_filters_round_trip_through_their_links() -> None:
    before = new_id()
    filters = JobFilters.parse(QueryParams("state=failed&queue=a b&name=&since=1h&limit=20"))
    assert filters == JobFilters("failed", "a b", None, "1h", 20)
    link = filters.link(before)
    assert link.startswith("/jobs?") and f"before={before}" in link
    assert JobFilters.parse(QueryParams(link.split("?", 1)[1])) == filters
    assert JobFilters().link() == "/jobs" and not JobFilters().active


@pytest.mark.parametrize(
    ("query", "sentence"),
    [
        ("state=done", "state 'done' is not a job state; use one of scheduled, waiting"),
        ("limit=501", "limit '501' is not a number from 1 to 500"),
        ("limit=-1", "limit '-1' is not a number"),
        ("queue=" + "q" * 201, "the queue filter is over 200 characters long"),
    ],
)
def test_bad_filters_are_refused_with_a_sentence_naming_the_value(
    query: str, sentence: str
) -> None:
    with pytest.raises(BadRequest) as info:
        JobFilters.parse(QueryParams(query))
    assert sentence in info.value.message


def test_after_login_only_paths_of_this_site_are_followed() -> None:
    assert safe_next("/jobs?state=failed") == "/jobs?state=failed"
    for value in (None, "", "https://evil.example/", "//evil.example/", "/\\evil.example"):
        assert safe_next(value) == "/"


def test_tokens_shorter_than_16_characters_are_refused_without_being_shown() -> None:
    assert check_token("s" * 16) == "s" * 16
    for token in (None, "", "hunter2", " hunter2hunter2hunter2"):
        with pytest.raises(ConfigurationError, match="dashboard_token") as info:
            check_token(token)
        assert "hunter2" not in str(info.value)


def test_the_session_and_csrf_values_are_distinct_and_not_the_token() -> None:
    auth = TokenAuth("t" * 20)
    assert len({auth.session, auth.csrf, "t" * 20}) == 3
    assert auth.session == TokenAuth("t" * 20).session != TokenAuth("u" * 20).session


def test_the_dashboard_command_without_a_token_exits_2_with_a_sentence(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ASYNCJOBS_DASHBOARD_TOKEN", raising=False)
    assert main(["dashboard", "--dsn", "memory://"]) == 2
    err = capsys.readouterr().err
    assert "the dashboard needs a token: pass --token or set ASYNCJOBS_DASHBOARD_TOKEN" in err
    assert "Traceback" not in err


def test_the_dashboard_package_exports_what_its_all_names() -> None:
    from asyncjobs import dashboard

    assert dashboard.__all__ == ["create_app", "serve"]
    assert all(callable(getattr(dashboard, name)) for name in dashboard.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        _ = dashboard.nothing
