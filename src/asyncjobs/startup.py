"""What starting an app needs besides the app: its plug-in modules imported, its process
pool (only if it declares isolated jobs) and its store."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigurationError
from .jobs import JobDef
from .settings import MEMORY_DSN, Settings
from .store.base import Store


def import_plugins(modules: Sequence[str]) -> None:
    """Import the plug-in modules named in the settings, so that their jobs register."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            raise ConfigurationError(
                "plugins",
                name,
                f"the module cannot be imported ({exc}); check its name and "
                "that its package is installed or in the current directory",
            ) from None


async def start_pool(
    settings: Settings,
    registry: Mapping[str, JobDef[Any, Any]],
    preloads: list[Any],
    teardowns: Sequence[Any] = (),
) -> Any:
    """Start the process pool if the app declares isolated jobs; None otherwise."""
    from .pool.config import pool_config

    config = pool_config(settings, registry, preloads, teardowns=teardowns)
    if config is None:
        return None
    from .pool.pool import ProcessPool

    pool = ProcessPool(config)
    await pool.start()
    return pool


def make_store(settings: Settings) -> Store:
    """The store a settings object describes: ``memory://`` or a Postgres DSN."""
    if settings.dsn is None:
        raise ConfigurationError(
            "dsn",
            None,
            "no database is configured. Set ASYNCJOBS_DSN (or --dsn) to a URL like "
            "postgresql://user@host:5432/dbname, or to memory:// to try things out",
        )
    if settings.dsn == MEMORY_DSN:
        from .store.memory import MemoryStore

        return MemoryStore()
    from .store.postgres import PostgresStore

    return PostgresStore(settings)
