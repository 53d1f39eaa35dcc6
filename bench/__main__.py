"""``python -m bench``: run the benchmarks, print one table, write JSON and RESULTS.md.

    python -m bench                          # everything, full size (what `make bench` runs)
    python -m bench --only drain,latency     # some of them
    python -m bench --quick                  # small sizes: checks the scripts work

Full-size runs rewrite ``bench/RESULTS.md``; ``--quick`` runs never do (their numbers mean
nothing), and their JSON is marked ``"quick": true``. A run of some benchmarks (``--only``)
replaces their figures there and keeps the others' from their newest full-size run.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import traceback
from collections.abc import Coroutine
from types import ModuleType
from typing import Any, TypeVar

import uvloop

from . import (
    cluster_drain,
    concurrent_sleepers,
    dashboard,
    drain,
    drain_history,
    durable,
    enqueue_concurrent,
    enqueue_many,
    enqueue_sequential,
    latency,
    limits,
    pg_restart,
    pool,
    pool_memory,
    reap,
    report,
    storage,
    workflows,
)
from .common import (
    DEFAULT_DSN,
    Context,
    ensure_database,
    figure_docs,
    machine_info,
    timestamp,
    write_results,
)

BENCHMARKS: dict[str, ModuleType] = {
    m.NAME: m
    for m in (
        drain,
        drain_history,
        enqueue_sequential,
        enqueue_concurrent,
        enqueue_many,
        latency,
        concurrent_sleepers,
        reap,
        cluster_drain,
        pg_restart,
        pool,
        pool_memory,
        workflows,
        durable,
        limits,
        storage,
        dashboard,
    )
}
REPEATS = 3
QUICK_REPEATS = 2  # two, so the median/min/max path is exercised too

T = TypeVar("T")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the asyncjobs benchmarks; print a table, write JSON and RESULTS.md.",
    )
    parser.add_argument(
        "--only",
        metavar="NAME,...",
        help=f"comma-separated benchmarks to run (default: all of {', '.join(BENCHMARKS)})",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the scripts")
    parser.add_argument(
        "--dsn",
        default=DEFAULT_DSN,
        help="database to use; created if missing (default: %(default)s)",
    )
    parser.add_argument("--repeats", type=int, help=f"runs per figure (default {REPEATS})")
    args = parser.parse_args(argv)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BENCHMARKS]
        if unknown:
            parser.error(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHMARKS)}")
        args.names = names
    else:
        args.names = list(BENCHMARKS)
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else REPEATS
    elif args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def _run(coro: Coroutine[Any, Any, T]) -> T:
    # A fresh uvloop loop per benchmark: nothing one leaves behind can slow the next.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    command = shlex.join(sys.orig_argv)
    _run(ensure_database(args.dsn))
    ctx = Context(
        dsn=args.dsn,
        quick=args.quick,
        repeats=args.repeats,
        command=command,
        machine=_run(machine_info(args.dsn)),
    )
    run_stamp = timestamp()
    figures: list[dict[str, Any]] = []
    failed = []
    for position, name in enumerate(args.names):
        print(f"{name} ({'quick, ' if args.quick else ''}{args.repeats} repeats)", flush=True)
        try:
            measured = _run(BENCHMARKS[name].run(ctx))
        except Exception:
            # One broken benchmark should not cost the others' results.
            traceback.print_exc()
            failed.append(name)
            figures.append({"error": name})
            continue
        docs = figure_docs(name, measured, ctx)
        path = write_results(name, docs, ctx, run_stamp, position)
        print(f"    -> {path.relative_to(path.parents[2])}", flush=True)
        figures.extend(docs)
    print()
    report.render(figures, order=list(BENCHMARKS), failed=failed, write=not args.quick)
    if args.quick:
        print("\n(quick run: bench/RESULTS.md left as it was)")
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
