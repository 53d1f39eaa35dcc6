"""This node's statistics: its finished attempts, summed in memory until its next heartbeat.

Per statistics bucket (10 seconds), job name and outcome, the node adds up attempts, queue
waits, run times and CPU times as jobs end (a dictionary lookup and a few additions), and the
heartbeat writes what accumulated in its one statement (``Store.heartbeat``). Nothing is
added to the hot path's statements. If a heartbeat fails, its rows are given back and go with
the next one; a node that dies loses at most one heartbeat interval of statistics, never a job.
A heartbeat whose connection broke mid-statement may have been written all the same, and its
rows then count twice: statistics err towards counting a batch twice, never towards losing it.
"""

from __future__ import annotations

from ..store.base import StatsRow, add_stats, stats_bucket


class NodeStats:
    def __init__(self) -> None:
        # (bucket, name, outcome) -> [attempts, wait, wall, max_wall, timed, timed_wall, cpu]
        self._rows: dict[tuple[float, str, str], list[float]] = {}

    def add(
        self,
        name: str,
        state: str,
        finished_at: float,
        wait_s: float,
        wall_s: float | None,
        cpu_s: float | None,
    ) -> None:
        outcome = "retried" if state in ("queued", "scheduled") else state
        key = (stats_bucket(finished_at), name, outcome)
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = [0, 0.0, 0.0, 0.0, 0, 0.0, 0.0]
        wall = wall_s or 0.0
        row[0] += 1
        row[1] += wait_s
        row[2] += wall
        row[3] = max(row[3], wall)
        if cpu_s is not None:
            row[4] += 1
            row[5] += wall
            row[6] += cpu_s

    def take(self) -> list[StatsRow]:
        """Everything added since the last ``take``, which this clears."""
        rows, self._rows = self._rows, {}
        return [
            StatsRow(bucket, name, outcome, int(r[0]), r[1], r[2], r[3], int(r[4]), r[5], r[6])
            for (bucket, name, outcome), r in rows.items()
        ]

    def give_back(self, rows: list[StatsRow]) -> None:
        """Rows a failed heartbeat could not write: they go with the next one."""
        for r in rows:
            add_stats(self._rows.setdefault((r.bucket, r.name, r.outcome), [0] * 7), r)
