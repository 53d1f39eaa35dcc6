"""The live display: done/s, jobs in flight, errors and latency while a load test runs.

On a terminal it is one line on stderr, rewritten in place; otherwise (a log, CI) one line
per interval. Either way stdout is left to the report.
"""

from __future__ import annotations

from typing import NamedTuple, TextIO

from .report import summarize

TTY_INTERVAL_S = 0.5
LOG_INTERVAL_S = 2.0


class Snapshot(NamedTuple):
    """What the display shows at one moment."""

    elapsed_s: float
    phase: str  # starting, load, drain
    enqueued: int  # jobs (a workflow's steps included)
    finished: int  # jobs
    done_per_s: float  # jobs finished per second since the previous snapshot
    in_flight: int  # jobs enqueued, not finished
    errors: int
    recent_finish_s: list[float]  # enqueue-to-finish of single jobs since the previous one


def format_line(s: Snapshot) -> str:
    """One line: ``12.0s load  enqueued 1200  done 1180 (98.2/s)  in flight 20 ...``."""
    latency = ""
    summary = summarize(s.recent_finish_s)
    if summary is not None:
        latency = f"  latency p50 {summary.p50 * 1000:.1f} ms p99 {summary.p99 * 1000:.1f} ms"
    return (
        f"{s.elapsed_s:6.1f}s {s.phase:<5}  enqueued {s.enqueued}  done {s.finished} "
        f"({s.done_per_s:.1f}/s)  in flight {s.in_flight}  errors {s.errors}{latency}"
    )


class Progress:
    """Writes snapshots to ``stream``: in place on a terminal, a line each otherwise."""

    def __init__(self, stream: TextIO, *, tty: bool | None = None) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.interval = TTY_INTERVAL_S if self.tty else LOG_INTERVAL_S
        self._width = 0

    def show(self, snapshot: Snapshot) -> None:
        line = format_line(snapshot)
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the line being rewritten, so what follows starts on its own line."""
        if self.tty and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
