"""What every command shares: exit statuses, loading the app, opening the store, the flags.

Every command takes the settings flags (``--dsn``, ``--schema``, ...) and, through ``_command``,
``--app`` and ``--plugins``; the group modules (node, jobs, ...) add their own flags next to
their functions.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import orjson

from ..app import App, make_store
from ..app import import_plugins as _import_plugins
from ..errors import ConfigurationError
from ..settings import Settings
from ..store.base import Store

if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class CliError(Exception):
    """A problem to report as one sentence, with an exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# -- loading the app ----------------------------------------------------------------------------


def load_app(spec: str | None) -> App:
    """Import ``module:attribute`` and return the App it names."""
    spec = spec or os.environ.get("ASYNCJOBS_APP")
    if not spec:
        raise CliError(
            "no app given: pass --app module:attribute (for example --app myproject.jobs:app) "
            "or set ASYNCJOBS_APP"
        )
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise CliError(f"--app {spec!r} is not of the form module:attribute (e.g. mypkg.jobs:app)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the current directory is importable
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise CliError(
                f"cannot import module {module_name!r} for --app {spec!r}: {exc}. Run from the "
                "directory that contains it, or install its package"
            ) from None
        raise
    app = getattr(module, attribute, None)
    if app is None:
        raise CliError(f"module {module_name!r} has no attribute {attribute!r} (--app {spec!r})")
    if not isinstance(app, App):
        raise CliError(f"--app {spec!r} is a {type(app).__name__}, not an asyncjobs App")
    return app


def import_plugins(spec: str | None) -> None:
    """Import extra modules (``--plugins a.b,c.d``) so their jobs register on the app."""
    try:
        _import_plugins([name.strip() for name in (spec or "").split(",") if name.strip()])
    except ConfigurationError as exc:
        raise CliError(f"cannot import plug-in module {exc.value!r}: {exc.why}") from None


def settings_changes(args: argparse.Namespace) -> dict[str, Any]:
    changes: dict[str, Any] = {}
    for name in ("dsn", "schema", "table_prefix", "concurrency", "queues", "shutdown_grace_s",
                 "metrics_port"):  # fmt: skip
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    return changes


def _configured_app(args: argparse.Namespace) -> App:
    """The app named by --app, with the --plugins imported and the settings flags applied."""
    app = load_app(args.app)
    import_plugins(args.plugins)
    app.configure(**settings_changes(args))
    return app


@asynccontextmanager
async def _open_store(args: argparse.Namespace) -> AsyncIterator[Store]:
    """The store the settings name, open, for commands that run no app."""
    store = make_store(_settings_for(args))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def _settings_for(args: argparse.Namespace) -> Settings:
    """Settings for commands that need no app: from --app if given, else the environment."""
    if getattr(args, "app", None) or os.environ.get("ASYNCJOBS_APP"):
        app = load_app(args.app)
        app.configure(**settings_changes(args))
        return app.settings
    return Settings.from_env(**settings_changes(args))


def _print_json(value: Any) -> None:
    # default=str: ids from asyncpg are a UUID subclass orjson does not know
    sys.stdout.write(orjson.dumps(value, default=str, option=orjson.OPT_INDENT_2).decode() + "\n")


def _print_rows(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


# -- the parser -----------------------------------------------------------------------------------


def _add_settings_flags(parser: argparse.ArgumentParser, *, node: bool = False) -> None:
    group = parser.add_argument_group("connection (flags override ASYNCJOBS_* variables)")
    group.add_argument(
        "--dsn",
        help="Postgres URL, e.g. postgresql://user@host:5432/db "
        "(env ASYNCJOBS_DSN); memory:// for the in-process store",
    )
    group.add_argument("--schema", help="Postgres schema of the tables (default public)")
    group.add_argument(
        "--table-prefix", dest="table_prefix", help="prefix of table names (default asyncjobs_)"
    )
    if node:
        add_node_flags(parser)


def add_node_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a node: --concurrency, --queues, --shutdown-grace, --metrics-port and the
    dashboard's (``asyncjobs node`` and ``manage.py asyncjobs_node`` take them)."""
    group = parser.add_argument_group("node")
    group.add_argument(
        "--concurrency", type=int, help="most jobs running at once on this node (default 100)"
    )
    group.add_argument(
        "--queues",
        help="queues to serve, with optional limits: 'default,reports=5' (default: default)",
    )
    group.add_argument(
        "--shutdown-grace",
        dest="shutdown_grace_s",
        type=float,
        help="seconds running jobs get to finish on SIGTERM (default 30)",
    )
    group.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        help="serve Prometheus metrics on this port at /metrics (needs asyncjobs[metrics])",
    )
    group.add_argument(
        "--dashboard-port",
        type=int,
        help="also serve the web dashboard on this port (needs asyncjobs[dashboard] and "
        "ASYNCJOBS_DASHBOARD_TOKEN)",
    )
    group.add_argument(
        "--dashboard-host",
        default="127.0.0.1",
        help="the dashboard's address (default %(default)s)",
    )


def _add_app_flags(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument(
        "--app",
        required=False,
        help="the app, as module:attribute (env ASYNCJOBS_APP)"
        + ("" if required else "; optional"),
    )
    parser.add_argument(
        "--plugins",
        help="extra modules to import, comma-separated, "
        "so that their jobs register (e.g. plugins_example.cpu,plugins_example.model)",
    )


def _command(
    parser: argparse.ArgumentParser,
    func: Callable[[argparse.Namespace], Coroutine[Any, Any, int]],
    *,
    app_required: bool = False,
) -> None:
    """The flags every command takes (--app, --plugins, the connection), and its function."""
    _add_app_flags(parser, required=app_required)
    _add_settings_flags(parser)
    parser.set_defaults(func=func)
