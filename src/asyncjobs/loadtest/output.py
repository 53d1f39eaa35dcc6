"""The report for people (a table on stdout), for programs (``--json FILE``), and as a chart
(``--plot FILE.png``, with matplotlib from the ``plot`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

MIB = 1024 * 1024
STOPPED_BY = {
    "duration": "its duration",
    "jobs": "its job count",
    "interrupted": "a signal (Ctrl-C)",
    "timeout": "--timeout: the numbers cover what was measured until then",
    "nodes exited": "its nodes exiting (see their output above)",
}
PERCENTILE_KEYS = ("p50", "p90", "p99", "max")


def write_json(report: dict[str, Any], path: str) -> None:
    Path(path).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")


def _table(rows: Sequence[Sequence[str]], right_from: int = 1) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.rjust(w) if i >= right_from else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def render_text(r: dict[str, Any]) -> str:
    """The report as a few tables."""
    c = r["config"]
    out: list[str] = []
    load = (
        f"open loop at {c['rate']:g} submissions/s"
        if c["rate"] is not None
        else f"closed loop, {c['in_flight']} in flight"
    )
    nodes = (
        f"{c['nodes']} local node(s), concurrency {c['concurrency']}, {c['workers']} pool "
        "worker(s) each"
        if c["nodes"]
        else "nodes already running"
    )
    out.append(
        f"asyncjobs loadtest: {load}; {nodes}; schema {c['schema']} "
        f"({'kept' if c['schema_kept'] else 'dropped'})"
    )
    mix = c["mix"]
    shares = mix["fractions"]
    parts = [", ".join(f"{k} {v:.0%}" for k, v in shares.items())]
    if "io" in shares or "workflow" in shares:
        parts.append(f"io sleep {mix['io_sleep']}")
    if "cpu" in shares:
        parts.append(f"cpu {mix['cpu_work']:,} loops")
    if "workflow" in shares:
        parts.append(f"workflow {mix['workflow']}")
    parts += [f"fail rate {mix['fail_rate']:.1%}", f"seed {c['seed']}"]
    out.append("mix: " + "; ".join(parts))
    e = r["elapsed_s"]
    ended = STOPPED_BY.get(r["stopped_by"], r["stopped_by"])
    if r["stopped_by"] in ("duration", "jobs"):
        out.append(
            f"{e['load']:.1f} s of load ({ended}), then {e['drain']:.1f} s for the last jobs"
        )
    else:
        out.append(f"{e['load']:.1f} s of load, then {e['drain']:.1f} s, stopped by {ended}")
    out.append("")

    j, s = r["jobs"], r["submissions"]
    out.append(
        f"submissions: {s['total']:,} (io {s['io']:,}, cpu {s['cpu']:,}, workflow "
        f"{s['workflow']:,}); {s['enqueue_failed']:,} failed to enqueue"
    )
    header = ("jobs", "enqueued", "succeeded", "failed", "cancelled", "lost", "unfinished")
    values = (str(j[k]) for k in header[1:])
    out.extend(_table([header, ("", *values)]))
    if j["unfinished_by_state"]:
        left = ", ".join(f"{k} {v}" for k, v in sorted(j["unfinished_by_state"].items()))
        out.append(f"  unfinished: {left}")
    t = r["throughput"]
    out.append(
        f"throughput: {t['finished_per_s']:,.1f} jobs/s finished (peak "
        f"{t['peak_finished_per_s']:,.1f}/s in one interval); {t['enqueued_per_s']:,.1f} "
        f"jobs/s enqueued ({t['submitted_per_s']:,.1f} submissions/s)"
    )
    if r["open_loop_max_lag_ms"] is not None:
        out.append(f"open loop: at worst {r['open_loop_max_lag_ms']:,.1f} ms behind schedule")
    out.append("")

    rows: list[tuple[str, ...]] = [("latency (ms)", "count", "p50", "p90", "p99", "max")]
    lat = r["latency_ms"]
    labelled = [
        (f"{key} enqueue -> {what}", lat[key][f"enqueue_to_{what}"])
        for key in ("io", "cpu", "jobs")
        for what in ("start", "finish")
    ]
    labelled += [
        ("workflow submit -> first start", lat["workflow"]["submit_to_start"]),
        ("workflow submit -> last finish", lat["workflow"]["submit_to_finish"]),
        ("enqueue call (client)", lat["enqueue_call"]),
    ]
    for label, v in labelled:
        if v is not None:
            rows.append((label, f"{v['count']:,}", *(_num(v[k]) for k in PERCENTILE_KEYS)))
    out.extend(_table(rows) if len(rows) > 1 else ["latency: no job finished"])
    out.append("")

    if r["errors"]:
        out.extend(_table([("errors", "count"), *((k, f"{n:,}") for k, n in r["errors"])]))
    else:
        out.append("errors: none")
    if r["nodes"]:
        out.append("")
        out.extend(_table(_memory_rows(r["nodes"])))
    return "\n".join(out)


def _memory_rows(nodes: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [
        ("node memory (MiB)", "first", "peak", "last", "with pool: first", "peak", "last")
    ]
    for n in nodes:
        label = f"node {n['number']} (pid {n['pid']})"
        if n["exit_status"] is not None:
            label += f", exited {n['exit_status']}"
        cells = [label]
        for series in (n["rss_bytes"], n["rss_with_pool_bytes"]):
            for k in ("first", "peak", "last"):
                cells.append(_num(None if series is None else series[k] / MIB, 1))
        rows.append(tuple(cells))
    return rows


def plot_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def write_plot(r: dict[str, Any], path: str) -> None:
    """Throughput, latency and in-flight jobs over time, and node memory, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    points = r["timeline"]
    fig, (ax_rate, ax_lat, ax_mem) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    ts = [p["t_s"] for p in points]
    ax_rate.plot(
        ts, [p["finished_per_s"] for p in points], drawstyle="steps-post", label="jobs finished/s"
    )
    inflight = r["in_flight"]
    if inflight:
        ax_flight = ax_rate.twinx()
        ax_flight.plot(
            [x[0] for x in inflight],
            [x[2] for x in inflight],
            color="tab:gray",
            linestyle="--",
            label="jobs in flight",
        )
        ax_flight.set_ylabel("in flight")
        ax_flight.legend(loc="upper right")
    ax_rate.set_ylabel("jobs/s")
    ax_rate.legend(loc="upper left")
    for key, label in (("finish_p50_ms", "p50"), ("finish_p99_ms", "p99")):
        pts = [(p["t_s"], p[key]) for p in points if p[key] is not None]
        ax_lat.plot([x for x, _ in pts], [y for _, y in pts], label=f"enqueue -> finish {label}")
    ax_lat.set_ylabel("latency (ms)")
    ax_lat.legend(loc="upper left")
    for n in r["nodes"]:
        samples = n["samples"]
        ax_mem.plot(
            [s[0] for s in samples], [s[1] / MIB for s in samples], label=f"node {n['number']} RSS"
        )
        ax_mem.plot(
            [s[0] for s in samples],
            [s[2] / MIB for s in samples],
            linestyle=":",
            label=f"node {n['number']} with pool",
        )
    ax_mem.set_ylabel("MiB")
    ax_mem.set_xlabel("seconds since the load began")
    if r["nodes"]:
        ax_mem.legend(loc="upper left")
    fig.suptitle("asyncjobs loadtest")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
