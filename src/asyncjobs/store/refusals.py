"""The values Postgres refuses, refused the same way by the MemoryStore.

Postgres fails a whole statement that carries a NUL character (in text, or escaped in jsonb)
or text that is not UTF-8. The MemoryStore raises the same ``ValueRejectedError`` for the same
values, before it changes anything, so that code tested on it (the completer's isolation of a
refused outcome, say) behaves as it will on Postgres, and a test cannot pass on the
MemoryStore where Postgres fails.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..errors import ValueRejectedError
from ..serialization import json_has_nul
from ..storable import text_problem
from .base import NewJob, Outcome, StatsRow

# What Postgres answers, and its SQLSTATE codes.
_JSONB_NUL = (
    "UntranslatableCharacterError: unsupported Unicode escape sequence "
    "DETAIL: \\u0000 cannot be converted to text.",
    "22P05",
)
_TEXT_NUL = (
    'CharacterNotInRepertoireError: invalid byte sequence for encoding "UTF8": 0x00',
    "22021",
)
_NOT_UTF8 = ("DataError: invalid input for query argument: the text is not valid UTF-8", "22000")


def check_text(values: Iterable[str | None]) -> None:
    """Raise as Postgres would for text it cannot store."""
    for value in values:
        if value is not None and text_problem(value):
            detail, code = _TEXT_NUL if "\x00" in value else _NOT_UTF8
            raise ValueRejectedError(detail, code)


def check_json(values: Iterable[bytes | None]) -> None:
    """Raise as Postgres would for encoded JSON that jsonb cannot hold."""
    for value in values:
        if value is not None and json_has_nul(value):
            raise ValueRejectedError(*_JSONB_NUL)


def check_jobs(jobs: Sequence[NewJob]) -> None:
    for j in jobs:
        check_text((j.name, j.queue, j.unique_key, j.concurrency_key, j.rate_key, j.trace))
        check_json((j.args,))


def check_outcomes(outcomes: Sequence[Outcome]) -> None:
    for o in outcomes:
        check_text((o.reason,))
        check_json((o.result, o.error))


def check_stats(rows: Sequence[StatsRow]) -> None:
    check_text(r.name for r in rows)
