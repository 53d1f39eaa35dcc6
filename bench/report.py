"""The results table: printed after a run, and written to ``bench/RESULTS.md``.

``python -m bench`` calls ``render`` with the figures it just measured. Run on its own,
``python -m bench.report`` rebuilds both from the newest full-size run's JSON files in
``bench/results/`` (all files of one run share its timestamp).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from .common import BENCH_DIR, RESULTS_DIR

RESULTS_MD = BENCH_DIR / "RESULTS.md"

# A figure as JSON (see common.Figure.to_json); a benchmark that failed is {"error": name}.
FigureDoc = dict[str, Any]


def _fmt(value: float, unit: str) -> str:
    if unit in ("jobs/s", "B/job"):
        return f"{value:,.0f}"
    if unit == "ms":
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


def _machine_lines(m: dict[str, Any]) -> list[str]:
    ram_gib = m["ram_bytes"] / 2**30
    pg = m["postgres_settings"]
    return [
        f"- **Machine:** {m['cores_logical']} logical cores ({m['cores_physical']} physical), "
        f"{ram_gib:.1f} GiB RAM, {m['cpu_model']}, {m['os']}",
        f"- **Load average when the run started:** {' '.join(map(str, m['load_average']))} "
        "(other work on the machine skews the figures)",
        f"- **Software:** {m['python']}, uvloop {m['uvloop']}, asyncpg {m['asyncpg']}, "
        f"asyncjobs {m['asyncjobs']} at commit {m['commit']}",
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


def markdown(
    figures: list[FigureDoc], command: str, when: datetime, machine: dict[str, Any], repeats: int
) -> str:
    lines = [
        "# Benchmark results",
        "",
        "Rewritten by every full-size run of `make bench` (`python -m bench`); see "
        "`bench/__main__.py`. Each figure is the median of the repeats, with their range.",
        "",
        BARE_NOTE,
        "",
        f"- **Command:** `{command}`",
        f"- **Date:** {when:%Y-%m-%d %H:%M} UTC",
        f"- **Repeats:** {repeats}",
        *_machine_lines(machine),
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
        "`bench/results/` (not committed).",
        "",
    ]
    return "\n".join(lines)


def render(
    figures: list[FigureDoc],
    *,
    command: str,
    when: datetime,
    machine: dict[str, Any],
    repeats: int,
    write: bool,
) -> None:
    """Print the table; with ``write``, rewrite RESULTS.md (everything in it is generated)."""
    print(table_text(figures))
    if write:
        RESULTS_MD.write_text(markdown(figures, command, when, machine, repeats))
        print(f"\nwrote {RESULTS_MD.relative_to(BENCH_DIR.parent)}")


def _latest_run(directory: Path) -> list[dict[str, Any]]:
    docs = [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]
    docs = [d for d in docs if not d.get("quick")]
    if not docs:
        raise SystemExit(f"no full-size results in {directory}; run python -m bench first")
    newest = max(d["timestamp"] for d in docs)
    return sorted((d for d in docs if d["timestamp"] == newest), key=lambda d: d["position"])


def main() -> None:
    docs = _latest_run(RESULTS_DIR)
    figures = [f for d in docs for f in d["figures"]]
    first = docs[0]
    when = datetime.strptime(first["timestamp"] + "+0000", "%Y%m%dT%H%M%SZ%z")
    render(
        figures,
        command=first["command"],
        when=when,
        machine=first["machine"],
        repeats=first["repeats"],
        write="--no-write" not in sys.argv[1:],
    )


if __name__ == "__main__":
    main()
