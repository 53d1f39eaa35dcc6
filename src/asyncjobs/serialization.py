"""JSON payloads (orjson): arguments, results and errors. Never pickle.

Encoding is strict on purpose. orjson would happily turn a ``datetime`` or a dataclass into a
string or a dict, and the job would then receive a different type from the one it was given;
those types are passed through to the error path instead, so the caller learns at ``enqueue``
time rather than inside a job hours later.

A payload must also be one Postgres can store and give back unchanged, on every store (the
MemoryStore refuses the same values, so a test on it cannot pass where Postgres fails):

- no NUL character (U+0000) in a string or a key: Postgres's text and jsonb cannot hold it,
  and a statement carrying one fails whole, with every other row in it;
- no float from 1e16 up to 2**64 in size: jsonb keeps numbers as decimals and writes them back
  without an exponent, so ``1.2e17`` would come back as an int, and beyond 2**53 not even the
  same number.

Error texts (messages, tracebacks) are not refused but made storable: see
``storable.storable_text``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from .errors import PayloadEncodeError, PayloadTooLargeError
from .storable import NUL, is_utf8, surrogate_in

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024  # 1 MiB, per payload (arguments, or a result)
COMPACT_BELOW = 64 * 1024  # see compact(): larger buffers waste little, relatively
MAX_DEPTH = 254  # orjson refuses to nest lists and dicts deeper than this
# Floats of this size come back from jsonb as ints (see the module's docstring); orjson writes
# them, and only them below 2**64, with a positive exponent.
EXACT_FLOAT_LIMIT = 1e16
UINT64_LIMIT = 2**64

# Datetimes, dataclasses and subclasses of str/int/dict/list are refused rather than silently
# converted. UUIDs and enums still encode (to their string/value form).
STRICT_JSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
STRICT_JSON |= orjson.OPT_PASSTHROUGH_SUBCLASS

NUL_ESCAPE = b"\\u0000"  # how orjson writes U+0000; found also inside an escaped backslash
# The three signs check_storable looks for, found in one pass: three ``in`` tests cost about
# 0.5 µs even on a payload of a few bytes (0.1 µs for this), at 20,000 jobs 10 ms of
# enqueue_many's Python, a third of prepare_bulk's.
suspect = re.compile(rb"null|\\u0000|e\+").search

_HINTS = {
    "datetime": " (send dt.isoformat() and parse it in the job)",
    "date": " (send d.isoformat() and parse it in the job)",
    "time": " (send t.isoformat() and parse it in the job)",
    "Decimal": " (send str(value) and parse it in the job)",
    "bytes": " (send base64 text, or a reference to where the bytes are stored)",
    "set": " (send a sorted list)",
    "frozenset": " (send a sorted list)",
}
_NUL_WHY = (
    "it holds a NUL character (U+0000), which Postgres cannot store in text or jsonb. "
    "Remove it, or send binary data as base64 text"
)
_SURROGATE_WHY = (
    "it holds a lone surrogate ({char!r}), which is not valid UTF-8. Encode the text "
    "properly, or send binary data as base64 text"
)


def encode_args(
    job: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    limit: int,
    *,
    step: str | None = None,
) -> bytes:
    """Encode a job's arguments (or a step's: ``step`` names it) as ``[args, kwargs]``, or
    raise with the offending path."""
    roots = ((args, "args"), (kwargs, "kwargs"))
    try:
        data = orjson.dumps((args, kwargs), option=STRICT_JSON)
    except TypeError:
        _raise_for_first_bad_value(job, "argument", roots, depth=1, step=step)
        raise  # pragma: no cover - the walk above always finds the bad value
    if len(data) > limit:
        raise PayloadTooLargeError(job, "arguments", len(data), limit, step=step)
    check_storable(job, "argument", data, roots, step=step)
    return data


def compact(data: bytes) -> bytes:
    """A copy of ``data`` that takes only its own size in memory.

    orjson (3.13) returns each encoded value in a buffer of at least 4 KiB, so a payload of
    a few bytes holds 4 KiB until it is freed. Payloads held in bulk (a workflow's steps until
    they are inserted, outcomes waiting for the completer) are copied to their size; the copy
    costs about 0.1 µs for a small payload.
    """
    return bytes(memoryview(data)) if len(data) < COMPACT_BELOW else data


def encode_result(job: str, value: Any, limit: int, *, step: str | None = None) -> bytes:
    """Encode a job's return value (or a step's: ``step`` names it), or raise with the
    offending path."""
    try:
        data = orjson.dumps(value, option=STRICT_JSON)
    except TypeError:
        _raise_for_first_bad_value(job, "result", ((value, "result"),), depth=0, step=step)
        raise  # pragma: no cover
    if len(data) > limit:
        raise PayloadTooLargeError(job, "result", len(data), limit, step=step)
    check_storable(job, "result", data, ((value, "result"),), step=step)
    return compact(data)  # held in the completer's buffer until written


def decode_args(data: bytes) -> tuple[list[Any], dict[str, Any]]:
    """Decode what ``encode_args`` produced."""
    args, kwargs = orjson.loads(data)
    return args, kwargs


def check_storable(
    job: str,
    what: str,
    data: bytes,
    roots: Sequence[tuple[Any, str]],
    *,
    step: str | None = None,
) -> None:
    """Raise ``PayloadEncodeError`` for a value orjson encoded but Postgres would refuse or
    change; ``data`` is the encoding of ``roots``.

    The walks run only when the bytes show a sign of such a value: orjson writes NaN and the
    infinities as ``null``, U+0000 as its escape, and large floats with ``e+``.
    """
    if suspect(data) is None:
        return
    if b"null" in data and (found := _first(roots, _non_finite)):
        raise PayloadEncodeError(
            job, what, found[0], "float (NaN or infinity)", " (JSON has no NaN or infinity)",
            step=step,
        )  # fmt: skip
    if NUL_ESCAPE in data:
        for value, path in roots:
            bad = _find_nul(value, path)
            if bad is not None:
                raise PayloadEncodeError(job, what, bad, "str", why=_NUL_WHY, step=step)
    if b"e+" in data and (found := _first(roots, _inexact_float)):
        raise PayloadEncodeError(
            job, what, found[0], "float",
            why=(
                f"the float {found[1]!r} would come back from Postgres as an int (jsonb keeps "
                "numbers as decimals, and writes those from 1e16 up to 2**64 without an "
                "exponent), and not always the same number. Send int(value) for a whole "
                "number, or the float as a string"
            ),
            step=step,
        )  # fmt: skip


def _first(roots: Sequence[tuple[Any, str]], bad: Any) -> tuple[str, Any] | None:
    for value, path in roots:
        found = _find(value, path, bad)
        if found is not None:
            return found
    return None


def json_has_nul(data: bytes) -> bool:
    """Whether encoded JSON holds a NUL character (in a string or a key)."""
    return NUL_ESCAPE in data and _find_nul(orjson.loads(data), "") is not None


def _non_finite(value: Any) -> bool:
    return type(value) is float and not math.isfinite(value)


def _inexact_float(value: Any) -> bool:
    return type(value) is float and EXACT_FLOAT_LIMIT <= abs(value) < UINT64_LIMIT


def _find(value: Any, path: str, bad: Any) -> tuple[str, Any] | None:
    """The path of the first value (depth first) for which ``bad`` holds, and the value."""
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find(v, f"{path}[{k!r}]", bad)
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _find(v, f"{path}[{i}]", bad)
            if found:
                return found
    elif bad(value):
        return path, value
    return None


def _find_nul(value: Any, path: str) -> str | None:
    if isinstance(value, str):
        return path if NUL in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and NUL in k:
                return f"{path} key {k!r}"
            found = _find_nul(v, f"{path}[{k!r}]")
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _find_nul(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _raise_for_first_bad_value(
    job: str, what: str, roots: Sequence[tuple[Any, str]], depth: int, step: str | None = None
) -> None:
    for value, path in roots:
        found = _find_unencodable(value, path, depth)
        if found is not None:
            bad_path, type_name, why = found
            raise PayloadEncodeError(
                job, what, bad_path, type_name, _HINTS.get(type_name, ""), why=why, step=step
            )


def _find_unencodable(value: Any, path: str, depth: int) -> tuple[str, str, str | None] | None:
    """(path, type name, why or None) of the first value orjson refuses, depth first.
    ``depth`` counts the lists and dicts around ``value``."""
    if isinstance(value, dict | list | tuple) and depth >= MAX_DEPTH:
        why = f"it is nested more than {MAX_DEPTH} levels deep, or contains itself. Flatten it"
        return path, type(value).__name__, why
    if isinstance(value, dict) and type(value) is dict:
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{path} key {k!r}", f"{type(k).__name__} (dict keys must be str)", None
            if not is_utf8(k):
                return f"{path} key {k!r}", "str", _SURROGATE_WHY.format(char=surrogate_in(k))
            found = _find_unencodable(v, f"{path}[{k!r}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, list | tuple) and type(value) in (list, tuple):
        for i, v in enumerate(value):
            found = _find_unencodable(v, f"{path}[{i}]", depth + 1)
            if found:
                return found
        return None
    if isinstance(value, int) and not isinstance(value, bool) and type(value) is int:
        if not -(2**63) <= value < UINT64_LIMIT:
            return path, "int (out of the 64-bit range JSON payloads support)", None
        return None
    if type(value) is str and not is_utf8(value):
        return path, "str", _SURROGATE_WHY.format(char=surrogate_in(value))
    try:
        orjson.dumps(value, option=STRICT_JSON)
    except TypeError:
        return path, type(value).__name__, None
    return None
