"""Payload encoding: JSON round trips, and precise errors for what JSON cannot carry."""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections import OrderedDict
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncjobs import PayloadEncodeError, PayloadTooLargeError
from asyncjobs.serialization import (
    decode_args,
    encode_args,
    encode_result,
    json_has_nul,
)
from asyncjobs.storable import storable_text

LIMIT = 64 * 1024 * 1024
JOB = "provision"

# What Postgres stores and gives back unchanged: no NUL in text, no float that jsonb would
# write back as an int (see asyncjobs.serialization).
no_nul = st.characters(codec="utf-8", exclude_characters="\x00")
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not 1e16 <= abs(f) < 2**64)
    | st.text(alphabet=no_nul, max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(alphabet=no_nul, max_size=10), inner, max_size=5)
    ),
    max_leaves=30,
)
json_kwargs = st.dictionaries(
    st.text(alphabet=no_nul, min_size=1, max_size=10), json_values, max_size=5
)


# -- round trips ---------------------------------------------------------------------------------


@settings(max_examples=200)
@given(args=st.lists(json_values, max_size=5), kwargs=json_kwargs)
def test_arguments_round_trip_unchanged(args: list[Any], kwargs: dict[str, Any]) -> None:
    assert decode_args(encode_args(JOB, args, kwargs, LIMIT)) == (args, kwargs)


@settings(max_examples=200)
@given(value=json_values)
def test_results_round_trip_unchanged(value: Any) -> None:
    assert orjson.loads(encode_result(JOB, value, LIMIT)) == value


def test_tuples_arrive_as_lists() -> None:
    data = encode_args(JOB, (1, (2, 3)), {"t": ("a",)}, LIMIT)
    assert decode_args(data) == ([1, [2, 3]], {"t": ["a"]})


def test_the_extreme_64_bit_integers_round_trip() -> None:
    args = [-(2**63), 2**64 - 1]
    assert decode_args(encode_args(JOB, args, {}, LIMIT)) == (args, {})


# -- values JSON cannot carry --------------------------------------------------------------------


BAD_VALUES: list[tuple[str, Any, str, str]] = [
    # (id, value, type name in the message, hint in the message or "")
    ("set", {1, 2}, "set", "sorted list"),
    ("frozenset", frozenset({1}), "frozenset", "sorted list"),
    ("datetime", dt.datetime(2024, 1, 2, 3, 4, tzinfo=dt.UTC), "datetime", "isoformat()"),
    ("date", dt.date(2024, 1, 2), "date", "isoformat()"),
    ("decimal", decimal.Decimal("1.5"), "Decimal", "str(value)"),
    ("bytes", b"\x00\x01", "bytes", "base64"),
    ("object", object(), "object", ""),
    ("int above 64 bits", 2**64, "int", "64-bit"),
    ("int below 64 bits", -(2**63) - 1, "int", "64-bit"),
    ("nan", math.nan, "float", "NaN"),
    ("infinity", math.inf, "float", "infinity"),
    ("-infinity", -math.inf, "float", "infinity"),
    ("dict subclass", OrderedDict(a=1), "OrderedDict", ""),
]


@pytest.mark.parametrize(
    ("value", "type_name", "hint"),
    [pytest.param(v, t, h, id=i) for i, v, t, h in BAD_VALUES],
)
def test_a_bad_argument_is_reported_with_job_path_type_and_hint(
    value: Any, type_name: str, hint: str
) -> None:
    kwargs = {"vm": {"name": "web-1", "disks": [{"size": 10}, value, {"size": 30}]}}
    with pytest.raises(PayloadEncodeError) as info:
        encode_args(JOB, ("ok",), kwargs, LIMIT)
    error = info.value
    assert error.job == JOB
    assert error.path == "kwargs['vm']['disks'][1]"
    assert error.type_name.startswith(type_name)
    message = str(error)
    assert "kwargs['vm']['disks'][1]" in message
    assert repr(JOB) in message
    assert type_name in message
    assert hint in message


@pytest.mark.parametrize(
    ("value", "type_name", "hint"),
    [pytest.param(v, t, h, id=i) for i, v, t, h in BAD_VALUES],
)
def test_a_bad_result_is_reported_with_its_path(value: Any, type_name: str, hint: str) -> None:
    with pytest.raises(PayloadEncodeError) as info:
        encode_result(JOB, {"rows": [1, value]}, LIMIT)
    assert info.value.path == "result['rows'][1]"
    assert info.value.what == "result"
    assert type_name in str(info.value)
    assert hint in str(info.value)


@pytest.mark.parametrize("value", [math.nan, {1}, b"x"])
def test_a_bad_result_at_the_top_is_reported_at_result(value: Any) -> None:
    with pytest.raises(PayloadEncodeError) as info:
        encode_result(JOB, value, LIMIT)
    assert info.value.path == "result"


def test_a_bad_positional_argument_is_reported_under_args() -> None:
    with pytest.raises(PayloadEncodeError) as info:
        encode_args(JOB, (1, [2, math.inf]), {}, LIMIT)
    assert info.value.path == "args[1][1]"


def test_a_non_string_dict_key_is_reported_with_the_key() -> None:
    with pytest.raises(PayloadEncodeError) as info:
        encode_args(JOB, (), {"vm": {"disks": {1: "a"}}}, LIMIT)
    assert info.value.path == "kwargs['vm']['disks'] key 1"
    assert "dict keys must be str" in str(info.value)


def test_nan_is_refused_even_though_orjson_would_write_null() -> None:
    with pytest.raises(PayloadEncodeError):
        encode_args(JOB, (), {"ratio": math.nan}, LIMIT)
    with pytest.raises(PayloadEncodeError):
        encode_result(JOB, [None, -math.inf], LIMIT)


def test_none_and_the_string_null_are_not_mistaken_for_nan() -> None:
    data = encode_args(JOB, (None, "null"), {"x": [None, 1.5]}, LIMIT)
    assert decode_args(data) == ([None, "null"], {"x": [None, 1.5]})


# -- values JSON carries but Postgres cannot store, or would change ---------------------------


@pytest.mark.parametrize("root", ["args", "result"])
@pytest.mark.parametrize(
    ("value", "path", "words"),
    [
        pytest.param("a\x00b", "[1]", "NUL character (U+0000)", id="NUL in a string"),
        pytest.param({"k\x00": 1}, "[1] key 'k\\x00'", "NUL character", id="NUL in a key"),
        pytest.param("x\ud800", "[1]", "lone surrogate ('\\ud800')", id="lone surrogate"),
        pytest.param({"\udfff": 1}, "[1] key '\\udfff'", "lone surrogate", id="surrogate key"),
        pytest.param(1.5e17, "[1]", "the float 1.5e+17 would come back", id="float as int"),
        pytest.param(-(2.0**60 + 256), "[1]", "not always the same number", id="float inexact"),
    ],
)
def test_a_value_postgres_cannot_keep_is_refused_with_its_path_and_why(
    root: str, value: Any, path: str, words: str
) -> None:
    def encode() -> None:
        if root == "args":
            encode_args(JOB, ("ok", value), {}, LIMIT)
        else:
            encode_result(JOB, ["ok", value], LIMIT)

    with pytest.raises(PayloadEncodeError) as info:
        encode()
    assert info.value.path == root + path
    assert f"{root}{path} of job {JOB!r}" in str(info.value)
    assert words in str(info.value)


@pytest.mark.parametrize("value", [1e16 - 2, 2.0**64, 1e300, -1e20, 123.5, 1e-300])
def test_floats_outside_the_int_range_of_jsonb_are_kept(value: float) -> None:
    assert orjson.loads(encode_result(JOB, value, LIMIT)) == value


def test_an_escaped_backslash_before_u0000_is_not_taken_for_a_nul() -> None:
    text = "\\u0000 is how JSON writes a NUL"
    assert decode_args(encode_args(JOB, (text,), {}, LIMIT)) == ([text], {})


def test_nesting_beyond_orjsons_limit_is_refused_with_a_sentence_not_a_bare_type_error() -> None:
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    with pytest.raises(PayloadEncodeError) as info:
        encode_result(JOB, deep, LIMIT)
    assert "nested more than 254 levels deep" in str(info.value)
    assert len(str(info.value)) < 500  # the path is shortened in the sentence
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(PayloadEncodeError, match="contains itself"):
        encode_args(JOB, (looped,), {}, LIMIT)


def test_storable_text_replaces_nul_and_says_so_and_escapes_surrogates() -> None:
    assert storable_text("plain") == "plain"
    text = storable_text("bad\x00value")
    assert "\x00" not in text
    assert text.startswith("bad\ufffdvalue")
    assert "replaced NUL characters" in text
    assert storable_text("x\ud800y") == "x\\ud800y"
    storable_text("x\ud800\x00").encode()  # both at once: valid UTF-8 without NUL


def test_json_has_nul_looks_past_escaped_backslashes() -> None:
    assert json_has_nul(orjson.dumps({"a": ["\x00"]}))
    assert json_has_nul(orjson.dumps({"\x00": 1}))
    assert not json_has_nul(orjson.dumps(["\\u0000"]))
    assert not json_has_nul(b"[1]")


# -- planting a bad value anywhere ---------------------------------------------------------------


def _containers(value: Any, path: str) -> list[tuple[Any, str]]:
    """Every (list or dict, path) inside ``value``, itself included."""
    out: list[tuple[Any, str]] = []
    if isinstance(value, dict):
        out.append((value, path))
        for k, v in value.items():
            out.extend(_containers(v, f"{path}[{k!r}]"))
    elif isinstance(value, list):
        out.append((value, path))
        for i, v in enumerate(value):
            out.extend(_containers(v, f"{path}[{i}]"))
    return out


planted_values = st.sampled_from(
    [
        {1},
        dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        b"x",
        object(),
        2**70,
        math.nan,
        -math.inf,
        "a\x00b",
        "\ud800",
        1.5e17,
        2.0**60 + 256,
    ]
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    args=st.lists(json_values, max_size=4),
    kwargs=json_kwargs,
    bad=planted_values,
    data=st.data(),
)
def test_the_reported_path_is_exactly_where_the_bad_value_was_planted(
    args: list[Any], kwargs: dict[str, Any], bad: Any, data: st.DataObject
) -> None:
    spots = _containers(args, "args") + _containers(kwargs, "kwargs")
    container, path = data.draw(st.sampled_from(spots), label="container")
    if isinstance(container, list):
        index = data.draw(st.integers(0, len(container)), label="index")
        container.insert(index, bad)
        expected = f"{path}[{index}]"
    else:
        key = data.draw(st.text(no_nul, max_size=8), label="key")
        container[key] = bad
        expected = f"{path}[{key!r}]"
    with pytest.raises(PayloadEncodeError) as info:
        encode_args(JOB, args, kwargs, LIMIT)
    assert info.value.path == expected
    assert expected in str(info.value)


@settings(max_examples=100)
@given(value=json_values, bad=planted_values, data=st.data())
def test_the_reported_result_path_is_exactly_where_the_bad_value_was_planted(
    value: Any, bad: Any, data: st.DataObject
) -> None:
    root = [value]
    container, path = data.draw(st.sampled_from(_containers(root, "result")), label="container")
    if isinstance(container, list):
        index = data.draw(st.integers(0, len(container)), label="index")
        container.insert(index, bad)
        expected = f"{path}[{index}]"
    else:
        key = data.draw(st.text(no_nul, max_size=8), label="key")
        container[key] = bad
        expected = f"{path}[{key!r}]"
    with pytest.raises(PayloadEncodeError) as info:
        encode_result(JOB, root, LIMIT)
    assert info.value.path == expected


# -- size limit ----------------------------------------------------------------------------------


def test_arguments_exactly_at_the_limit_pass_and_one_byte_more_fails() -> None:
    args, kwargs = ("x" * 500,), {"n": 1}
    size = len(encode_args(JOB, args, kwargs, LIMIT))
    assert encode_args(JOB, args, kwargs, size)
    with pytest.raises(PayloadTooLargeError) as info:
        encode_args(JOB, args, kwargs, size - 1)
    error = info.value
    assert (error.job, error.what, error.size, error.limit) == (JOB, "arguments", size, size - 1)
    assert f"{size:,}" in str(error)
    assert f"{size - 1:,}" in str(error)
    assert "max_payload_bytes" in str(error)


def test_a_result_over_the_limit_is_refused_with_size_and_limit() -> None:
    with pytest.raises(PayloadTooLargeError) as info:
        encode_result(JOB, ["y" * 2000], 1024)
    assert info.value.what == "result"
    assert info.value.size > 2000
    assert info.value.limit == 1024
    assert "1,024" in str(info.value)


def test_payload_errors_are_also_builtin_error_types() -> None:
    with pytest.raises(TypeError):
        encode_args(JOB, ({1},), {}, LIMIT)
    with pytest.raises(ValueError):
        encode_result(JOB, "z" * 100, 64)
