"""Recurring schedules in the MemoryStore: syncing, firing, pausing and listing them.

Each fire time becomes at most one job: _Schedule.fires stands for Postgres's unique index on
(schedule, fire_at). The planning itself is asyncjobs.schedules.plan, shared with Postgres.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import anyio
import anyio.lowlevel

from ...errors import ScheduleNotFoundError
from ...ids import new_ids
from ...schedules import FirePlan, ScheduleDef, ScheduleState, plan
from ..base import ScheduleRecord
from .state import _ACTIVE, MemoryState, _Job, _Schedule


class SchedulesMixin(MemoryState):
    """sync_schedule, fire_schedule, release_waiting, list_schedules and pause_schedule."""

    async def sync_schedule(self, defn: ScheduleDef, now: float) -> None:
        await anyio.lowlevel.checkpoint()
        record = self.schedules.get(defn.name)
        if record is None:
            record = self.schedules[defn.name] = _Schedule(
                defn.name, defn.job, defn.spec, defn.definition(), now, time.time()
            )
        else:
            record.job, record.spec = defn.job, defn.spec
            record.definition, record.updated_at = defn.definition(), time.time()
        record.next_fire_at = defn.next_fire_after(now)

    async def fire_schedule(self, defn: ScheduleDef, now: float) -> FirePlan | None:
        await anyio.lowlevel.checkpoint()
        record = self.schedules.get(defn.name)
        if record is None:
            raise ScheduleNotFoundError(defn.name)
        runs_of = [j for j in self.jobs.values() if j.schedule == defn.name]
        state = ScheduleState(
            record.last_fire_at,
            record.created_at,
            record.paused,
            sum(j.state in _ACTIVE for j in runs_of),
            sum(j.state == "waiting" for j in runs_of),
        )
        decision = plan(defn, state, now)
        if decision is None:
            return None
        t = defn.template
        inserted = 0
        woken: set[str] = set()
        for run, job_id in zip(decision.runs, new_ids(len(decision.runs)), strict=True):
            if run.fire_at in record.fires:
                continue
            record.fires.add(run.fire_at)
            job = _Job(
                job_id, t.name, t.queue, t.priority, run.state, t.args, run.fire_at,
                t.max_attempts, None, time.time(), schedule=defn.name, fire_at=run.fire_at,
            ).limit_like(t)  # fmt: skip
            self.jobs[job_id] = job
            if run.state == "queued":
                self._make_ready(job)
                woken.add(job.queue)
            inserted += 1
        self._wake(woken)
        record.last_fire_at = decision.last_fire_at
        record.next_fire_at = decision.next_fire_at
        record.fired += inserted
        record.missed += decision.missed
        record.skipped += decision.skipped
        record.updated_at = time.time()
        return decision

    async def release_waiting(self, names: Sequence[str]) -> int:
        await anyio.lowlevel.checkpoint()
        woken: list[str] = []
        for name in names:
            runs_of = [j for j in self.jobs.values() if j.schedule == name]
            if any(j.state in ("scheduled", "queued", "running") for j in runs_of):
                continue
            for job in runs_of:
                if job.state == "waiting":
                    self._make_ready(job)
                    woken.append(job.queue)
        self._wake(woken)
        return len(woken)

    async def list_schedules(self) -> list[ScheduleRecord]:
        await anyio.lowlevel.checkpoint()
        return [
            ScheduleRecord(*(getattr(r, name) for name in ScheduleRecord._fields))
            for r in sorted(self.schedules.values(), key=lambda r: r.name)
        ]

    async def pause_schedule(self, name: str, paused: bool, now: float) -> bool:
        await anyio.lowlevel.checkpoint()
        record = self.schedules.get(name)
        if record is None:
            return False
        record.paused = paused
        if not paused:
            last = record.last_fire_at
            record.last_fire_at = now if last is None else max(last, now)
        record.updated_at = time.time()
        return True
