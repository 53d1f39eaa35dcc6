"""The commands about single jobs: enqueue, jobs (the list), show, cancel, purge, retry."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from ..admin import DEFAULT_PURGE_STATES, check_queue, describe_purge, purge, purge_states
from ..clock import to_datetime
from ..errors import JobNotFoundError
from ..jobs import JobId, JobState, coerce_job_id
from ..monitoring import created_since, record_detail, record_summary, step_summary
from ..store.base import TERMINAL_STATES, JobQuery
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    CliError,
    _command,
    _configured_app,
    _open_store,
    _print_json,
    _print_rows,
)

if TYPE_CHECKING:
    from .common import Subparsers


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


def add_enqueue(sub: Subparsers) -> None:
    """Register ``asyncjobs enqueue``."""
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


def add_jobs(sub: Subparsers) -> None:
    """Register ``asyncjobs jobs``."""
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


async def cmd_show(args: argparse.Namespace) -> int:
    (job_id,) = _parse_ids([args.id])
    async with _open_store(args) as store:
        record = await store.get(job_id)
        steps = await store.job_steps(job_id) if record is not None else []
    if record is None:
        raise JobNotFoundError(job_id)
    if args.json:
        _print_json(record_detail(record, steps))
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
    if steps:
        print(f"  steps    {len(steps)}")
        _print_rows([
            ("#", "NAME", "KIND", "STATE", "ATTEMPT", "STARTED (UTC)", "ENDED (UTC)", "ERROR"),
            *((str(s.seq), s.name, s.kind, s.state, str(s.attempt), _step_time(s.started_at),
               _step_time(s.finished_at), step_summary(s)["error"] or "") for s in steps),
        ])  # fmt: skip
    return EXIT_OK


def _step_time(when: float | None) -> str:
    return "-" if when is None else f"{to_datetime(when):%Y-%m-%d %H:%M:%S.%f}"[:-3]


def add_show(sub: Subparsers) -> None:
    """Register ``asyncjobs show``."""
    p = sub.add_parser(
        "show",
        help="one job: arguments, result or error with traceback, attempts, node, timings",
    )
    p.add_argument("id", help="the job's id")
    p.add_argument("--json", action="store_true", help="print JSON")
    _command(p, cmd_show)


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


def add_cancel(sub: Subparsers) -> None:
    """Register ``asyncjobs cancel``."""
    p = sub.add_parser("cancel", help="cancel jobs by id (running ones are stopped by their node)")
    p.add_argument("ids", nargs="+", metavar="ID", help="job ids")
    p.add_argument("--reason", default="cancelled from the command line", help="stored on each job")
    _command(p, cmd_cancel)


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


def add_purge(sub: Subparsers) -> None:
    """Register ``asyncjobs purge``."""
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


def add_retry(sub: Subparsers) -> None:
    """Register ``asyncjobs retry``."""
    p = sub.add_parser("retry", help="queue failed or lost jobs again, for one more attempt")
    p.add_argument("ids", nargs="+", metavar="ID", help="job ids")
    _command(p, cmd_retry)
