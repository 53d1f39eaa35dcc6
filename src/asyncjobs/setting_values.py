"""Checking and parsing the values of settings (a DSN, a queue name, seconds, a queue list),
for ``Settings.validate`` and for the CLI and the API, which check the same values."""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError

MEMORY_DSN = "memory://"  # the in-process MemoryStore; nothing persists
_QUEUE_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")  # used with fullmatch
_QUERY_PASSWORD = re.compile(r"((?:^|&)password=)[^&]*", re.IGNORECASE)
_MAX_SECONDS = 365 * 24 * 3600.0  # a year: beyond that a duration is a typo, not a plan


def check_dsn(dsn: str) -> None:
    """Raise ``ConfigurationError`` unless ``dsn`` is a Postgres URL or ``memory://``."""
    if dsn == MEMORY_DSN:
        return
    shown = mask_dsn(dsn)
    try:
        parts = urlsplit(dsn)
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError as exc:
        raise ConfigurationError("dsn", shown, f"it cannot be parsed ({exc})") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(
            "dsn",
            shown,
            "expected a URL like postgresql://user@host:5432/dbname (or memory:// for the "
            "in-process store)",
        )
    if not parts.hostname and "host=" not in parts.query:
        raise ConfigurationError("dsn", shown, "it names no host")


def mask_dsn(dsn: str) -> str:
    """The DSN with any password (in the address or as ``?password=``) replaced by ``***``."""
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable DSN>"
    masked = parts
    if parts.password is not None:
        masked = masked._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1))
    if parts.query:
        masked = masked._replace(query=_QUERY_PASSWORD.sub(r"\1***", parts.query))
    # Rebuild only when something was hidden: geturl() also normalises (e.g. drops "//").
    return dsn if masked == parts else masked.geturl()


def check_queue_name(name: Any, *, field_name: str = "queue") -> None:
    if not isinstance(name, str) or not _QUEUE_RE.fullmatch(name):
        raise ConfigurationError(
            field_name,
            name,
            "a queue name is 1 to 64 letters, digits, or any of _ . : -",
        )


def check_seconds(name: str, value: Any, *, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(name, value, "expected a number of seconds")
    low_ok = value >= 0 if allow_zero else value > 0
    if not low_ok or math.isnan(value):
        raise ConfigurationError(
            name, value, "must be zero or more" if allow_zero else "must be more than zero"
        )
    if value > _MAX_SECONDS:
        raise ConfigurationError(name, value, "more than a year is surely a typo")


def check_off_or_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(name, value, "expected a whole number")
    if value != 0 and not low <= value <= 2**62:
        raise ConfigurationError(name, value, f"use 0 (no limit) or at least {low:,}")


def check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(name, value, "expected a whole number")
    if not low <= value <= high:
        raise ConfigurationError(name, value, f"must be between {low:,} and {high:,}")


def parse_queues(spec: str) -> tuple[tuple[str, int | None], ...]:
    """Parse ``"default,reports=5"`` into ``(("default", None), ("reports", 5))``."""
    out: list[tuple[str, int | None]] = []
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, limit = item.partition("=")
        name = name.strip()
        if sep:
            try:
                out.append((name, int(limit)))
            except ValueError:
                raise ConfigurationError(
                    "queues", spec, f"the limit of queue {name!r} is {limit!r}, not a number"
                ) from None
        else:
            out.append((name, None))
    return tuple(out)


def format_queues(queues: tuple[tuple[str, int | None], ...]) -> str:
    return ",".join(name if limit is None else f"{name}={limit}" for name, limit in queues)
