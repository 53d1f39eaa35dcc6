"""The results table: printed after a run, and written to ``bench/RESULTS.md``.

``python -m bench`` calls ``render`` with the figures it just measured, after writing their
JSON. ``RESULTS.md`` is always built from the JSON files in ``bench/results/``: for each
benchmark, its newest full-size results. So a run of some benchmarks (``--only``) replaces their
figures and keeps the others' from earlier runs; the file lists which run each came from. Run
on its own, ``python -m bench.report`` rebuilds the file the same way and prints the table.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .common import BENCH_DIR, RESULTS_DIR
from .peers import report as peers_report

RESULTS_MD = BENCH_DIR / "RESULTS.md"

# A figure as JSON (see common.Figure.to_json); a benchmark that failed is {"error": name}.
FigureDoc = dict[str, Any]


def _fmt(value: float, unit: str) -> str:
    if unit in ("jobs/s", "B/job", "B/step"):
        return f"{value:,.0f}"
    if unit in ("ms", "\N{MULTIPLICATION SIGN}"):
        return f"{value:,.2f}"
    return f"{value:.3f}"


def _vs_bare(f: FigureDoc) -> str:
    """asyncjobs against its bare baseline: a share for a rate, a multiple for a cost."""
    ratio = f.get("ratio")
    if ratio is None:
        return "—"
    if f["target_op"] == ">=":  # a rate: higher is better
        return f"{ratio:.0%} of bare"
    return f"{ratio:.2f}\N{MULTIPLICATION SIGN} bare"


def rows(figures: list[FigureDoc]) -> list[tuple[str, ...]]:
    """(figure, measured, min-max, bare, vs bare, target, result) for every figure."""
    out: list[tuple[str, ...]] = []
    for f in figures:
        if "error" in f:
            out.append((f["error"], "—", "—", "—", "—", "—", "error"))
            continue
        unit = f["unit"]
        target = "—"
        result = "—"
        if f["target"] is not None:
            op = "≥" if f["target_op"] == ">=" else "≤"
            target = f"{op} {_fmt(f['target'], unit)} {unit}"
            result = "pass" if f["passed"] else "short"
        baseline = f.get("baseline")
        out.append(
            (
                f["name"],
                f"{_fmt(f['median'], unit)} {unit}",
                f"{_fmt(f['min'], unit)}..{_fmt(f['max'], unit)}",
                "—" if baseline is None else f"{_fmt(baseline, unit)} {unit}",
                _vs_bare(f),
                target,
                result,
            )
        )
    return out


HEADER = ("figure", "measured (median)", "min..max", "bare", "vs bare", "target", "result")

BARE_NOTE = (
    "**Bare baselines.** This machine's commit rate and CPU time drift by tens of percent "
    "from one run to the next, so the absolute figures below compare only within this run. "
    "Each benchmark therefore also measures, in the same run and alternating with its own "
    "repeats, the same work done with plain asyncpg and asyncio and no asyncjobs code "
    "(`bench/baselines.py`): one-row INSERT+NOTIFY statements, one COPY, a claim/run/complete "
    "loop over the same backlog, an INSERT+NOTIFY to LISTEN+claim pair, and bare sleeping "
    "tasks. *Bare* is that baseline's median and *vs bare* is asyncjobs' median over it (a "
    "share for rates, a multiple for latencies and memory). **The ratios are the numbers to "
    "compare between runs.** The targets come from the issue and are absolute, so a pass or a "
    "short near the line can flip with the machine's drift alone."
)


def table_text(figures: list[FigureDoc]) -> str:
    body = rows(figures)
    widths = [max(len(r[i]) for r in [HEADER, *body]) for i in range(len(HEADER))]
    lines = []
    for i, row in enumerate([HEADER, *body]):
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _machine_lines(m: dict[str, Any], *, one_run: bool) -> list[str]:
    ram_gib = m["ram_bytes"] / 2**30
    pg = m["postgres_settings"]
    lines = [
        f"- **Machine:** {m['cores_logical']} logical cores ({m['cores_physical']} physical), "
        f"{ram_gib:.1f} GiB RAM, {m['cpu_model']}, {m['os']}"
        + ("" if one_run else " (the newest run's; each run above names its own)"),
    ]
    if one_run:  # otherwise each run's load and commit are on its own line
        lines.append(
            f"- **Load average when the run started:** {' '.join(map(str, m['load_average']))} "
            "(other work on the machine skews the figures)"
        )
    return [
        *lines,
        f"- **Software:** {m['python']}, uvloop {m['uvloop']}, asyncpg {m['asyncpg']}, "
        f"asyncjobs {m['asyncjobs']}" + (f" at commit {m['commit']}" if one_run else ""),
        f"- **Postgres:** {m['postgres']} on {m['postgres_host']}, same machine "
        f"(shared_buffers {pg['shared_buffers']}, synchronous_commit "
        f"{pg['synchronous_commit']}, fsync {pg['fsync']})",
    ]


def _param_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _when(doc: dict[str, Any]) -> datetime:
    return datetime.strptime(doc["timestamp"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def _source_lines(runs: list[list[dict[str, Any]]]) -> list[str]:
    """Where the figures come from: one run's command, date and repeats, or a line per run."""
    if len(runs) == 1:
        first = runs[0][0]
        return [
            f"- **Command:** `{first['command']}`",
            f"- **Date:** {_when(first):%Y-%m-%d %H:%M} UTC",
            f"- **Repeats:** {first['repeats']}",
        ]
    lines = [
        "- **Runs:** each benchmark's figures come from its newest full-size run; absolute "
        "figures compare only within one run:"
    ]
    for docs in runs:
        first = docs[0]
        m = first["machine"]
        names = ", ".join(d["benchmark"] for d in docs)
        repeats = f"{first['repeats']} repeat{'' if first['repeats'] == 1 else 's'}"
        load = " ".join(map(str, m["load_average"]))
        lines.append(
            f"  - {_when(first):%Y-%m-%d %H:%M} UTC, `{first['command']}`, {repeats}, "
            f"commit {m['commit']}, load average {load}, on {m['cpu_model']} "
            f"({m['os']}): {names}"
        )
    return lines


def markdown(
    docs: dict[str, dict[str, Any]], order: Sequence[str], failed: Sequence[str] = ()
) -> str:
    """RESULTS.md from result files (``newest_docs``), benchmarks in ``order``; a benchmark in
    ``failed`` shows as an error rather than with older figures."""
    names = [n for n in order if n in docs or n in failed]
    names += sorted(set(docs) - set(order))  # results of a benchmark since removed or renamed
    used = [docs[n] for n in names if n in docs and n not in failed]
    figures: list[FigureDoc] = []
    for name in names:
        figures += [{"error": name}] if name in failed else docs[name]["figures"]
    by_run: dict[str, list[dict[str, Any]]] = {}
    for doc in used:
        by_run.setdefault(doc["timestamp"], []).append(doc)
    runs = [by_run[t] for t in sorted(by_run, reverse=True)]  # newest run first
    lines = [
        "# Benchmark results",
        "",
        "Rewritten by every full-size run of `make bench` (`python -m bench`); see "
        "`bench/__main__.py`. Each figure is the median of the repeats, with their range. A run "
        "of some benchmarks (`--only`) replaces their figures and keeps the others'.",
        "",
        BARE_NOTE,
        "",
        *_source_lines(runs),
        *(_machine_lines(runs[0][0]["machine"], one_run=len(runs) == 1) if runs else []),
        "",
        "| Figure | Measured (median) | Min..max | Bare | vs bare | Target | Result |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows(figures)]
    lines += ["", "## Parameters", ""]
    seen: set[str] = set()
    for f in figures:
        # Figures of one benchmark share their parameters; list them once.
        if "error" in f or f["benchmark"] in seen:
            continue
        seen.add(f["benchmark"])
        scalars = {k: v for k, v in f["params"].items() if not isinstance(v, list | dict)}
        text = "; ".join(f"{k} = {_param_text(v)}" for k, v in scalars.items())
        lines.append(f"- **{f['benchmark']}**: {text}")
    lines += [
        "",
        "Per-repeat samples, segment timings and RSS readings are in the JSON files under "
        "`bench/results/`; the newest of each benchmark is committed in `bench/results/latest/`.",
        "",
    ]
    return "\n".join(lines)


def newest_docs(directory: Path = RESULTS_DIR) -> dict[str, dict[str, Any]]:
    """Each benchmark's newest full-size result file (``--quick`` ones never count), from
    this checkout's runs and the committed ``latest/`` copies."""
    newest: dict[str, dict[str, Any]] = {}
    for path in sorted([*directory.glob("*.json"), *(directory / "latest").glob("*.json")]):
        doc = json.loads(path.read_text())
        if doc.get("quick") or "benchmark" not in doc:  # the peers' runs: bench/peers/report.py
            continue
        name = doc["benchmark"]
        if name not in newest or doc["timestamp"] > newest[name]["timestamp"]:
            newest[name] = doc
    return newest


def write_markdown(
    docs: dict[str, dict[str, Any]], order: Sequence[str], failed: Sequence[str] = ()
) -> None:
    """Write RESULTS.md from ``docs`` (``newest_docs``) and say so."""
    RESULTS_MD.write_text(markdown(docs, order, failed) + peers_report.section())
    stamps = {docs[n]["timestamp"] for n in docs if n not in failed}
    note = f" (figures from {len(stamps)} runs: see its Runs line)" if len(stamps) > 1 else ""
    print(f"\nwrote {RESULTS_MD.relative_to(BENCH_DIR.parent)}{note}")


def render(
    figures: list[FigureDoc], *, order: Sequence[str], failed: Sequence[str], write: bool
) -> None:
    """Print this run's table; with ``write``, rebuild RESULTS.md from the result files (this
    run's JSON is written before, so its figures are the newest of their benchmarks)."""
    print(table_text(figures))
    if write:
        write_markdown(newest_docs(), order, failed)


def main() -> None:
    from .__main__ import BENCHMARKS  # here, not at the top: __main__ imports this module

    docs = newest_docs()
    if not docs:
        raise SystemExit(f"no full-size results in {RESULTS_DIR}; run python -m bench first")
    order = [n for n in BENCHMARKS if n in docs] + sorted(set(docs) - set(BENCHMARKS))
    print(table_text([f for n in order for f in docs[n]["figures"]]))
    if "--no-write" not in sys.argv[1:]:
        write_markdown(docs, list(BENCHMARKS))


if __name__ == "__main__":
    main()
