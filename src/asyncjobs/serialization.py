"""JSON payloads (orjson): arguments, results and errors. Never pickle.

Encoding is strict on purpose. orjson would happily turn a ``datetime`` or a dataclass into a
string or a dict, and the job would then receive a different type from the one it was given;
those types are passed through to the error path instead, so the caller learns at ``enqueue``
time rather than inside a job hours later.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from .errors import PayloadEncodeError, PayloadTooLargeError

DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024  # 1 MiB, per payload (arguments, or a result)
COMPACT_BELOW = 64 * 1024  # see compact(): larger buffers waste little, relatively

# Datetimes, dataclasses and subclasses of str/int/dict/list are refused rather than silently
# converted. UUIDs and enums still encode (to their string/value form).
STRICT_JSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
STRICT_JSON |= orjson.OPT_PASSTHROUGH_SUBCLASS

_HINTS = {
    "datetime": " (send dt.isoformat() and parse it in the job)",
    "date": " (send d.isoformat() and parse it in the job)",
    "time": " (send t.isoformat() and parse it in the job)",
    "Decimal": " (send str(value) and parse it in the job)",
    "bytes": " (send base64 text, or a reference to where the bytes are stored)",
    "set": " (send a sorted list)",
    "frozenset": " (send a sorted list)",
}


def encode_args(job: str, args: Sequence[Any], kwargs: Mapping[str, Any], limit: int) -> bytes:
    """Encode a job's arguments as ``[args, kwargs]``, or raise with the offending path."""
    try:
        data = orjson.dumps((args, kwargs), option=STRICT_JSON)
    except TypeError:
        _raise_for_first_bad_value(job, "argument", ((args, "args"), (kwargs, "kwargs")))
        raise  # pragma: no cover - the walk above always finds the bad value
    if len(data) > limit:
        raise PayloadTooLargeError(job, "arguments", len(data), limit)
    _check_floats(job, "argument", data, ((args, "args"), (kwargs, "kwargs")))
    return data


def compact(data: bytes) -> bytes:
    """A copy of ``data`` that takes only its own size in memory.

    orjson (3.13) returns each encoded value in a buffer of at least 4 KiB, so a payload of
    a few bytes holds 4 KiB until it is freed. Payloads held in bulk (a workflow's steps until
    they are inserted, outcomes waiting for the completer) are copied to their size; the copy
    costs about 0.1 µs for a small payload.
    """
    return bytes(memoryview(data)) if len(data) < COMPACT_BELOW else data


def encode_result(job: str, value: Any, limit: int) -> bytes:
    """Encode a job's return value, or raise with the offending path."""
    try:
        data = orjson.dumps(value, option=STRICT_JSON)
    except TypeError:
        _raise_for_first_bad_value(job, "result", ((value, "result"),))
        raise  # pragma: no cover
    if len(data) > limit:
        raise PayloadTooLargeError(job, "result", len(data), limit)
    _check_floats(job, "result", data, ((value, "result"),))
    return compact(data)  # held in the completer's buffer until written


def decode_args(data: bytes) -> tuple[list[Any], dict[str, Any]]:
    """Decode what ``encode_args`` produced."""
    args, kwargs = orjson.loads(data)
    return args, kwargs


def _check_floats(job: str, what: str, data: bytes, roots: Sequence[tuple[Any, str]]) -> None:
    # orjson writes NaN and infinities as null, which would reach the job as None. The
    # literal only appears in the output when some value was null or non-finite, so the
    # walk runs only then.
    if b"null" not in data:
        return
    for value, path in roots:
        bad = _find_non_finite(value, path)
        if bad is not None:
            raise PayloadEncodeError(
                job, what, bad, "float (NaN or infinity)", " (JSON has no NaN or infinity)"
            )


def _find_non_finite(value: Any, path: str) -> str | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        for k, v in value.items():
            found = _find_non_finite(v, f"{path}[{k!r}]")
            if found:
                return found
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            found = _find_non_finite(v, f"{path}[{i}]")
            if found:
                return found
    return None


def _raise_for_first_bad_value(job: str, what: str, roots: Sequence[tuple[Any, str]]) -> None:
    for value, path in roots:
        found = _find_unencodable(value, path)
        if found is not None:
            bad_path, type_name = found
            raise PayloadEncodeError(job, what, bad_path, type_name, _HINTS.get(type_name, ""))


def _find_unencodable(value: Any, path: str) -> tuple[str, str] | None:
    """Return (path, type name) of the first value orjson refuses, depth first."""
    if isinstance(value, dict) and type(value) is dict:
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{path} key {k!r}", f"{type(k).__name__} (dict keys must be str)"
            found = _find_unencodable(v, f"{path}[{k!r}]")
            if found:
                return found
        return None
    if isinstance(value, list | tuple) and type(value) in (list, tuple):
        for i, v in enumerate(value):
            found = _find_unencodable(v, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(value, int) and not isinstance(value, bool) and type(value) is int:
        if not -(2**63) <= value < 2**64:
            return path, "int (out of the 64-bit range JSON payloads support)"
        return None
    try:
        orjson.dumps(value, option=STRICT_JSON)
    except TypeError:
        return path, type(value).__name__
    return None
