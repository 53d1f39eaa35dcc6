"""The ``asyncjobs`` command: run a node, enqueue a job, migrate, manage schedules, workflows.

Every command takes the settings flags (``--dsn``, ``--schema``, ...) and reads ``ASYNCJOBS_*``
variables; flags win. Errors are printed as one sentence, never as a traceback, and the exit
status says what happened: 0 ok, 1 the job or command failed, 2 bad usage or configuration,
3 the database cannot be reached.

The package holds one module per group of commands (node, jobs, monitoring, schedules,
workflows), each with its commands' functions and their parsers; ``common`` holds what they
share. This module builds the parser, runs a command and maps its errors to the exit status.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import anyio

from ..errors import (
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
from . import jobs, monitoring, node, schedules, workflows
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    _command,
    import_plugins,
    load_app,
    settings_changes,
)
from .common import _open_store as _open_store  # dashboard/cli.py opens the store with it
from .jobs import cmd_cancel, cmd_enqueue, cmd_jobs, cmd_purge, cmd_retry, cmd_show
from .monitoring import cmd_report, cmd_status
from .node import cmd_migrate, cmd_node
from .schedules import cmd_schedules
from .workflows import cmd_workflow

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "CliError",
    "build_parser",
    "cmd_cancel",
    "cmd_enqueue",
    "cmd_jobs",
    "cmd_migrate",
    "cmd_node",
    "cmd_purge",
    "cmd_report",
    "cmd_retry",
    "cmd_schedules",
    "cmd_show",
    "cmd_status",
    "cmd_workflow",
    "import_plugins",
    "load_app",
    "main",
    "run_command",
    "settings_changes",
]


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

    # One adder per command, next to its function; this order is the order of `asyncjobs --help`.
    for add in (
        node.add_node,
        jobs.add_enqueue,
        node.add_migrate,
        schedules.add_schedules,
        jobs.add_jobs,
        jobs.add_show,
        jobs.add_cancel,
        jobs.add_purge,
        jobs.add_retry,
        monitoring.add_status,
        monitoring.add_report,
        workflows.add_workflow,
    ):
        add(sub)

    from ..loadtest.cli import add_parser as add_loadtest_parser  # its own flags (loadtest/cli.py)

    add_loadtest_parser(sub)

    from ..dashboard.cli import add_command  # light: the dashboard's extra loads when it runs

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
    except BrokenPipeError:
        # The reader went away (`asyncjobs show ID | head`): stop quietly, as a filter does,
        # and point stdout at /dev/null so the interpreter's last flush finds no pipe either.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return EXIT_BROKEN_PIPE


EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a filter cut short


def _backend_options() -> dict[str, Any]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return {}
    return {"use_uvloop": True}


def _fail(message: str, code: int) -> int:
    print(f"asyncjobs: {message}", file=sys.stderr)
    return code
