"""Settings: one frozen dataclass, validated, loadable from ``ASYNCJOBS_*`` variables.

Every default is a named constant with its unit. ``Settings.validate()`` rejects nonsense with a
sentence; unknown keys (in code or in the environment) are an error, never ignored.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigurationError
from .serialization import DEFAULT_MAX_PAYLOAD_BYTES
from .setting_values import (
    MEMORY_DSN,
    check_dsn,
    check_int,
    check_off_or_at_least,
    check_queue_name,
    check_seconds,
    format_queues,
    mask_dsn,
    parse_queues,
)

DEFAULT_DSN = None  # no default: a node must be told where its database is
DEFAULT_SCHEMA = "public"
DEFAULT_TABLE_PREFIX = "asyncjobs_"
DEFAULT_QUEUE = "default"

CONCURRENCY = 100  # coroutine jobs running at once per node; never derived from the core count
CLAIM_BATCH_SIZE = 500  # most jobs claimed in one round trip
POLL_INTERVAL_S = 2.0  # claim even without a NOTIFY this often (a missed notification costs this)
HEARTBEAT_INTERVAL_S = 5.0  # the node updates its own row this often
NODE_TIMEOUT_S = 30.0  # a node silent this long may be reaped by any other node
SHUTDOWN_GRACE_S = 30.0  # on SIGTERM, running jobs get this long to finish before cancellation
CANCEL_GRACE_S = 10.0  # a cancelled or timed-out job gets this long to clean up, then is abandoned
CONNECT_TIMEOUT_S = 5.0  # per connection attempt
POOL_MIN_SIZE = 2  # Postgres connections kept open (the LISTEN connection is extra)
POOL_MAX_SIZE = 10
ENQUEUE_BATCH_SIZE = 1000  # most concurrent enqueue() calls coalesced into one INSERT
RETENTION_S = 7 * 24 * 3600.0  # finished jobs are kept this long, then pruned
PRUNE_INTERVAL_S = 60.0  # each node looks for jobs to prune this often
# The process pool for isolated jobs. Sizes are explicit, never derived from the core count.
WORKERS_MIN = 1  # warm workers kept even when idle
WORKERS_MAX = 4  # most worker processes, so most isolated jobs running at once
WORKER_IDLE_TIMEOUT_S = 60.0  # a worker idle this long is stopped (down to workers_min)
ZYGOTE_START_TIMEOUT_S = 300.0  # imports plus preload hooks (a big model takes a while)
MAX_JOBS_PER_WORKER = 1000  # a worker is replaced after about this many jobs (+/-10%)
MAX_WORKER_USS_BYTES = 512 * 1024 * 1024  # private memory after which a worker is replaced
WORKER_ADDRESS_SPACE_BYTES = 4 * 1024**3  # RLIMIT_AS: a job allocating more gets MemoryError
WORKER_CPU_SECONDS = 3600  # RLIMIT_CPU over a worker's life; it retires at half
WORKER_OPEN_FILES = 1024  # RLIMIT_NOFILE

ENV_PREFIX = "ASYNCJOBS_"
# Variables under the prefix that are not settings: read by the CLI, and ASYNCJOBS_TEST_* by
# test tooling.
ENV_NOT_SETTINGS = frozenset({"ASYNCJOBS_APP", "ASYNCJOBS_LOG_LEVEL", "ASYNCJOBS_DASHBOARD_TOKEN"})
ENV_TEST_PREFIX = "ASYNCJOBS_TEST_"

_NAME_RE = re.compile(r"[a-z_][a-z0-9_]{0,39}")  # used with fullmatch
_MAX_CONCURRENCY = 1_000_000
_MAX_SCHEMA_AND_PREFIX = 63 - len(".events")  # the channel is "<schema>.<prefix>events"
_MODULE_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")  # fullmatch
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # fullmatch


@dataclass(frozen=True, slots=True)
class Settings:
    """How an app connects, and how its node runs. Every field has a documented default.

    Build one with keyword arguments, from the environment with ``Settings.from_env()``, or
    derive one with ``settings.replace(field=value)``. All three validate.
    """

    dsn: str | None = DEFAULT_DSN
    """Postgres URL (``postgresql://user@host:5432/db``), or ``memory://`` for the MemoryStore."""
    schema: str = DEFAULT_SCHEMA
    """Postgres schema that holds the tables."""
    table_prefix: str = DEFAULT_TABLE_PREFIX
    """Prefix of every table, type and channel name, so several apps can share a schema."""
    concurrency: int = CONCURRENCY
    """Most coroutine jobs a node runs at once, over all its queues."""
    queues: tuple[tuple[str, int | None], ...] = ((DEFAULT_QUEUE, None),)
    """Queues the node serves, each with its own limit (None: only the node limit applies)."""
    claim_batch_size: int = CLAIM_BATCH_SIZE
    poll_interval_s: float = POLL_INTERVAL_S
    heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S
    node_timeout_s: float = NODE_TIMEOUT_S
    shutdown_grace_s: float = SHUTDOWN_GRACE_S
    cancel_grace_s: float = CANCEL_GRACE_S
    connect_timeout_s: float = CONNECT_TIMEOUT_S
    pool_min_size: int = POOL_MIN_SIZE
    pool_max_size: int = POOL_MAX_SIZE
    enqueue_batch_size: int = ENQUEUE_BATCH_SIZE
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    retention_s: float = RETENTION_S
    """Finished jobs older than this are deleted, in small batches, by any node."""
    prune_interval_s: float = PRUNE_INTERVAL_S
    plugins: tuple[str, ...] = ()
    """Modules imported when the app starts, so that the jobs they declare register
    (``--plugins plugins_example.cpu,plugins_example.model``)."""
    workers_min: int = WORKERS_MIN
    """Pool worker processes kept warm for isolated jobs, even when idle."""
    workers_max: int = WORKERS_MAX
    """Most pool worker processes, and so most isolated jobs running at once on a node."""
    worker_idle_timeout_s: float = WORKER_IDLE_TIMEOUT_S
    zygote_start_timeout_s: float = ZYGOTE_START_TIMEOUT_S
    max_jobs_per_worker: int = MAX_JOBS_PER_WORKER
    max_worker_uss_bytes: int = MAX_WORKER_USS_BYTES
    """A worker whose private memory (USS, not RSS) passes this is replaced after its job;
    0 turns the check off."""
    worker_address_space_bytes: int = WORKER_ADDRESS_SPACE_BYTES
    """RLIMIT_AS of each worker (0: inherit). Counts the shared preload too."""
    worker_cpu_seconds: int = WORKER_CPU_SECONDS
    """RLIMIT_CPU of each worker (0: inherit). A worker retires once it used half."""
    worker_open_files: int = WORKER_OPEN_FILES
    worker_processes: int = 0
    """RLIMIT_NPROC of each worker (0: inherit). Counts every process of the worker's user,
    and is not enforced for root: set ``worker_user`` too when the node runs as root."""
    worker_user: str = ""
    """Run workers as this user when the node runs as root (empty: the node's user)."""
    worker_env: tuple[str, ...] = ()
    """Names of extra environment variables passed to the zygote and workers. Everything
    else (the DSN and any secret) is withheld; ``ASYNCJOBS_*`` names are refused."""
    migrate_on_start: bool = True
    """``App.start()`` applies pending migrations (idempotent; several processes may race).
    Turn off where the app's database user may not change the schema, and run
    ``asyncjobs migrate`` on deploy instead."""
    measure_cpu: bool = True
    """Measure each coroutine job's CPU time: the time its steps hold the event loop (two
    reads of the monotonic clock per step; see ``asyncjobs.node.cputime``). Pool jobs always
    report theirs."""
    metrics_port: int = 0
    """Serve Prometheus metrics at ``http://metrics_host:metrics_port/metrics`` from the
    node (needs ``asyncjobs[metrics]``); 0 (the default) serves none."""
    metrics_host: str = "127.0.0.1"
    """The address the metrics endpoint listens on (``0.0.0.0`` for every interface)."""
    tracing: bool = False
    """Make OpenTelemetry spans: one per enqueue (and per ``enqueue_many`` and ``submit``) and
    one per attempt a node runs, joined through the trace context stored in the job's row
    (``ASYNCJOBS_TRACING=1``; needs ``asyncjobs[otel]``; see ``asyncjobs.tracing``). Off,
    nothing of OpenTelemetry is imported and no job pays for it."""
    hook_timeout_s: float = 5.0
    """The longest one call of a lifecycle hook (``@app.on_event``) may take before it is
    abandoned and logged; hooks never hold up jobs, whatever this is."""
    extra: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Free-form values for users' own code; asyncjobs never reads them."""

    def __post_init__(self) -> None:
        if not (isinstance(self.queues, tuple) and all(isinstance(q, tuple) for q in self.queues)):
            # Accept "a,b=5", {"a": None, "b": 5} and ["a", ("b", 5)] as well as the tuple form.
            object.__setattr__(self, "queues", _coerce("queues", self.queues))
        for name in _LIST_FIELDS:
            if not isinstance(getattr(self, name), tuple):
                object.__setattr__(self, name, _coerce(name, getattr(self, name)))
        self.validate()

    # -- construction ----------------------------------------------------------------------

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied, validated. Unknown names are an error."""
        unknown = set(changes) - _FIELD_NAMES
        if unknown:
            raise _unknown_setting(sorted(unknown)[0])
        coerced = {k: _coerce(k, v) for k, v in changes.items()}
        return dataclasses.replace(self, **coerced)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``ASYNCJOBS_<FIELD>`` variables, then apply ``overrides`` on top.

        An ``ASYNCJOBS_`` variable that names no setting is an error, so that a typo such as
        ``ASYNCJOBS_CONCURENCY`` is caught instead of silently ignored.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for key, raw in env.items():
            if not key.startswith(ENV_PREFIX) or key in ENV_NOT_SETTINGS:
                continue
            if key.startswith(ENV_TEST_PREFIX):
                continue
            name = key[len(ENV_PREFIX) :].lower()
            if name not in _FIELD_NAMES or name == "extra":
                raise ConfigurationError(
                    key, raw, f"no setting is called {name!r}. Known settings: {_known()}"
                )
            values[name] = _coerce(name, raw)
        unknown = set(overrides) - _FIELD_NAMES
        if unknown:
            raise _unknown_setting(sorted(unknown)[0])
        values.update({k: _coerce(k, v) for k, v in overrides.items()})
        return cls(**values)

    # -- validation ------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ``ConfigurationError`` for the first setting that cannot work."""
        if self.dsn is not None:
            check_dsn(self.dsn)
        for name in ("schema", "table_prefix"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
                raise ConfigurationError(
                    name,
                    value,
                    "use 1 to 40 lower-case letters, digits or underscores, not starting with "
                    "a digit (it becomes part of SQL identifiers)",
                )
        if len(self.schema) + len(self.table_prefix) > _MAX_SCHEMA_AND_PREFIX:
            raise ConfigurationError(
                "table_prefix",
                self.table_prefix,
                f"schema and table prefix together must fit in {_MAX_SCHEMA_AND_PREFIX} "
                f"characters (they name the NOTIFY channel, which Postgres limits to 63 "
                f"bytes); {self.schema!r} + {self.table_prefix!r} is "
                f"{len(self.schema) + len(self.table_prefix)}",
            )
        check_int("concurrency", self.concurrency, 1, _MAX_CONCURRENCY)
        check_int("claim_batch_size", self.claim_batch_size, 1, 10_000)
        check_int("pool_min_size", self.pool_min_size, 1, 1000)
        check_int("pool_max_size", self.pool_max_size, 2, 1000)
        if self.pool_min_size > self.pool_max_size:
            raise ConfigurationError(
                "pool_min_size", self.pool_min_size, "it is larger than pool_max_size"
            )
        check_int("enqueue_batch_size", self.enqueue_batch_size, 1, 100_000)
        check_int("max_payload_bytes", self.max_payload_bytes, 64, 256 * 1024 * 1024)
        for name in (
            "poll_interval_s",
            "heartbeat_interval_s",
            "node_timeout_s",
            "shutdown_grace_s",
            "cancel_grace_s",
            "connect_timeout_s",
            "prune_interval_s",
        ):
            check_seconds(name, getattr(self, name), allow_zero=name == "shutdown_grace_s")
        if (
            isinstance(self.retention_s, bool)
            or not isinstance(self.retention_s, int | float)
            or math.isnan(self.retention_s)
            or not 1 <= self.retention_s <= 100 * 365 * 86400
        ):
            raise ConfigurationError(
                "retention_s", self.retention_s, "use seconds between 1 and a hundred years"
            )
        if self.node_timeout_s < 2 * self.heartbeat_interval_s:
            raise ConfigurationError(
                "node_timeout_s",
                self.node_timeout_s,
                f"it must be at least twice heartbeat_interval_s ({self.heartbeat_interval_s:g}"
                " s), or live nodes would be reaped between two heartbeats",
            )
        check_int("metrics_port", self.metrics_port, 0, 65535)
        if not isinstance(self.metrics_host, str) or not self.metrics_host:
            raise ConfigurationError(
                "metrics_host", self.metrics_host, "give an address, such as 127.0.0.1"
            )
        if not isinstance(self.tracing, bool):
            raise ConfigurationError("tracing", self.tracing, "use true or false")
        if (
            isinstance(self.hook_timeout_s, bool)
            or not isinstance(self.hook_timeout_s, int | float)
            or not 0 < self.hook_timeout_s <= 3600
        ):
            raise ConfigurationError(
                "hook_timeout_s", self.hook_timeout_s, "use seconds between 0 and 3600"
            )
        self._validate_pool()
        if not self.queues:
            raise ConfigurationError("queues", self.queues, "a node needs at least one queue")
        seen: set[str] = set()
        for name, limit in self.queues:
            check_queue_name(name, field_name="queues")
            if name in seen:
                raise ConfigurationError("queues", name, "this queue is listed twice")
            seen.add(name)
            if limit is not None:
                check_int(f"queues[{name!r}]", limit, 1, _MAX_CONCURRENCY)

    def _validate_pool(self) -> None:
        for module in self.plugins:
            if not isinstance(module, str) or not _MODULE_RE.fullmatch(module):
                raise ConfigurationError(
                    "plugins", module, "expected dotted module names, like plugins_example.cpu"
                )
        check_int("workers_min", self.workers_min, 0, 1000)
        check_int("workers_max", self.workers_max, 1, 1000)
        if self.workers_min > self.workers_max:
            raise ConfigurationError(
                "workers_min",
                self.workers_min,
                f"it is larger than workers_max ({self.workers_max})",
            )
        check_seconds("worker_idle_timeout_s", self.worker_idle_timeout_s)
        check_seconds("zygote_start_timeout_s", self.zygote_start_timeout_s)
        check_int("max_jobs_per_worker", self.max_jobs_per_worker, 1, 1_000_000_000)
        check_off_or_at_least("max_worker_uss_bytes", self.max_worker_uss_bytes, 16 * 1024**2)
        check_off_or_at_least(
            "worker_address_space_bytes", self.worker_address_space_bytes, 256 * 1024**2
        )
        check_off_or_at_least("worker_cpu_seconds", self.worker_cpu_seconds, 1)
        check_int("worker_open_files", self.worker_open_files, 16, 1_048_576)
        check_off_or_at_least("worker_processes", self.worker_processes, 1)
        if not isinstance(self.worker_user, str):
            raise ConfigurationError("worker_user", self.worker_user, "expected a user name")
        for name in self.worker_env:
            if not isinstance(name, str) or not _ENV_NAME_RE.fullmatch(name):
                raise ConfigurationError("worker_env", name, "expected environment variable names")
            if name.upper().startswith(ENV_PREFIX):
                raise ConfigurationError(
                    "worker_env",
                    name,
                    "asyncjobs' own variables (the DSN among them) never reach pool workers",
                )

    # -- helpers used by the node ------------------------------------------------------------

    @property
    def queue_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.queues)

    def describe(self) -> dict[str, Any]:
        """Settings as plain data, with the DSN's password masked (for logs and `--help`)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out["dsn"] = mask_dsn(self.dsn) if self.dsn else None
        out["queues"] = format_queues(self.queues)
        return out


_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Settings))


def _known() -> str:
    return ", ".join(sorted(_FIELD_NAMES - {"extra"}))


def _unknown_setting(name: str) -> ConfigurationError:
    return ConfigurationError(name, "...", f"no setting has this name. Known settings: {_known()}")


def _coerce(name: str, value: Any) -> Any:
    """Turn strings (from the environment or the CLI) into the field's type."""
    if name == "queues":
        if isinstance(value, str):
            return parse_queues(value)
        if isinstance(value, Mapping):
            return tuple(value.items())
        return tuple((q, None) if isinstance(q, str) else tuple(q) for q in value)
    if name in _LIST_FIELDS:
        items = value.split(",") if isinstance(value, str) else value
        return tuple(str(item).strip() for item in items if str(item).strip())
    if not isinstance(value, str):
        return value
    kind = _FIELD_TYPES.get(name)
    if kind is None:
        return value
    try:
        if kind is bool:
            lowered = value.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        return kind(value)
    except ValueError:
        raise ConfigurationError(
            name, value, f"expected {'true or false' if kind is bool else kind.__name__}"
        ) from None


_LIST_FIELDS = frozenset({"plugins", "worker_env"})  # "a,b" in the environment and on the CLI

# The scalar settings, read from their annotations (strings, under postponed annotations), so
# that a new int, float or bool setting is parsed from ASYNCJOBS_* without another edit here.
_SCALARS: dict[str, type] = {"int": int, "float": float, "bool": bool}
_FIELD_TYPES: dict[str, type] = {
    f.name: _SCALARS[str(f.type)] for f in dataclasses.fields(Settings) if f.type in _SCALARS
}


__all__ = [  # the value checks live in setting_values.py; others import them from here too
    "MEMORY_DSN",
    "Settings",
    "check_dsn",
    "check_queue_name",
    "check_seconds",
    "format_queues",
    "mask_dsn",
    "parse_queues",
]
