"""Named SQL, loaded from ``sql/queries.sql`` and ``sql/migrations/*.sql``.

The only values ever formatted into SQL are the schema and table prefix, which ``Settings``
validates as plain identifiers. Everything else is a bind parameter.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

_NAME_LINE = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str  # of the file as written, before the prefix is substituted

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"


def render(sql: str, schema: str, prefix: str) -> str:
    """Substitute the identifier tokens. Both values are validated identifiers."""
    return (
        sql.replace("{t}", f"{schema}.{prefix}")
        .replace("{schema}", schema)
        .replace("{prefix}", prefix)
        .replace("{channel}", channel_name(schema, prefix))
    )


def channel_name(schema: str, prefix: str) -> str:
    """The NOTIFY channel: one per schema and prefix, so apps sharing a database stay apart."""
    return f"{schema}.{prefix}events"


@cache
def _raw_queries(filename: str = "queries.sql") -> dict[str, str]:
    text = resources.files(__package__).joinpath("sql", filename).read_text()
    parts = _NAME_LINE.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise RuntimeError(f"query {name!r} is defined twice in {filename}")
        queries[name] = body.strip().rstrip(";")
    return queries


def load_queries(schema: str, prefix: str, filename: str = "queries.sql") -> dict[str, str]:
    """Every named query of ``sql/<filename>``, rendered for this schema and prefix."""
    return {name: render(sql, schema, prefix) for name, sql in _raw_queries(filename).items()}


@cache
def _raw_migrations() -> tuple[Migration, ...]:
    folder = resources.files(__package__).joinpath("sql/migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            text = entry.read_text()
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            found.append(Migration(int(match[1]), match[2], text, digest))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migrations must be numbered 1..n without gaps, found {versions}")
    return tuple(found)


def load_migrations(schema: str, prefix: str) -> list[Migration]:
    return [
        Migration(m.version, m.name, render(m.sql, schema, prefix), m.checksum)
        for m in _raw_migrations()
    ]
