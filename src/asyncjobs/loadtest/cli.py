"""``asyncjobs loadtest``: its flags, their checks, and the command.

Registered by ``asyncjobs.cli.build_parser`` through ``add_parser``. Errors are printed as one
sentence (``asyncjobs: ...``), never a traceback: 2 for a bad flag or mix, 3 when the database
cannot be reached. The command exits 0 when the run went through (however the cluster did) and
1 if a node it started died during the run.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigurationError
from ..settings import MEMORY_DSN, check_dsn
from .errors import EXIT_USAGE, LoadTestError

if TYPE_CHECKING:
    from .run import RunConfig

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

DEFAULT_NODES = 1
DEFAULT_CONCURRENCY = 100
DEFAULT_WORKERS = 2
DEFAULT_IN_FLIGHT = 50
DEFAULT_DURATION_S = 10.0
TIMEOUT_MARGIN_S = 60.0  # default --timeout: the duration plus this
JOBS_TIMEOUT_S = 600.0  # default --timeout of a run bounded by --jobs only
MAX_NODES = 64

EXAMPLE = """\
examples:
  asyncjobs loadtest --dsn postgresql://postgres@127.0.0.1/app --duration 10
  asyncjobs loadtest --nodes 2 --concurrency 200 --rate 500 --duration 30 \\
      --mix io=0.8,cpu=0.1,workflow=0.1 --fail-rate 0.01 --json report.json
  asyncjobs loadtest --nodes 0 --schema lt --in-flight 100 --jobs 5000   # nodes already up
"""


def add_parser(sub: Subparsers) -> argparse.ArgumentParser:
    """Register ``loadtest`` on the ``asyncjobs`` command's subparsers."""
    p = sub.add_parser(
        "loadtest",
        help="drive a cluster with a job mix; report throughput, latency and memory",
        description="Start N local nodes (or drive nodes already running), enqueue a mix of "
        "IO-bound, CPU-bound (process pool) and workflow jobs at a fixed rate or with a fixed "
        "number in flight, show progress live, then report throughput, latency percentiles "
        "(enqueue to start, enqueue to finish), errors by kind and node memory. It runs in a "
        "schema of its own, dropped at the end unless --keep.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    db = p.add_argument_group("database")
    db.add_argument("--dsn", help="Postgres URL (default: ASYNCJOBS_DSN)")
    db.add_argument(
        "--schema",
        help="schema to run in (default: a new loadtest_<random> schema). A schema the run "
        "creates is dropped at the end unless --keep; an existing one is left in place",
    )
    db.add_argument("--table-prefix", default="asyncjobs_", help="default asyncjobs_")
    db.add_argument("--keep", action="store_true", help="keep the schema the run created")

    nodes = p.add_argument_group("nodes")
    nodes.add_argument(
        "--nodes",
        type=int,
        default=DEFAULT_NODES,
        help=f"local nodes to start (default {DEFAULT_NODES}); 0 drives nodes already running "
        "on --schema, started with `asyncjobs node --app asyncjobs.loadtest.jobs:app`",
    )
    nodes.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help=f"jobs at once per started node (default {DEFAULT_CONCURRENCY})",
    )
    nodes.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help=f"pool workers per started node, for the CPU jobs (default {DEFAULT_WORKERS})",
    )

    mix = p.add_argument_group("job mix (flags override --mix-file)")
    mix.add_argument(
        "--mix",
        help="fractions of submissions per kind, adding up to 1: "
        "io=0.7,cpu=0.2,workflow=0.1 (default io=1)",
    )
    mix.add_argument(
        "--mix-file", help="a TOML file with any of: mix, io_sleep, cpu_work, fail_rate, workflow"
    )
    mix.add_argument(
        "--io-sleep",
        help="IO job sleep (s): 0.01, uniform:0.001:0.05 or exp:0.02 (default exp:0.01)",
    )
    mix.add_argument("--cpu-work", help="loop iterations of a CPU job (default 100000)")
    mix.add_argument("--fail-rate", help="fraction of jobs that raise (default 0)")
    mix.add_argument(
        "--workflow", help="workflow shape: chain:N, group:N or chord:N (default chain:4)"
    )

    load = p.add_argument_group("load")
    loop = load.add_mutually_exclusive_group()
    loop.add_argument("--rate", type=float, help="open loop: submissions per second")
    loop.add_argument(
        "--in-flight",
        type=int,
        help=f"closed loop: submissions in flight (default {DEFAULT_IN_FLIGHT})",
    )
    load.add_argument(
        "--duration",
        type=float,
        help=f"seconds of load (default {DEFAULT_DURATION_S:g} unless --jobs)",
    )
    load.add_argument(
        "--jobs", type=int, help="submissions to send (with --duration: whichever comes first)"
    )
    load.add_argument(
        "--timeout",
        type=float,
        help="hard limit on the whole run, in seconds; "
        f"then it reports what it has (default: duration + {TIMEOUT_MARGIN_S:g}, "
        f"or {JOBS_TIMEOUT_S:g} with --jobs alone)",
    )
    load.add_argument("--seed", type=int, help="random seed of the mix (default: random)")

    out = p.add_argument_group("output")
    out.add_argument("--json", metavar="FILE", help="write the full report as JSON")
    out.add_argument(
        "--plot",
        metavar="FILE.png",
        help="write a chart of throughput, latency "
        "and memory over time (needs the plot extra: matplotlib)",
    )
    out.add_argument("--quiet", action="store_true", help="no live progress on stderr")
    p.set_defaults(func=cmd_loadtest)
    return p


async def cmd_loadtest(args: argparse.Namespace) -> int:
    """Run the load test the flags describe, print the report, write the files."""
    # Imported here, not with the parser: every asyncjobs command builds the parser.
    from .run import run_loadtest

    try:
        cfg = config_from_args(args)
        report = await run_loadtest(cfg)
    except (LoadTestError, ConfigurationError) as exc:
        print(f"asyncjobs: {exc}", file=sys.stderr)
        return getattr(exc, "code", EXIT_USAGE)
    from .output import render_text, write_json, write_plot

    print(render_text(report))
    if args.json:
        write_json(report, args.json)
    if args.plot:
        write_plot(report, args.plot)
    return 1 if any(n["exit_status"] is not None for n in report["nodes"]) else 0


def _fail(message: str, code: int = EXIT_USAGE) -> LoadTestError:
    return LoadTestError(message, code)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Check the flags and build the run's configuration; a bad one raises
    ``LoadTestError`` (or its ``MixError``) with the sentence to print."""
    from .mix import build_mix
    from .run import RunConfig

    dsn = args.dsn or os.environ.get("ASYNCJOBS_DSN")
    if not dsn:
        raise _fail(
            "no database given: pass --dsn postgresql://user@host:5432/db or set ASYNCJOBS_DSN"
        )
    if dsn == MEMORY_DSN:
        raise _fail("--dsn memory:// cannot reach nodes in other processes; give a Postgres URL")
    check_dsn(dsn)
    if not 0 <= args.nodes <= MAX_NODES:
        raise _fail(f"--nodes {args.nodes} is out of range; use 0 to {MAX_NODES}")
    if args.nodes == 0 and not args.schema:
        raise _fail("--nodes 0 drives nodes already running, so give their --schema")
    _check_int("--concurrency", args.concurrency, 1, 1_000_000)
    _check_int("--workers", args.workers, 1, 1000)
    if args.rate is not None and not (math.isfinite(args.rate) and 0 < args.rate <= 1e6):
        raise _fail(
            f"--rate {args.rate:g} is out of range; give submissions per second, above 0 "
            "and at most 1e6"
        )
    in_flight = args.in_flight
    if args.rate is None and in_flight is None:
        in_flight = DEFAULT_IN_FLIGHT
    if in_flight is not None:
        _check_int("--in-flight", in_flight, 1, 1_000_000)
    duration = args.duration
    if duration is None and args.jobs is None:
        duration = DEFAULT_DURATION_S
    if duration is not None:
        _check_seconds("--duration", duration)
    if args.jobs is not None:
        _check_int("--jobs", args.jobs, 1, 1_000_000_000)
    timeout = args.timeout
    if timeout is None:
        timeout = duration + TIMEOUT_MARGIN_S if duration is not None else JOBS_TIMEOUT_S
    _check_seconds("--timeout", timeout)
    mix = build_mix(
        file=args.mix_file,
        mix=args.mix,
        io_sleep=args.io_sleep,
        cpu_work=args.cpu_work,
        fail_rate=args.fail_rate,
        workflow=args.workflow,
    )
    _check_outputs(args, needs_psutil=args.nodes > 0)
    schema = args.schema or f"loadtest_{secrets.token_hex(4)}"
    return RunConfig(
        dsn=dsn,
        schema=schema,
        table_prefix=args.table_prefix,
        nodes=args.nodes,
        concurrency=args.concurrency,
        workers=args.workers,
        mix=mix,
        rate=args.rate,
        in_flight=None if args.rate is not None else in_flight,
        duration=duration,
        jobs=args.jobs,
        timeout=timeout,
        seed=args.seed if args.seed is not None else secrets.randbits(32),
        keep=args.keep,
        show_progress=not args.quiet,
    )


def _check_outputs(args: argparse.Namespace, *, needs_psutil: bool) -> None:
    """Fail before the run, not after it, if a result could not be written."""
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path and not Path(path).resolve().parent.is_dir():
            raise _fail(f"{flag} {path!r}: its folder does not exist; create it first")
    if args.plot:
        from .output import plot_available

        if not plot_available():
            raise _fail("--plot needs matplotlib: pip install 'asyncjobs[plot]'")
    if needs_psutil:
        try:
            import psutil  # noqa: F401
        except ImportError:
            raise _fail(
                "the load test samples its nodes' memory with psutil: pip install "
                "'asyncjobs[loadtest]' (or drive nodes already running with --nodes 0)"
            ) from None


def _check_int(flag: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise _fail(f"{flag} {value} is out of range; use {low:,} to {high:,}")


def _check_seconds(flag: str, value: float) -> None:
    if not (math.isfinite(value) and 0 < value <= 7 * 86400):
        raise _fail(f"{flag} {value:g} is not a duration; give seconds, more than 0")
