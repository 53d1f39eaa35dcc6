"""PostgresStore: the Store protocol on Postgres through asyncpg.

Hot paths are one statement per batch (see sql/queries.sql). Driver errors are translated at
this boundary: connection failures become ``StoreUnavailableError`` naming the host, a missing
schema becomes ``SchemaNotReadyError``, anything else ``StoreError``, always ``from`` the cause.

``PostgresStore`` is composed of one mixin per area of the Store protocol, each in its own
module of ``asyncjobs.store.pg``, over ``pg.base.PgStoreBase`` (connections, queries, helpers).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..jobs import JobId
from .base import MAX_INPUT_BYTES, ClaimedJob
from .pg.base import DEADLOCK_TRIES
from .pg.claims import ClaimsMixin
from .pg.events import EventsMixin
from .pg.jobs import JobsMixin
from .pg.monitoring import MonitoringMixin
from .pg.nodes import PRUNE_CLOCK_SLACK_S, NodesMixin
from .pg.purging import PurgingMixin
from .pg.schedules import SchedulesMixin
from .pg.steps import StepsMixin
from .pg.workflows import WorkflowsMixin

# Re-exported for readers of this module. Each is read in the module that defines it
# (pg/base.py, pg/nodes.py), so patch it there; MAX_INPUT_BYTES alone is read here (claim()).
__all__ = ["DEADLOCK_TRIES", "MAX_INPUT_BYTES", "PRUNE_CLOCK_SLACK_S", "PostgresStore"]


class PostgresStore(
    JobsMixin,
    NodesMixin,
    ClaimsMixin,
    SchedulesMixin,
    WorkflowsMixin,
    StepsMixin,
    PurgingMixin,
    MonitoringMixin,
    EventsMixin,
):
    """Jobs in Postgres. Several nodes may share one database (and one schema)."""

    # claim lives here, not in pg/claims.py: it reads MAX_INPUT_BYTES as a global of this
    # module when it runs, so patching asyncjobs.store.postgres.MAX_INPUT_BYTES (as the test
    # of a step whose inputs are too large does) changes the limit the claim statement enforces.
    async def claim(
        self,
        node_id: JobId,
        limits: Mapping[str, int],
        now: float,
        freeing: Sequence[str] = (),
    ) -> list[ClaimedJob]:
        async with self._errors(), self._claim_lane.connection() as con:
            rows = await con.fetch(
                self.q["claim"], node_id, list(limits.keys()), list(limits.values()), now,
                MAX_INPUT_BYTES, list(freeing),
            )  # fmt: skip
        # tuple.__new__ takes the record's values in C: half the cost of ClaimedJob(*r)
        make = tuple.__new__
        return [make(ClaimedJob, r) for r in rows]
