"""Retry: validation of the policy, and properties of its backoff delays."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asyncjobs import ConfigurationError, Retry

# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"attempts": 0}, "Retry.attempts"),
        ({"attempts": -1}, "Retry.attempts"),
        ({"attempts": 10_001}, "Retry.attempts"),
        ({"attempts": True}, "Retry.attempts"),
        ({"attempts": 2.0}, "Retry.attempts"),
        ({"backoff": -0.1}, "Retry.backoff"),
        ({"backoff": math.nan}, "Retry.backoff"),
        ({"backoff": math.inf}, "Retry.backoff"),
        ({"backoff": "1"}, "Retry.backoff"),
        ({"max_delay": -1}, "Retry.max_delay"),
        ({"jitter": 1.5}, "Retry.jitter"),
        ({"jitter": -0.1}, "Retry.jitter"),
        ({"jitter": math.nan}, "Retry.jitter"),
        ({"on": (int,)}, "Retry.on"),
        ({"on": ("ValueError",)}, "Retry.on"),
        ({"on": ()}, "Retry.on"),
        ({"on": ValueError()}, "Retry.on"),
    ],
)
def test_an_invalid_policy_is_refused_naming_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Retry(**kwargs)
    assert info.value.field == field
    assert field in str(info.value)
    value = next(iter(kwargs.values()))
    assert repr(value) in str(info.value)


def test_the_default_policy_is_valid() -> None:
    policy = Retry()
    assert policy.attempts == 3
    assert policy.on == (Exception,)


def test_a_single_exception_class_becomes_a_tuple() -> None:
    assert Retry(on=ValueError).on == (ValueError,)


def test_zero_backoff_and_zero_jitter_are_allowed() -> None:
    policy = Retry(attempts=1, backoff=0, jitter=0, max_delay=0)
    assert policy.delay(1) == 0


# -- retries(exc) --------------------------------------------------------------------------------


class DiskFull(OSError):
    pass


def test_retries_honours_the_listed_exception_types_and_their_subclasses() -> None:
    policy = Retry(on=(OSError, TimeoutError))
    assert policy.retries(OSError())
    assert policy.retries(DiskFull())
    assert policy.retries(TimeoutError())
    assert not policy.retries(ValueError())
    assert not policy.retries(KeyboardInterrupt())


def test_the_default_policy_retries_exceptions_but_not_base_exceptions() -> None:
    policy = Retry()
    assert policy.retries(RuntimeError())
    assert not policy.retries(SystemExit())


# -- delay(n, rand) ------------------------------------------------------------------------------

policies = st.builds(
    Retry,
    attempts=st.integers(1, 10_000),
    backoff=st.floats(0, 3600, allow_nan=False),
    max_delay=st.floats(0, 86_400, allow_nan=False),
    jitter=st.floats(0, 1, allow_nan=False),
)
attempt_numbers = st.integers(1, 10_000)
randoms = st.floats(0, 1, exclude_max=True)


def _capped_base(policy: Retry, n: int) -> float:
    return policy.backoff * 2.0 ** min(n - 1, 60)


@settings(max_examples=200)
@given(policy=policies, n=attempt_numbers, r=randoms)
def test_a_delay_is_never_negative_and_never_above_max_delay(
    policy: Retry, n: int, r: float
) -> None:
    delay = policy.delay(n, lambda: r)
    assert 0 <= delay <= policy.max_delay


@settings(max_examples=200)
@given(policy=policies, n=st.integers(1, 80), r=randoms)
def test_a_delay_stays_within_the_jitter_band_around_the_exponential_base(
    policy: Retry, n: int, r: float
) -> None:
    base = _capped_base(policy, n)
    low = min(policy.max_delay, base * (1 - policy.jitter))
    high = min(policy.max_delay, base * (1 + policy.jitter))
    assert low <= policy.delay(n, lambda: r) <= high


@settings(max_examples=200)
@given(policy=policies, n=attempt_numbers)
def test_without_jitter_the_delay_does_not_decrease_from_one_attempt_to_the_next(
    policy: Retry, n: int
) -> None:
    steady = Retry(backoff=policy.backoff, max_delay=policy.max_delay, jitter=0)
    assert steady.delay(n) <= steady.delay(n + 1)


@settings(max_examples=100)
@given(backoff=st.floats(0.001, 60), n=st.integers(1, 20))
def test_without_jitter_or_cap_each_delay_doubles(backoff: float, n: int) -> None:
    policy = Retry(backoff=backoff, jitter=0, max_delay=1e12)
    assert policy.delay(n) == pytest.approx(backoff * 2 ** (n - 1))
    assert policy.delay(n + 1) == pytest.approx(2 * policy.delay(n))


def test_the_jitter_band_is_reached_at_both_ends() -> None:
    policy = Retry(backoff=10, jitter=0.5, max_delay=1000)
    assert policy.delay(1, lambda: 0.0) == 5.0
    assert policy.delay(1, lambda: 0.5) == 10.0
    assert policy.delay(2, lambda: 0.0) == 10.0


def test_a_huge_attempt_number_is_capped_instead_of_overflowing() -> None:
    policy = Retry(backoff=1, jitter=0, max_delay=300)
    assert policy.delay(10_000) == 300
