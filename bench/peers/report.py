"""The peers table: printed by ``python -m bench.peers`` and kept in ``bench/RESULTS.md``.

``bench/report.py`` appends ``section()`` (built from ``bench/results/latest/peers.json``)
whenever it writes RESULTS.md, so ``make bench`` keeps the peers' section and
``make bench-peers`` refreshes it by rewriting the file the same way.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

LATEST_PEERS = Path(__file__).resolve().parents[1] / "results" / "latest" / "peers.json"
# The targets for asyncjobs, where it sets one: (operator, value).
TARGETS: dict[str, tuple[str, float]] = {
    "drain": ("≥", 25_000.0),
    "latency_p50": ("≤", 1.5),
    "latency_p99": ("≤", 3.0),
    "memory_per_job": ("≤", 4_096.0),
    "storage_queued": ("≤", 300.0),
}
TIMES = "\N{MULTIPLICATION SIGN}"


def fmt(value: float, unit: str) -> str:
    if unit == "ms":
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def _cell(value: dict[str, Any], unit: str) -> str:
    if "median" in value:
        return f"{fmt(value['median'], unit)}"
    if "not_offered" in value:
        return "n/a"
    return "error"


def _ratio(figure: dict[str, Any], peer: str) -> str:
    ratio = figure["ratios"].get(peer)
    if ratio is None:
        return "—"
    if ratio >= 10:
        return f"{ratio:,.1f}{TIMES}"
    if ratio >= 0.01:
        return f"{ratio:.2f}{TIMES}"
    return f"1/{1 / ratio:,.0f}"  # e.g. a few KB against a process of tens of MB


def _systems(doc: dict[str, Any]) -> list[str]:
    return list(doc["systems"])


def header(doc: dict[str, Any]) -> list[str]:
    cols = ["figure", "unit", "asyncjobs"]
    for peer in _systems(doc)[1:]:
        cols += [peer, f"aj/{peer}"]
    return [*cols, "asyncjobs target"]


def rows(doc: dict[str, Any]) -> list[list[str]]:
    out = []
    for f in doc["figures"]:
        unit = f["unit"]
        row = [f["label"], unit, _cell(f["values"]["asyncjobs"], unit)]
        for peer in _systems(doc)[1:]:
            row += [_cell(f["values"][peer], unit), _ratio(f, peer)]
        target = TARGETS.get(f["name"])
        row.append(f"{target[0]} {fmt(target[1], unit)}" if target else "—")
        out.append(row)
    return out


def table_text(doc: dict[str, Any]) -> str:
    body = [header(doc), *rows(doc)]
    widths = [max(len(r[i]) for r in body) for i in range(len(body[0]))]
    lines = []
    for i, row in enumerate(body):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    errors = _errors(doc)
    if errors:
        lines += ["", *errors]
    return "\n".join(lines)


def _errors(doc: dict[str, Any]) -> list[str]:
    """One line per cell without a figure (an error, or a call the peer does not offer)."""
    out = []
    for f in doc["figures"]:
        for system, value in f["values"].items():
            if "error" in value:
                out.append(f"{system}, {f['label']}: error: {value['error']}")
            elif "not_offered" in value:
                out.append(f"{system}, {f['label']}: n/a: {value['not_offered']}")
    return out


def markdown_table(doc: dict[str, Any]) -> str:
    head = header(doc)
    align = ["---", ":---"] + ["---:"] * (len(head) - 2)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(doc)]
    return "\n".join(lines)


def _redis_version(doc: dict[str, Any]) -> str:
    for info in doc["systems"].values():
        if info.get("redis_server"):
            return str(info["redis_server"])
    return "unknown"


def markdown_section(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    when = datetime.strptime(doc["timestamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    pg = m["postgres_settings"]
    lines = [
        "## Peers side by side",
        "",
        "Rewritten by every full-size run of `make bench-peers` (`python -m bench.peers`; see "
        "`bench/peers/`). The same workloads ran against each system in one run, interleaved "
        "(each repeat runs every system once, in a rotating order), each peer in its own "
        "virtual environment under `bench/.peers/` and driven only through its documented "
        "public API. Each cell is the median of the repeats; **aj/peer** is asyncjobs' median "
        "over the peer's: above 1 is better for a rate, below 1 for latency, memory and "
        "storage. Absolute figures compare only within this run.",
        "",
        f"- **Command:** `{doc['command']}`",
        f"- **Date:** {when:%Y-%m-%d %H:%M} UTC; **repeats:** {doc['repeats']}",
        f"- **Machine:** {m['cores_logical']} logical cores, {m['ram_bytes'] / 2**30:.1f} GiB "
        f"RAM, {m['cpu_model']}, {m['os']}; load average at the start "
        f"{' '.join(map(str, m['load_average']))}",
        f"- **Stores:** Postgres {m['postgres'].split()[0]} on {m['postgres_host']} "
        f"(synchronous_commit {pg['synchronous_commit']}, fsync {pg['fsync']}); Redis "
        f"{_redis_version(doc)} on the same machine",
        "",
        markdown_table(doc),
        "",
    ]
    errors = _errors(doc)
    if errors:
        lines += ["Cells without a figure:", "", *(f"- {e}" for e in errors), ""]
    lines += ["### Versions and settings", ""]
    for system, info in doc["systems"].items():
        if "error" in info:
            lines.append(f"- **{system}**: not run: {info['error']}")
            continue
        versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
        lines.append(f"- **{system}** ({versions}; {info['store']}):")
        lines += [f"  - {s}" for s in info["settings"]]
    w = doc["workloads"]
    size = "quick" if doc["quick"] else "full"
    lines += [
        "",
        "### How each figure is measured",
        "",
        f"- **Drain:** {_n(w, 'drain', size)} no-op jobs enqueued first, then the worker "
        "started; timed from the worker's *ready* (imports done, connected) until the harness "
        "sees every job finished (polling every 5 ms: a Postgres query of the unfinished "
        "states, arq's queue length, the count of Celery's stored results). Start-up is in the "
        "JSON.",
        f"- **Enqueue:** {_n(w, 'enqueue_sequential', size)} calls awaited one after another; "
        f"{_n(w, 'enqueue_concurrent', size)} from 100 concurrent callers (Celery: threads); "
        f"one bulk call of {_n(w, 'enqueue_bulk', size)}; each after a warm-up.",
        f"- **Latency:** {_n(w, 'latency', size)} jobs sent on an open-loop schedule at 200 "
        "jobs/s to an idle worker; each job gets `time.time()` from just before its send as "
        "an argument and records `time.time()` minus it as its first act.",
        f"- **Memory:** RSS growth of the worker process from idle to "
        f"{_n(w, 'memory', size)} jobs each sleeping in `asyncio.sleep`, per job. Celery's "
        "prefork pool runs one job per child process, so its figure is a child's RSS while it "
        "runs one sleeping job.",
        "- **Storage:** after the drain's enqueue (queued) and after the drain (finished): "
        "Postgres `pg_total_relation_size` of the job tables (asyncjobs: its jobs table; "
        "procrastinate: its jobs and events tables), after `VACUUM ANALYZE`, per job; Redis "
        "`used_memory` growth over the empty databases, per job.",
        "",
        "Per-run samples, start-up times and the storage split are in "
        "`bench/results/latest/peers.json`.",
        "",
    ]
    return "\n".join(lines)


def _n(workloads: dict[str, Any], name: str, size: str) -> str:
    return f"{workloads[name][size]['n']:,}" if name in workloads else "N"


def section(path: Path = LATEST_PEERS) -> str:
    """The peers section from the newest full-size peers run, or nothing if there is none."""
    if not path.exists():
        return ""
    return "\n" + markdown_section(json.loads(path.read_text()))
