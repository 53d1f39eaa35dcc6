"""``python -m bench.peers`` (``make bench-peers``): asyncjobs and its peers, side by side.

    python -m bench.peers                    # everything, full size: rewrites bench/RESULTS.md
    python -m bench.peers --quick            # small sizes, to check the harness works
    python -m bench.peers --peers arq --only drain,latency

For each workload and repeat, every system runs once, in an order that rotates from one
repeat to the next, so that drift on the machine reaches all of them alike. Each run is a
side (``<system>_side.py``) in its own process, with its system's Python, bounded in time; a
run that fails or overruns marks its cell with the reason and the rest goes on. The table
gives each system's median and the ratio asyncjobs / peer for each figure. JSON goes to
``bench/results/peers-<timestamp>.json`` (and, for a full-size run, ``results/latest/``),
and a full-size run rewrites RESULTS.md's "Peers side by side" section.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from bench.common import (
    DEFAULT_DSN,
    LATEST_DIR,
    REPO_ROOT,
    RESULTS_DIR,
    ensure_database,
    machine_info,
    timestamp,
)

from . import report, venvs
from .side_common import RESULT_PREFIX

SYSTEMS = ("asyncjobs", "procrastinate", "arq", "celery")
PEERS = SYSTEMS[1:]
DEFAULT_REDIS = "redis://127.0.0.1:6379"
# Redis databases: arq's, and Celery's broker (its result backend takes the next one).
REDIS_DB = {"arq": 10, "celery": 11}
REPEATS = 3
QUICK_REPEATS = 1
RUN_BUDGET_S = 3600.0  # past this, the cells left are marked as skipped

# Per workload: its parameters (full size, quick) and the time one run of it may take.
WORKLOADS: dict[str, dict[str, Any]] = {
    "enqueue_sequential": {"full": {"n": 2_000}, "quick": {"n": 200}, "warmup": 50},
    "enqueue_concurrent": {"full": {"n": 10_000}, "quick": {"n": 1_000}, "tasks": 100},
    "enqueue_bulk": {"full": {"n": 10_000}, "quick": {"n": 1_000}, "warmup": 500},
    "drain": {"full": {"n": 10_000}, "quick": {"n": 1_000}, "timeout": 240},
    "latency": {
        "full": {"n": 1_000},
        "quick": {"n": 100},
        "rate": 200.0,
        "warmup": 20,
        "idle_s": 0.3,
        "timeout": 60,
    },
    "memory": {
        "full": {"n": 10_000},
        "quick": {"n": 1_000},
        "settle_s": 0.5,
        "sleep_s": 600.0,  # outlasts the slowest fill: every sleeper is still in flight
        "timeout": 300,
    },
}
# RSS per job varies by well under 1% from run to run (the suite's runs: 2,746-2,766 B), and
# procrastinate takes over a minute and a half to start 10,000 jobs here: one run is enough.
REPEATS_AT_MOST = {"memory": 1}
RUN_TIMEOUT_S = {"drain": 420.0, "memory": 420.0}
DEFAULT_RUN_TIMEOUT_S = 180.0
CLEANUP_TIMEOUT_S = 60.0


# A figure: (name, what it is, unit, workload, how to read it from a result, higher is better).
Figure = tuple[str, str, str, str, Callable[[dict[str, Any]], float], bool]
FIGURES: list[Figure] = [
    ("drain", "drain of no-op jobs", "jobs/s", "drain", lambda r: r["jobs_per_s"], True),
    (
        "enqueue_sequential",
        "enqueue, one caller",
        "jobs/s",
        "enqueue_sequential",
        lambda r: r["jobs_per_s"],
        True,
    ),
    (
        "enqueue_concurrent",
        "enqueue, 100 concurrent callers",
        "jobs/s",
        "enqueue_concurrent",
        lambda r: r["jobs_per_s"],
        True,
    ),
    (
        "enqueue_bulk",
        "enqueue, bulk call",
        "jobs/s",
        "enqueue_bulk",
        lambda r: r["jobs_per_s"],
        True,
    ),
    ("latency_p50", "latency at 200 jobs/s, p50", "ms", "latency", lambda r: r["p50_ms"], False),
    ("latency_p99", "latency at 200 jobs/s, p99", "ms", "latency", lambda r: r["p99_ms"], False),
    (
        "memory_per_job",
        "memory per in-flight job",
        "B/job",
        "memory",
        lambda r: r["bytes_per_job"],
        False,
    ),
    (
        "storage_queued",
        "storage per queued job",
        "B/job",
        "drain",
        lambda r: r["storage_queued"]["per_job"],
        False,
    ),
    (
        "storage_finished",
        "storage per finished job",
        "B/job",
        "drain",
        lambda r: r["storage_finished"]["per_job"],
        False,
    ),
]
# What a peer does not offer: no cell, and no error either.
NOT_OFFERED = {("arq", "enqueue_bulk"): "arq has no call that enqueues many jobs at once"}


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.peers",
        description="Run asyncjobs and its peers side by side; print a table, write JSON.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the harness")
    parser.add_argument("--repeats", type=int, help=f"runs per figure (default {REPEATS})")
    parser.add_argument(
        "--peers", default=",".join(PEERS), help="comma-separated peers (default: all)"
    )
    parser.add_argument(
        "--only", help=f"comma-separated workloads (default: all of {', '.join(WORKLOADS)})"
    )
    parser.add_argument("--dsn", default=DEFAULT_DSN, help="Postgres (default: %(default)s)")
    parser.add_argument("--redis", default=DEFAULT_REDIS, help="Redis (default: %(default)s)")
    args = parser.parse_args(argv)
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = [p for p in args.peers if p not in PEERS]
    if unknown:
        parser.error(f"unknown peer {unknown[0]!r}; known: {', '.join(PEERS)}")
    args.workloads = (
        [w.strip() for w in args.only.split(",") if w.strip()] if args.only else list(WORKLOADS)
    )
    unknown = [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload {unknown[0]!r}; known: {', '.join(WORKLOADS)}")
    if args.repeats is None:
        args.repeats = QUICK_REPEATS if args.quick else REPEATS
    elif args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


# -- running a side ------------------------------------------------------------------------------


class SideFailed(Exception):
    """A side's run failed or overran; the message is the reason for its cell."""


def _python(system: str) -> str:
    return sys.executable if system == "asyncjobs" else str(venvs.python(system))


def _connection(system: str, args: argparse.Namespace) -> dict[str, Any]:
    if system in REDIS_DB:
        return {"redis_url": f"{args.redis.rstrip('/')}/{REDIS_DB[system]}"}
    return {"dsn": args.dsn}


def run_side(system: str, workload: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One run of ``workload`` by ``system``'s side; its result, or ``SideFailed``."""
    cmd = [
        _python(system),
        "-m",
        f"bench.peers.{system}_side",
        workload,
        "--params",
        json.dumps(params),
    ]
    # A session of its own, so an overrun ends the side and every worker it started.
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=err, start_new_session=True
        )
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _end_session(proc)
            raise SideFailed(f"gave up after {timeout:g} s") from None
        except BaseException:
            _end_session(proc)
            raise
        finally:
            _end_session(proc)  # workers a side left behind, if any
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    for line in reversed(out.decode(errors="replace").splitlines()):
        if line.startswith(RESULT_PREFIX):
            return dict(json.loads(line[len(RESULT_PREFIX) :]))
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    print("\n".join(f"      | {ln}" for ln in lines[-12:]), file=sys.stderr)
    reason = lines[-1] if lines else f"exit status {proc.returncode}, no output"
    raise SideFailed(reason[:200])


def _end_session(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


# -- the run -------------------------------------------------------------------------------------


def _params(workload: str, system: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = WORKLOADS[workload]
    size = spec["quick"] if args.quick else spec["full"]
    rest = {k: v for k, v in spec.items() if k not in ("full", "quick")}
    return size | rest | _connection(system, args)


def _prepare(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Each system's versions and settings, or the reason it cannot run."""
    systems: dict[str, dict[str, Any]] = {}
    for system in ["asyncjobs", *args.peers]:
        print(f"{system}: preparing", flush=True)
        try:
            if system != "asyncjobs":
                venvs.ensure(system)
            systems[system] = run_side(system, "info", _connection(system, args), 120.0)
        except (venvs.PeerUnavailable, SideFailed) as exc:
            print(f"    {system} unavailable: {exc}", flush=True)
            systems[system] = {"error": str(exc)}
    return systems


def _measure(
    args: argparse.Namespace, systems: dict[str, dict[str, Any]]
) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """Every workload, repeat and system: {workload: {system: [result or {"error"}, ...]}}."""
    deadline = time.monotonic() + RUN_BUDGET_S
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    order = [s for s in systems if "error" not in systems[s]]
    for workload in args.workloads:
        raw[workload] = {s: [] for s in systems}
        for repeat in range(min(args.repeats, REPEATS_AT_MOST.get(workload, args.repeats))):
            shift = repeat % len(order) if order else 0
            for system in order[shift:] + order[:shift]:
                cell = raw[workload][system]
                if (system, workload) in NOT_OFFERED:
                    continue
                if cell and "error" in cell[-1]:
                    continue  # it failed once: the later repeats would only fail again
                if time.monotonic() > deadline:
                    cell.append({"error": f"skipped: the run's {RUN_BUDGET_S:g} s budget is spent"})
                    continue
                timeout = RUN_TIMEOUT_S.get(workload, DEFAULT_RUN_TIMEOUT_S)
                t0 = time.monotonic()
                try:
                    result = run_side(system, workload, _params(workload, system, args), timeout)
                except SideFailed as exc:
                    result = {"error": str(exc)}
                cell.append(result)
                took = time.monotonic() - t0
                print(
                    f"    {workload} #{repeat + 1} {system}: {_brief(workload, result)} "
                    f"({took:.1f} s)",
                    flush=True,
                )
    return raw


def _brief(workload: str, result: dict[str, Any]) -> str:
    if "error" in result:
        return f"error: {result['error']}"
    parts = []
    for name, _, unit, w, read, _ in FIGURES:
        if w == workload:
            parts.append(f"{name} {report.fmt(read(result), unit)} {unit}")
    return ", ".join(parts)


def _figures(
    raw: dict[str, dict[str, list[dict[str, Any]]]], systems: dict[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    out = []
    for name, label, unit, workload, read, higher in FIGURES:
        if workload not in raw:
            continue
        values: dict[str, dict[str, Any]] = {}
        for system, info in systems.items():
            if "error" in info:
                values[system] = {"error": f"unavailable: {info['error']}"}
                continue
            if (system, workload) in NOT_OFFERED:
                values[system] = {"not_offered": NOT_OFFERED[system, workload]}
                continue
            results = raw[workload][system]
            errors = [r["error"] for r in results if "error" in r]
            samples = [read(r) for r in results if "error" not in r]
            if errors or not samples:
                values[system] = {"error": errors[0] if errors else "no result"}
                continue
            values[system] = {"median": statistics.median(samples), "samples": samples}
        base = values.get("asyncjobs", {}).get("median")
        ratios = {
            peer: base / v["median"]
            for peer, v in values.items()
            if peer != "asyncjobs" and base is not None and v.get("median")
        }
        out.append(
            {
                "name": name,
                "label": label,
                "unit": unit,
                "workload": workload,
                "higher_is_better": higher,
                "values": values,
                "ratios": ratios,
            }
        )
    return out


async def _machine(dsn: str) -> dict[str, Any]:
    await ensure_database(dsn)
    return await machine_info(dsn)


def _cleanup(args: argparse.Namespace, systems: dict[str, dict[str, Any]]) -> None:
    for system, info in systems.items():
        if "error" in info:
            continue
        try:
            run_side(system, "cleanup", _connection(system, args), CLEANUP_TIMEOUT_S)
        except SideFailed as exc:
            print(f"    cleanup of {system} failed: {exc}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    command = shlex.join(sys.orig_argv)
    stamp = timestamp()
    machine = asyncio.run(_machine(args.dsn))
    systems = _prepare(args)
    try:
        raw = _measure(args, systems)
    finally:
        _cleanup(args, systems)
    doc = {
        "kind": "peers",
        "timestamp": stamp,
        "command": command,
        "quick": args.quick,
        "repeats": args.repeats,
        "machine": machine,
        "redis": args.redis,
        "systems": systems,
        "workloads": {w: WORKLOADS[w] for w in args.workloads},
        "figures": _figures(raw, systems),
        "raw": raw,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"peers-{stamp}.json"
    text = json.dumps(doc, indent=2) + "\n"
    path.write_text(text)
    print()
    print(report.table_text(doc))
    print(f"\n-> {path.relative_to(REPO_ROOT)}")
    if args.quick or args.only or args.peers != list(PEERS):
        print("(a quick or partial run: bench/RESULTS.md and results/latest/ left as they were)")
        return 0
    LATEST_DIR.mkdir(exist_ok=True)
    (LATEST_DIR / "peers.json").write_text(text)
    from bench import report as suite_report
    from bench.__main__ import BENCHMARKS

    suite_report.write_markdown(suite_report.newest_docs(), list(BENCHMARKS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
