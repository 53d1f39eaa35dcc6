"""Migrations: idempotent, safe to race, and the schema they build is the one on record."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import asyncpg
import pytest

from asyncjobs import MigrationError, Settings
from asyncjobs.store import queries
from asyncjobs.store.postgres import PostgresStore

SNAPSHOT = Path(__file__).with_name("schema_snapshot.txt")
ALL_LABELS = [m.label for m in queries.load_migrations("public", "asyncjobs_")]


def test_migrations_are_numbered_from_one_without_gaps() -> None:
    assert ALL_LABELS[:2] == ["0001_initial", "0002_reaper"]
    assert [int(label[:4]) for label in ALL_LABELS] == list(range(1, len(ALL_LABELS) + 1))


async def test_a_schema_at_an_older_migration_is_upgraded_to_the_same_schema(
    pg_settings: Settings, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Upgrading step by step ends where a fresh install does (the snapshot)."""
    store = PostgresStore(pg_settings)
    await store.open()
    try:
        real = queries._raw_migrations()
        monkeypatch.setattr(queries, "_raw_migrations", lambda: real[:1])
        assert await store.migrate() == ALL_LABELS[:1]
        monkeypatch.setattr(queries, "_raw_migrations", lambda: real)
        assert await store.migrate() == ALL_LABELS[1:]
    finally:
        await store.close()
    assert await describe_schema(pg_dsn, pg_settings.schema) == SNAPSHOT.read_text()


async def test_migrating_twice_applies_nothing_the_second_time(pg_settings: Settings) -> None:
    store = PostgresStore(pg_settings)
    await store.open()
    try:
        assert await store.migrate() == ALL_LABELS
        assert await store.migrate() == []
    finally:
        await store.close()


async def test_racing_migrators_apply_each_migration_exactly_once(pg_settings: Settings) -> None:
    stores = [PostgresStore(pg_settings) for _ in range(4)]
    for store in stores:
        await store.open()
    try:
        results = await asyncio.gather(*(s.migrate() for s in stores))
    finally:
        for store in stores:
            await store.close()
    assert sorted(results, key=len) == [[], [], [], ALL_LABELS]


async def test_an_applied_migration_that_was_edited_is_refused(
    pg_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = PostgresStore(pg_settings)
    await store.open()
    try:
        await store.migrate()
        real = queries._raw_migrations()
        edited = tuple(
            m.__class__(m.version, m.name, m.sql + "\n-- edited", "0" * 16) for m in real
        )
        monkeypatch.setattr(queries, "_raw_migrations", lambda: edited)
        with pytest.raises(MigrationError, match="0001_initial was changed after it was applied"):
            await store.migrate()
    finally:
        await store.close()


async def test_schema_built_by_the_migrations_matches_the_snapshot(
    pg_settings: Settings, pg_dsn: str
) -> None:
    """The snapshot is the readable current schema; regenerate it with
    ASYNCJOBS_TEST_UPDATE_SNAPSHOT=1 after adding a migration, and review the diff."""
    store = PostgresStore(pg_settings)
    await store.open()
    try:
        await store.migrate()
    finally:
        await store.close()
    actual = await describe_schema(pg_dsn, pg_settings.schema)
    if os.environ.get("ASYNCJOBS_TEST_UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(actual)
    assert actual == SNAPSHOT.read_text(), (
        "schema differs from tests/integration/schema_snapshot.txt"
    )


async def describe_schema(dsn: str, schema: str) -> str:
    """Tables, columns, indexes, constraints, types and functions, with the schema name
    replaced by {schema} so the text does not depend on the test's schema."""
    con = await asyncpg.connect(dsn)
    try:
        lines: list[str] = []
        for r in await con.fetch(
            "SELECT table_name, column_name, data_type, udt_name, is_nullable, column_default "
            "FROM information_schema.columns WHERE table_schema = $1 "
            "ORDER BY table_name, ordinal_position",
            schema,
        ):
            lines.append(
                f"column {r['table_name']}.{r['column_name']} {r['data_type']}/{r['udt_name']} "
                f"null={r['is_nullable']} default={r['column_default']}"
            )
        for r in await con.fetch(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 ORDER BY indexname", schema
        ):
            lines.append(f"index {r['indexdef']}")
        for r in await con.fetch(
            "SELECT conname, pg_get_constraintdef(c.oid) AS def FROM pg_constraint c "
            "JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = $1 ORDER BY conname",
            schema,
        ):
            lines.append(f"constraint {r['conname']} {r['def']}")
        for r in await con.fetch(
            "SELECT t.typname, string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) AS labels "
            "FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid "
            "JOIN pg_namespace n ON n.oid = t.typnamespace WHERE n.nspname = $1 "
            "GROUP BY t.typname ORDER BY t.typname",
            schema,
        ):
            lines.append(f"enum {r['typname']} {r['labels']}")
        for r in await con.fetch(
            "SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS args, "
            "p.prosrc AS body FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE n.nspname = $1 ORDER BY p.proname",
            schema,
        ):
            body = hashlib.sha256(r["body"].replace(schema, "{schema}").encode()).hexdigest()
            lines.append(f"function {r['proname']}({r['args']}) body sha256 {body[:16]}")
    finally:
        await con.close()
    return "\n".join(lines).replace(schema, "{schema}") + "\n"
