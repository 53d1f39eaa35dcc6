"""Concurrency keys and rate limits in the MemoryStore: which jobs may start, which wait.

_Gate admits claims (claim_jobs in Postgres), and LimitsMixin._unpark gives the slots that
jobs free to the jobs parked for them (unpark in Postgres). Completing and releasing claims
(claims.py) and reaping (nodes.py) all free slots, so both mixins build on this one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from ..base import RATE_HORIZON_S
from .state import MemoryState, _Job


class _Gate:
    """Admits claims within concurrency keys and rate limits (claim_jobs in Postgres)."""

    def __init__(
        self, jobs: Iterable[_Job], tat: dict[str, float], now: float, freeing: frozenset[str]
    ) -> None:
        self.freeing = freeing
        self.running = Counter(
            j.concurrency_key for j in jobs if j.state == "running" and j.concurrency_key
        )
        self.tat = tat
        self.now = now
        self.booked: Counter[str] = Counter()  # turned away this claim, per bucket

    def admit(self, job: _Job) -> tuple[str, float]:
        """("claim", seconds until its booked start), ("park", 0) when its key is full, or
        ("later", seconds until its start) when its bucket is booked beyond the horizon."""
        key, bucket = job.concurrency_key, job.rate_key
        if key is not None and self.running[key] >= (job.concurrency_limit or 1):
            return ("skip" if key in self.freeing else "park"), 0.0
        delay = 0.0
        spacing = (job.rate_period or 0.0) / (job.rate_count or 1)
        if bucket is not None:
            slot = max(self.tat.get(bucket, self.now), self.now) + self.booked[bucket] * spacing
            delay = slot - self.now
            if delay > RATE_HORIZON_S:
                self.booked[bucket] += 1  # the next one waits a spacing longer
                return "later", delay
            self.tat[bucket] = slot + spacing
        if key is not None:
            self.running[key] += 1
        return "claim", delay


class LimitsMixin(MemoryState):
    """Parked jobs go back to the ready set as slots of their concurrency key free."""

    def _unpark(self, keys: Iterable[str]) -> None:
        """Slots of these keys were freed: unpark as many of their parked jobs as fit, best
        first (unpark in Postgres)."""
        woken: list[str] = []
        for key in set(keys):
            parked = self._parked.get(key)
            if not parked:
                continue
            running = sum(
                1 for j in self.jobs.values() if j.state == "running" and j.concurrency_key == key
            )
            waiting = sorted(
                (self.jobs[i] for i in parked if i in self.jobs),
                key=lambda j: (-j.priority, j.id),
            )
            rank = 0
            for job in waiting:
                if job.state != "queued" or not job.parked:
                    parked.discard(job.id)  # cancelled (or otherwise gone) while parked
                    continue
                rank += 1
                if running + rank > (job.concurrency_limit or 1):
                    break
                parked.discard(job.id)
                job.parked = False
                self._make_ready(job)
                woken.append(job.queue)
        self._wake(woken)
