"""Applying the numbered migrations in sql/migrations, safely from any number of processes.

One transaction, under an advisory lock per schema and prefix: concurrent migrators wait, then
find nothing to do. Each applied migration's checksum is recorded, so an edited migration is
refused instead of silently diverging from the databases it was already applied to.
"""

from __future__ import annotations

from ..errors import MigrationError
from .connections import Conn
from .queries import load_migrations


async def apply_migrations(con: Conn, schema: str, prefix: str, where: str) -> list[str]:
    """Apply the pending migrations on ``con``; returns their labels (``0001_initial``...)."""
    t = f"{schema}.{prefix}"
    applied: list[str] = []
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"asyncjobs:{t}")
        await con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await con.execute(
            f"CREATE TABLE IF NOT EXISTS {t}migrations ("
            " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r["version"]: r["checksum"] for r in await con.fetch(f"SELECT * FROM {t}migrations")
        }
        known = load_migrations(schema, prefix)
        newest = max(done, default=0)
        if newest > len(known):
            raise MigrationError(
                where,
                f"it is at migration {newest}, newer than this asyncjobs knows ({len(known)}); "
                "upgrade asyncjobs on this machine",
            )
        for migration in known:
            checksum = done.get(migration.version)
            if checksum is not None:
                if checksum != migration.checksum:
                    raise MigrationError(
                        where,
                        f"migration {migration.label} was changed after it was applied there. "
                        "Never edit an applied migration: add a new one",
                    )
                continue
            await con.execute(migration.sql)
            await con.execute(
                f"INSERT INTO {t}migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied.append(migration.label)
    return applied
