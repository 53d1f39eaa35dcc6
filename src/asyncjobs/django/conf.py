"""``settings.ASYNCJOBS`` onto asyncjobs ``Settings``, and the DSN derived from ``DATABASES``.

Pure functions over plain mappings: they read neither Django's settings object nor the process
environment unless given them, so they are tested without a configured Django.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode

from ..errors import ConfigurationError
from ..settings import Settings

# Variables the zygote needs to load the project: without it, django.setup() in the zygote
# could not find the settings. Added to ``worker_env`` whatever ASYNCJOBS says.
DJANGO_ENV = ("DJANGO_SETTINGS_MODULE",)
DATABASE_ALIAS = "default"
# Where libpq looks for a local server's socket when HOST is empty (Debian's, then others').
SOCKET_DIRS = ("/run/postgresql", "/var/run/postgresql", "/tmp")
# The connection options of DATABASES[...]["OPTIONS"] that mean the same to asyncpg.
_DSN_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey")
_SETTING_NAMES = frozenset(Settings.__dataclass_fields__)


class DjangoSettings(NamedTuple):
    """asyncjobs' settings for a Django project, and why no DSN could be found (if none)."""

    settings: Settings
    no_dsn: str | None


def settings_from_django(
    asyncjobs: Any,
    databases: Mapping[str, Any] | None,
    environ: Mapping[str, str] | None = None,
    socket_dirs: Sequence[str] = SOCKET_DIRS,
) -> DjangoSettings:
    """asyncjobs ``Settings`` from ``settings.ASYNCJOBS`` (a dict, or None when absent).

    Precedence, lowest first: the defaults, ``ASYNCJOBS_*`` variables, the ASYNCJOBS dict.
    Without a ``dsn`` in either, the DSN is derived from ``DATABASES["default"]`` when it is
    PostgreSQL; otherwise ``dsn`` stays None and ``no_dsn`` says why, for the app to raise
    when it starts (a project that only runs ``manage.py migrate`` on SQLite must not fail).
    Unknown keys and values that cannot work raise ``ConfigurationError`` at once.
    """
    env = os.environ if environ is None else environ
    values = _asyncjobs_dict(asyncjobs)
    worker_env = tuple(_coerce_names(values.pop("worker_env", env.get("ASYNCJOBS_WORKER_ENV"))))
    values["worker_env"] = worker_env + tuple(n for n in DJANGO_ENV if n not in worker_env)
    no_dsn = None
    if values.get("dsn") is None and not env.get("ASYNCJOBS_DSN"):
        try:
            values["dsn"] = dsn_from_database(databases, env, socket_dirs)
        except ConfigurationError as exc:
            values.pop("dsn", None)
            no_dsn = exc.why
    return DjangoSettings(Settings.from_env(env, **values), no_dsn)


def dsn_from_database(
    databases: Mapping[str, Any] | None,
    environ: Mapping[str, str] | None = None,
    socket_dirs: Sequence[str] = SOCKET_DIRS,
) -> str:
    """The Postgres URL of ``DATABASES["default"]``: its NAME, USER, PASSWORD, HOST and PORT,
    and the SSL options of its OPTIONS (``sslmode``, ``sslrootcert``, ``sslcert``,
    ``sslkey``). Other OPTIONS are not carried over (asyncjobs names its tables with its own
    ``schema`` setting, whatever ``search_path`` Django's connection sets).

    An empty HOST means a local socket, as for libpq: ``PGHOST``, else the first of
    ``socket_dirs`` that holds the server's socket, else localhost. Raises
    ``ConfigurationError`` when the database is not PostgreSQL or names no database.
    """
    env = os.environ if environ is None else environ
    where = f"DATABASES[{DATABASE_ALIAS!r}]"
    db = (databases or {}).get(DATABASE_ALIAS)
    if not isinstance(db, Mapping):
        raise _no_dsn(f"settings.ASYNCJOBS has no 'dsn' and there is no {where}")
    engine = str(db.get("ENGINE") or "")
    if "postgres" not in engine and "postgis" not in engine:
        raise _no_dsn(
            f"settings.ASYNCJOBS has no 'dsn' and {where} uses {engine or 'no ENGINE'!r}, not "
            "PostgreSQL"
        )
    options: Mapping[str, Any] = db.get("OPTIONS") or {}
    name = db.get("NAME")
    if not name or options.get("service"):
        raise _no_dsn(
            f"settings.ASYNCJOBS has no 'dsn' and {where} "
            + ("names a connection service" if options.get("service") else "has no NAME")
        )
    port = str(db.get("PORT") or "")
    host = str(db.get("HOST") or "") or env.get("PGHOST", "")
    if not host:
        host = _local_socket(port or env.get("PGPORT", ""), socket_dirs)
    query = {key: str(options[key]) for key in _DSN_OPTIONS if options.get(key)}
    netloc = ""
    if db.get("USER"):
        netloc = quote(str(db["USER"]), safe="")
        if db.get("PASSWORD"):
            netloc += ":" + quote(str(db["PASSWORD"]), safe="")
        netloc += "@"
    if host.startswith("/"):
        query["host"] = host  # a socket directory is a query parameter, not a host name
        if port:
            query["port"] = port
    else:
        netloc += f"[{host}]" if ":" in host else host
        if port:
            netloc += f":{port}"
    dsn = f"postgresql://{netloc}/{quote(str(name), safe='')}"
    return f"{dsn}?{urlencode(query)}" if query else dsn


def _asyncjobs_dict(asyncjobs: Any) -> dict[str, Any]:
    if asyncjobs is None:
        return {}
    if not isinstance(asyncjobs, Mapping):
        raise ConfigurationError(
            "ASYNCJOBS",
            asyncjobs,
            "settings.ASYNCJOBS must be a dict of asyncjobs settings, like "
            "{'concurrency': 200, 'queues': 'default,cpu=4'}",
        )
    for key in asyncjobs:
        if key not in _SETTING_NAMES:
            close = difflib.get_close_matches(str(key), _SETTING_NAMES, n=1)
            hint = f"Did you mean {close[0]!r}? " if close else ""
            known = ", ".join(sorted(_SETTING_NAMES))
            raise ConfigurationError(
                f"ASYNCJOBS[{key!r}]",
                asyncjobs[key],
                f"settings.ASYNCJOBS has a key that names no asyncjobs setting. {hint}Known "
                f"settings: {known}",
            )
    values = dict(asyncjobs)
    if values.get("dsn") is None:
        values.pop("dsn", None)  # "dsn": None means "not given", not "override ASYNCJOBS_DSN"
    return values


def _coerce_names(value: Any) -> list[str]:
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    return [str(item).strip() for item in items if str(item).strip()]


def _local_socket(port: str, socket_dirs: Sequence[str]) -> str:
    for directory in socket_dirs:
        if os.path.exists(os.path.join(directory, f".s.PGSQL.{port or 5432}")):
            return directory
    return "localhost"


def _no_dsn(why: str) -> ConfigurationError:
    return ConfigurationError(
        "dsn",
        None,
        f"{why}. Set ASYNCJOBS['dsn'] in the Django settings (or ASYNCJOBS_DSN) to the Postgres "
        "database asyncjobs should use, like postgresql://user@host:5432/dbname",
    )
