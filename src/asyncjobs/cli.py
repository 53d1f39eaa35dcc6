"""The ``asyncjobs`` command: run a node, enqueue a job, migrate, manage schedules, workflows.

Every command takes the settings flags (``--dsn``, ``--schema``, ...) and reads ``ASYNCJOBS_*``
variables; flags win. Errors are printed as one sentence, never as a traceback, and the exit
status says what happened: 0 ok, 1 the job or command failed, 2 bad usage or configuration,
3 the database cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import anyio
import orjson

from .admin import DEFAULT_PURGE_STATES, check_queue, describe_purge, purge, purge_states
from .app import App, make_store
from .app import import_plugins as _import_plugins
from .clock import to_datetime
from .errors import (
    AsyncJobsError,
    ConfigurationError,
    InvalidArgumentError,
    InvalidJobOptionError,
    JobNotFoundError,
    PayloadError,
    ScheduleNotFoundError,
    StoreUnavailableError,
    UnknownJobError,
    WorkflowNotFoundError,
)
from .jobs import JobId, JobState, coerce_job_id
from .monitoring import (
    CPU_BOUND_FROM,
    IO_BOUND_BELOW,
    age,
    classify,
    created_since,
    duration_s,
    error_line,
    record_detail,
    record_summary,
    snapshot,
    snapshot_json,
)
from .settings import Settings
from .store.base import TERMINAL_STATES, JobQuery, ScheduleRecord, Store
from .workflows import MAX_FAILURES_SHOWN, WorkflowStatus, status_from

log = logging.getLogger("asyncjobs.cli")

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


# -- commands -------------------------------------------------------------------------------------


def _configured_app(args: argparse.Namespace) -> App:
    """The app named by --app, with the --plugins imported and the settings flags applied."""
    app = load_app(args.app)
    import_plugins(args.plugins)
    app.configure(**settings_changes(args))
    return app


async def cmd_node(args: argparse.Namespace) -> int:
    app = _configured_app(args)
    stop = anyio.Event()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        name = signal.Signals(signum).name
        if signals_seen == 1:
            log.info(
                "%s received: stopping (no new jobs; running jobs get %g s to finish)",
                name,
                app.settings.shutdown_grace_s,
            )
            stop.set()
        else:
            log.warning("%s received again: cancelling running jobs now", name)
            if app.node is not None:
                app.node.stop(grace=0.0)

    dashboard = None
    if args.dashboard_port is not None:  # checked before anything starts
        from .dashboard.cli import load_server

        dashboard = load_server(None, args.dashboard_host, args.dashboard_port, "--dashboard-port")
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await app.start()
        node = app.node
        async with anyio.create_task_group() as tg:
            if dashboard is not None:
                serve, token, sock = dashboard
                url = await tg.start(partial(serve, app.store, token, sock=sock))
                log.info("dashboard on %s", url)
            await _wait_any(stop.wait(), node.wait_stopped())
            tg.cancel_scope.cancel()
    finally:
        await app.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return EXIT_OK


async def _wait_any(*awaitables: Coroutine[Any, Any, Any]) -> None:
    async with anyio.create_task_group() as tg:

        async def run(aw: Coroutine[Any, Any, Any]) -> None:
            await aw
            tg.cancel_scope.cancel()

        for aw in awaitables:
            tg.start_soon(run, aw)


async def cmd_enqueue(args: argparse.Namespace) -> int:
    app = _configured_app(args)
    positional, keyword = _parse_call_args(args.args, args.kwargs)
    await app.start(node=False)
    try:
        job_id = await app.enqueue(
            args.name,
            *positional,
            queue=args.queue,
            priority=args.priority,
            delay=args.delay,
            unique_key=args.unique_key,
            **keyword,
        )
        if args.json:
            _print_json({"id": str(job_id)})
        else:
            print(job_id)
        if args.wait is not None:
            result = await app.result(job_id, timeout=args.wait or None)
            if args.json:
                _print_json({"id": str(job_id), "state": "succeeded", "result": result})
            else:
                print(orjson.dumps(result).decode())
    finally:
        await app.stop()
    return EXIT_OK


def _parse_call_args(
    raw_args: str | None, raw_kwargs: str | None
) -> tuple[list[Any], dict[str, Any]]:
    positional: list[Any] = []
    keyword: dict[str, Any] = {}
    if raw_args:
        try:
            positional = orjson.loads(raw_args)
        except orjson.JSONDecodeError as exc:
            raise CliError(f"--args {raw_args!r} is not valid JSON ({exc})") from None
        if not isinstance(positional, list):
            raise CliError(f"--args must be a JSON array, like '[1, \"two\"]', not {raw_args!r}")
    if raw_kwargs:
        try:
            keyword = orjson.loads(raw_kwargs)
        except orjson.JSONDecodeError as exc:
            raise CliError(f"--kwargs {raw_kwargs!r} is not valid JSON ({exc})") from None
        if not isinstance(keyword, dict):
            raise CliError(
                f'--kwargs must be a JSON object, like \'{{"vm": "a"}}\', not {raw_kwargs!r}'
            )
    return positional, keyword


@asynccontextmanager
async def _open_store(args: argparse.Namespace) -> AsyncIterator[Store]:
    """The store the settings name, open, for commands that run no app."""
    store = make_store(_settings_for(args))
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def cmd_migrate(args: argparse.Namespace) -> int:
    async with _open_store(args) as store:
        applied = await store.migrate()
    where = store.description
    print(f"applied {', '.join(applied)} to {where}" if applied else f"{where} is up to date")
    return EXIT_OK


async def cmd_schedules(args: argparse.Namespace) -> int:
    async with _open_store(args) as store:
        if args.action == "list":
            records = await store.list_schedules()
            if args.json:
                _print_json([r._asdict() for r in records])
            else:
                _print_schedules(records)
            return EXIT_OK
        paused = args.action == "pause"
        if not await store.pause_schedule(args.name, paused, time.time()):
            raise ScheduleNotFoundError(args.name)
        print(f"schedule {args.name} {'paused' if paused else 'resumed'}")
        return EXIT_OK


def _parse_ids(values: Sequence[str]) -> list[JobId]:
    try:
        return [coerce_job_id(v) for v in values]
    except ValueError as exc:
        raise CliError(f"{exc}; pass job ids as printed by enqueue or `asyncjobs jobs`") from None


def _since_bound(value: str | None) -> JobId | None:
    if value is None:
        return None
    try:
        return created_since(value)
    except ValueError as exc:
        raise CliError(f"--since {exc}") from None


async def cmd_jobs(args: argparse.Namespace) -> int:
    if args.state is not None and args.state not in JobState.__members__.values():
        states = ", ".join(s.value for s in JobState)
        raise CliError(f"--state {args.state!r} is not a job state; use one of {states}")
    if not 1 <= args.limit <= 10_000:
        raise CliError(f"--limit {args.limit} must be 1 to 10,000")
    query = JobQuery(
        args.state, args.queue, args.name, _since_bound(args.since),
        _parse_ids([args.before])[0] if args.before else None, args.limit,
    )  # fmt: skip
    async with _open_store(args) as store:
        records = await store.list_jobs(query)
    if args.json:
        page = [record_summary(r) for r in records]
        _print_json(
            {"jobs": page, "next": str(records[-1].id) if len(records) == args.limit else None}
        )
        return EXIT_OK
    rows = [("ID", "NAME", "QUEUE", "STATE", "ATTEMPT", "CREATED (UTC)", "FINISHED (UTC)")]
    for r in records:
        rows.append(
            (str(r.id), r.name, r.queue, r.state.value, f"{r.attempt}/{r.max_attempts}",
             f"{r.created_at:%Y-%m-%d %H:%M:%S}",
             f"{r.finished_at:%Y-%m-%d %H:%M:%S}" if r.finished_at else "-")
        )  # fmt: skip
    if records:
        _print_rows(rows)
    else:
        print("no jobs match")
    if len(records) == args.limit:
        print(f"more: --before {records[-1].id}")
    return EXIT_OK


async def cmd_show(args: argparse.Namespace) -> int:
    (job_id,) = _parse_ids([args.id])
    async with _open_store(args) as store:
        record = await store.get(job_id)
    if record is None:
        raise JobNotFoundError(job_id)
    if args.json:
        _print_json(record_detail(record))
        return EXIT_OK
    r = record
    print(f"job {r.id}: {r.name} [{r.state.value}]")
    print(f"  queue {r.queue}, priority {r.priority}, attempt {r.attempt} of {r.max_attempts}")
    call = ", ".join([*(repr(a) for a in r.args), *(f"{k}={v!r}" for k, v in r.kwargs.items())])
    print(f"  call  {r.name}({call})")
    for label, when in (("created", r.created_at), ("run at", r.run_at),
                        ("started", r.started_at), ("finished", r.finished_at)):  # fmt: skip
        if when is not None:
            print(f"  {label:<8} {when:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC")
    if r.queue_wait_s is not None:
        print(f"  waited   {r.queue_wait_s:.3f} s in the queue")
    if r.wall_s is not None:
        cpu = "" if r.cpu_s is None else f", {r.cpu_s:.3f} s of CPU"
        print(f"  ran      {r.wall_s:.3f} s{cpu}")
    if r.node_id:
        print(f"  node     {r.node_id}")
    if r.workflow_id:
        print(f"  workflow {r.workflow_id} (step {r.step})")
    if r.reason:
        print(f"  reason   {r.reason}")
    if r.state is JobState.SUCCEEDED:
        print(f"  result   {orjson.dumps(r.result).decode()}")
    if r.error:
        print(f"  error    {r.error.get('type')}: {r.error.get('message')}")
        if r.error.get("traceback"):
            print("\n".join("    " + line for line in r.error["traceback"].rstrip().splitlines()))
    return EXIT_OK


async def cmd_cancel(args: argparse.Namespace) -> int:
    ids = _parse_ids(args.ids)
    missing = 0
    async with _open_store(args) as store:
        for job_id in ids:
            state = await store.cancel(job_id, args.reason, time.time())
            if state is None:
                missing += 1
                print(f"{job_id}: no such job", file=sys.stderr)
            elif state is JobState.RUNNING:
                print(f"{job_id}: running; its node was asked to cancel it")
            else:
                print(f"{job_id}: {state.value}")
    return EXIT_FAILED if missing else EXIT_OK


async def cmd_retry(args: argparse.Namespace) -> int:
    ids = _parse_ids(args.ids)
    async with _open_store(args) as store:
        again = set(await store.retry_jobs(ids, time.time()))
        for job_id in ids:
            if job_id in again:
                print(f"{job_id}: queued again")
                continue
            record = await store.get(job_id)
            if record is None:
                print(f"{job_id}: no such job", file=sys.stderr)
            else:
                print(
                    f"{job_id}: not retried: it is {record.state.value} (only failed or lost "
                    "jobs are, and not while another unfinished job holds their unique key)",
                    file=sys.stderr,
                )
    return EXIT_OK if len(again) == len(ids) else EXIT_FAILED


async def cmd_purge(args: argparse.Namespace) -> int:
    queue = check_queue("purge", args.queue)
    states = purge_states(args.state or DEFAULT_PURGE_STATES)
    async with _open_store(args) as store:
        finished = any(s in TERMINAL_STATES for s in states)
        counts = await store.count_jobs(queue, finished)
        planned = {s: counts[s] for s in states}
        if not sum(planned.values()):
            print(f"queue {queue!r} has no {' or '.join(states)} jobs; nothing to delete")
            return EXIT_OK
        if not args.yes:
            what = ", ".join(f"{n:,} {s}" for s, n in planned.items())
            if not sys.stdin.isatty():
                raise CliError(
                    f"purge would delete {what} jobs from queue {queue!r}; pass --yes to "
                    "confirm (it asks only on a terminal)"
                )
            # Blocking the loop is harmless here, and a thread would outlive a Ctrl-C.
            answer = input(  # noqa: ASYNC250
                f"Delete {what} jobs from queue {queue!r}? Running jobs are never touched. [y/N] "
            )
            if answer.strip().lower() not in ("y", "yes"):
                print("nothing deleted")
                return EXIT_FAILED
        deleted = await purge(store, queue, states)
    print(describe_purge(queue, deleted))
    return EXIT_OK


async def cmd_status(args: argparse.Namespace) -> int:
    async with _open_store(args) as store:
        snap = await snapshot(store)
    if args.json:
        _print_json(snapshot_json(snap))
        return EXIT_OK
    now = snap.taken_at
    print("queues:" if snap.queues else "no unfinished jobs")
    rows: list[tuple[str, ...]] = [
        ("QUEUE", "QUEUED", "PARKED", "RUNNING", "SCHEDULED", "OLDEST WAIT")
    ]
    for q in snap.queues:
        wait = "-" if q.oldest_queued_at is None else age(now - q.oldest_queued_at)
        rows.append((q.queue, str(q.queued), str(q.parked), str(q.running), str(q.scheduled), wait))
    if snap.queues:
        _print_rows(rows)
    tp = snap.throughput
    counts = ", ".join(f"{n:,} {outcome}" for outcome, n in sorted(tp.finished.items()))
    print(
        f"finished over the last {tp.window_s:.0f} s: {tp.per_s:,.1f} jobs/s"
        + (f" ({counts})" if counts else "")
    )
    print("nodes:" if snap.nodes else "no node is up")
    rows = [("NODE", "HOST", "PID", "QUEUES", "RUNNING", "WORKERS", "HEARTBEAT", "UP FOR")]
    for n in snap.nodes:
        rows.append(
            (str(n.id), n.host, str(n.pid), ",".join(n.queues), f"{n.running}/{n.concurrency}",
             str(n.workers), f"{age(n.heartbeat_age_s)} ago", age(now - n.started_at))
        )  # fmt: skip
    if snap.nodes:
        _print_rows(rows)
    keys = snap.busy_keys
    print("busy concurrency keys (running / limit):" if keys else "no concurrency key is busy")
    rows = [("KEY", "RUNNING", "HOLDERS")]
    for k in keys:
        holders = ", ".join(f"{name} {job_id} on node {node}" for job_id, name, node in k.holders)
        rows.append((k.key, f"{k.running}/{k.limit}", holders))
    if keys:
        _print_rows(rows)
    buckets = snap.rate_buckets
    print("rate limits:" if buckets else "no rate-limited job has started yet")
    rows = [("BUCKET", "RATE", "NEXT START")]
    for b in buckets:
        budget = "free now" if b.ahead_s <= 0 else f"booked {b.ahead_s:.2f} s ahead"
        rows.append((b.key, f"{b.starts}/{b.period_s:g}s", budget))
    if buckets:
        _print_rows(rows)
    print("recent failures:" if snap.failures else "no recent failures")
    rows = [("JOB", "NAME", "STATE", "ENDED", "ERROR")]
    for r in snap.failures:
        ended = "-" if r.finished_at is None else f"{age(now - r.finished_at.timestamp())} ago"
        rows.append((str(r.id), r.name, r.state.value, ended, error_line(r)))
    if snap.failures:
        _print_rows(rows)
    return EXIT_OK


async def cmd_report(args: argparse.Namespace) -> int:
    seconds = _duration_s(args.since, "--since")
    async with _open_store(args) as store:
        stats = await store.job_stats(time.time() - seconds)
    rows_out = [classify(s) for s in stats]
    if args.json:
        _print_json(
            {
                "since_s": seconds,
                "jobs": [
                    {**c.stats._asdict(), "cpu_share": c.cpu_share, "kind": c.kind}
                    for c in rows_out
                ],
            }
        )
        return EXIT_OK
    if not rows_out:
        print(f"no job finished in the last {args.since}")
        return EXIT_OK
    print(
        f"jobs finished in the last {args.since}, by CPU time over run time "
        f"(CPU-bound from {CPU_BOUND_FROM:.0%}, IO-bound up to {IO_BOUND_BELOW:.0%}):"
    )
    rows: list[tuple[str, ...]] = [
        ("NAME", "KIND", "CPU/RUN", "ATTEMPTS", "FAILED", "AVG WAIT", "AVG RUN", "AVG CPU",
         "MAX RUN")
    ]  # fmt: skip
    for c in rows_out:
        s = c.stats
        share = "-" if c.cpu_share is None else f"{c.cpu_share:.0%}"
        avg_cpu = f"{s.cpu_s / s.timed * 1000:,.1f} ms" if s.timed else "-"
        rows.append(
            (s.name, c.kind, share, f"{s.attempts:,}", f"{s.failed:,}",
             f"{s.wait_s / s.attempts * 1000:,.1f} ms", f"{s.wall_s / s.attempts * 1000:,.1f} ms",
             avg_cpu, f"{s.max_wall_s * 1000:,.1f} ms")
        )  # fmt: skip
    _print_rows(rows)
    return EXIT_OK


def _duration_s(value: str, flag: str) -> float:
    try:
        return duration_s(value)
    except ValueError as exc:
        raise CliError(f"{flag} {exc}") from None


def _print_rows(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


async def cmd_workflow(args: argparse.Namespace) -> int:
    try:
        workflow_id = coerce_job_id(args.id)
    except ValueError:
        raise CliError(
            f"{args.id!r} is not a workflow id (a UUID, as `app.submit` returns it)"
        ) from None
    async with _open_store(args) as store:
        if args.action == "cancel":
            if await store.workflow_info(workflow_id) is None:
                raise WorkflowNotFoundError(workflow_id)
            cancelled, stopping = await store.cancel_workflow(workflow_id, args.reason, time.time())
            print(
                f"workflow {workflow_id}: {cancelled} jobs cancelled, "
                f"{stopping} running jobs asked to stop"
            )
            return EXIT_OK
        info = await store.workflow_info(workflow_id)
        if info is None:
            raise WorkflowNotFoundError(workflow_id)
        status = status_from(info, await store.workflow_failures(workflow_id, MAX_FAILURES_SHOWN))
    if args.json:
        fields = {name: getattr(status, name) for name in status.__dataclass_fields__}
        _print_json({**fields, "failures": [f._asdict() for f in status.failures]})
    else:
        _print_workflow(status)
    return EXIT_OK


def _print_workflow(status: WorkflowStatus) -> None:
    name = f" ({status.name})" if status.name else ""
    print(f"workflow {status.id}{name}: {status.state}")
    print(f"created {status.created_at:%Y-%m-%d %H:%M:%S} UTC, {status.total} jobs")
    counts = [f"{state} {n}" for state, n in status.counts.items() if n]
    print("  " + (", ".join(counts) or "no jobs"))
    if status.failures:
        print("failed steps (cancelled dependents not listed):")
    for f in status.failures:
        why = f.reason or ""
        if f.error:
            why = f"{f.error.get('type', '')}: {f.error.get('message', '')}".strip(": ")
        print(
            f"  {f.step or '-'} [{f.name} {f.id}] {f.state}: {why.splitlines()[0] if why else ''}"
        )


def _print_schedules(records: Sequence[ScheduleRecord]) -> None:
    if not records:
        print("no schedules (nodes record theirs when they start)")
        return
    header = ("NAME", "JOB", "WHEN", "STATE", "NEXT FIRE (UTC)", "LAST FIRE (UTC)", "RUNS",
              "MISSED", "SKIPPED")  # fmt: skip
    rows = [header]
    for r in records:
        rows.append(
            (r.name, r.job, r.spec, "paused" if r.paused else "active", _utc(r.next_fire_at),
             _utc(r.last_fire_at), str(r.fired), str(r.missed), str(r.skipped))
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return to_datetime(ts).strftime("%Y-%m-%d %H:%M:%S")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asyncjobs",
        description="asyncjobs: a Postgres-backed job runner. Settings come from ASYNCJOBS_* "
        "environment variables; flags override them.",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("ASYNCJOBS_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO (default), WARNING or ERROR",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "node",
        help="run a node: claim and run jobs until SIGTERM",
        description="Run a node. It migrates the schema, then claims and runs "
        "jobs from its queues. SIGTERM or SIGINT stops it gracefully (no new "
        "jobs; running jobs get --shutdown-grace seconds); a second signal "
        "cancels running jobs at once.",
    )
    _add_app_flags(p, required=True)
    _add_settings_flags(p, node=True)
    p.set_defaults(func=cmd_node)

    p = sub.add_parser(
        "enqueue",
        help="enqueue one job and print its id",
        description="Enqueue one job by name and print its id.",
    )
    p.add_argument("name", help="the job's registered name")
    p.add_argument("--args", help="positional arguments as a JSON array, e.g. '[1, \"a\"]'")
    p.add_argument("--kwargs", help='keyword arguments as a JSON object, e.g. \'{"vm": "a"}\'')
    p.add_argument("--queue", help="override the job's queue")
    p.add_argument("--priority", type=int, help="override the job's priority (higher first)")
    p.add_argument("--delay", type=float, help="run after this many seconds")
    p.add_argument(
        "--unique-key",
        dest="unique_key",
        help="skip if an unfinished job holds this key (its id is printed)",
    )
    p.add_argument(
        "--wait",
        type=float,
        nargs="?",
        const=0.0,
        metavar="SECONDS",
        help="wait for the result and print it (optionally at most SECONDS)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    _command(p, cmd_enqueue, app_required=True)

    p = sub.add_parser(
        "migrate",
        help="create or upgrade the tables (safe to repeat)",
        description="Apply pending schema migrations. Safe to run on every "
        "deploy and from several machines at once.",
    )
    _command(p, cmd_migrate)

    p = sub.add_parser(
        "schedules",
        help="list, pause or resume recurring schedules",
        description="Show the schedules the nodes have declared (next and last fire, runs, "
        "missed and skipped fire times), or pause and resume one. Resuming does not catch up "
        "the fire times of the pause.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every schedule and its state")
    listing.add_argument("--json", action="store_true", help="print JSON")
    for action in ("pause", "resume"):
        one = actions.add_parser(action, help=f"{action} a schedule by name")
        one.add_argument("name", help="the schedule's name")
    for each in actions.choices.values():
        _command(each, cmd_schedules)

    p = sub.add_parser(
        "jobs",
        help="list jobs, newest first, with filters",
        description="List jobs, newest first. Pages are keyset-paginated: pass the id printed "
        "after 'more:' as --before for the next page.",
    )
    p.add_argument("--state", help="one state: scheduled, waiting, queued, running, succeeded, "
                   "failed, cancelled, lost")  # fmt: skip
    p.add_argument("--queue", help="one queue")
    p.add_argument("--name", help="one job name")
    p.add_argument("--since", help="created within a duration (30m, 2h, 1d) or since an ISO time")
    p.add_argument("--before", help="the id after which to continue (the next page)")
    p.add_argument("--limit", type=int, default=50, help="jobs per page (default 50)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _command(p, cmd_jobs)

    p = sub.add_parser(
        "show",
        help="one job: arguments, result or error with traceback, attempts, node, timings",
    )
    p.add_argument("id", help="the job's id")
    p.add_argument("--json", action="store_true", help="print JSON")
    _command(p, cmd_show)

    p = sub.add_parser("cancel", help="cancel jobs by id (running ones are stopped by their node)")
    p.add_argument("ids", nargs="+", metavar="ID", help="job ids")
    p.add_argument("--reason", default="cancelled from the command line", help="stored on each job")
    _command(p, cmd_cancel)

    p = sub.add_parser(
        "purge",
        help="delete a queue's jobs in some states (queued by default; never running ones)",
        description="Delete the jobs of QUEUE in the states given (--state, repeatable; "
        "default queued): scheduled, waiting, queued, or finished ones (succeeded, failed, "
        "cancelled, lost). Running jobs are never touched. The dependents of a purged job "
        "that had not run are cancelled. Shows what it will delete and asks first on a "
        "terminal; elsewhere it needs --yes.",
    )
    p.add_argument("queue", metavar="QUEUE", help="the queue to purge")
    p.add_argument(
        "--state", action="append", metavar="STATE",
        help="a state to purge (repeat for several; default queued)",
    )  # fmt: skip
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _command(p, cmd_purge)

    p = sub.add_parser("retry", help="queue failed or lost jobs again, for one more attempt")
    p.add_argument("ids", nargs="+", metavar="ID", help="job ids")
    _command(p, cmd_retry)

    p = sub.add_parser(
        "status",
        help="queues, throughput, nodes, busy concurrency keys, rate limits, recent failures",
        description="Show each queue's unfinished jobs (queued, parked, running, scheduled) and "
        "oldest wait; the jobs/s the nodes finished over the last minute; the nodes that are "
        "up, with their running jobs, pool workers and heartbeat; the concurrency keys that "
        "have running jobs, with the jobs holding them; each rate bucket's rate and next free "
        "start; and the most recent failures. Read through indexes and the nodes' statistics "
        "only: as fast with millions of finished jobs as with none.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    _command(p, cmd_status)

    p = sub.add_parser(
        "report",
        help="reports over the nodes' statistics (cpu-vs-io)",
        description="cpu-vs-io: for each job name, the attempts finished over a recent period, "
        "their average queue wait, run time and CPU time, and whether the job is CPU-bound "
        "(CPU time at least half its run time: give it to the process pool) or IO-bound (at "
        "most a tenth: a coroutine is right). Read from the per-node statistics, not the jobs.",
    )
    p.add_argument("kind", choices=["cpu-vs-io"], help="the report")
    p.add_argument("--since", default="1h", help="the period: 30m, 1h (default), 2d, ...")
    p.add_argument("--json", action="store_true", help="print JSON")
    _command(p, cmd_report)

    p = sub.add_parser(
        "workflow",
        help="show or cancel a workflow",
        description="Show a workflow's state, its jobs counted by state and the steps that "
        "failed (with their errors), or cancel every step that has not finished.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="a workflow's state, counts and failed steps")
    show.add_argument("id", help="the workflow's id")
    show.add_argument("--json", action="store_true", help="print JSON")
    cancel = actions.add_parser("cancel", help="cancel every unfinished step of a workflow")
    cancel.add_argument("id", help="the workflow's id")
    cancel.add_argument("--reason", default="workflow cancelled", help="stored on each job")
    for each in actions.choices.values():
        _command(each, cmd_workflow)

    from .loadtest.cli import add_parser as add_loadtest_parser  # its own flags (loadtest/cli.py)

    add_loadtest_parser(sub)

    from .dashboard.cli import add_command  # light: the dashboard's extra loads when it runs

    add_command(sub, _command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    level = getattr(logging, str(args.log_level).upper(), None)
    if not isinstance(level, int):
        print(
            f"asyncjobs: --log-level {args.log_level!r} is not one of DEBUG, INFO, WARNING, ERROR",
            file=sys.stderr,
        )
        return EXIT_USAGE
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_command(args.func, args)


def run_command(
    func: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: argparse.Namespace
) -> int:
    try:
        return anyio.run(func, args, backend="asyncio", backend_options=_backend_options())
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except (
        ConfigurationError,
        InvalidArgumentError,
        UnknownJobError,
        InvalidJobOptionError,
        PayloadError,
        ScheduleNotFoundError,
        WorkflowNotFoundError,
        JobNotFoundError,
    ) as exc:
        return _fail(f"{exc}", EXIT_USAGE)  # the command was given something that cannot work
    except StoreUnavailableError as exc:
        return _fail(str(exc), EXIT_UNAVAILABLE)
    except AsyncJobsError as exc:  # a job that failed, a result that did not come, ...
        return _fail(str(exc), EXIT_FAILED)
    except KeyboardInterrupt:
        return 130


def _backend_options() -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def _fail(message: str, code: int) -> int:
    print(f"asyncjobs: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
