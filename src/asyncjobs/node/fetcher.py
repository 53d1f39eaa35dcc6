"""The fetcher: claims ready jobs, up to the node's free capacity, one round trip per batch.

It claims only from queues that may have work: told by a NOTIFY, by a claim that came back
full, or by the poll fallback. A claim that comes back short takes its queue out of view,
unless a notification arrived while the claim was in flight (its snapshot may predate that
job). A claim that fails on the connection may still have committed: before claiming again,
the fetcher gives back whatever the database says this node holds that it never received.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Protocol

import anyio

from ..clock import Clock
from ..errors import StoreError, StoreUnavailableError
from ..jobs import JobId
from ..store.base import ClaimedJob, Store
from .completer import Completer
from .store_errors import log_store_error

log = logging.getLogger("asyncjobs.node")

CLAIM_RETRY_MIN_S = 0.05
CLAIM_RETRY_MAX_S = 5.0  # backoff cap when claiming fails because the database is unreachable


class ClaimingNode(Protocol):
    """What the fetcher needs from its node (``Node`` is one): its capacity, whether it may
    claim, and where claimed jobs go."""

    @property
    def id(self) -> JobId: ...

    @property
    def free(self) -> int:
        """How many more jobs it can run now, over all its queues."""

    @property
    def queue_free(self) -> Mapping[str, int]: ...

    @property
    def running(self) -> Mapping[JobId, object]: ...

    def may_claim(self) -> bool: ...

    async def wait_until_heartbeat_succeeds(self) -> None: ...

    def start_job(self, claimed: ClaimedJob) -> None: ...


class Fetcher:
    def __init__(
        self,
        node: ClaimingNode,
        store: Store,
        clock: Clock,
        completer: Completer,
        queues: Sequence[str],
        batch_size: int,
        poll_interval_s: float,
    ) -> None:
        self._node = node
        self._store = store
        self._clock = clock
        self._completer = completer
        self._batch_size = batch_size
        self._poll = poll_interval_s
        queues = list(queues)
        self._queues = queues
        self._turn = 0
        self._maybe_ready: set[str] = set(queues)  # check every queue at start
        self._notified = dict.fromkeys(queues, 0)  # "jobs ready" events per queue
        self._wake = asyncio.Event()
        self._claims_uncertain = False
        self.claimed_total = 0

    # -- what the node tells the fetcher -------------------------------------------------------

    def jobs_ready(self, queue: str) -> None:
        """A NOTIFY said ``queue`` has ready jobs."""
        if queue in self._notified:
            self._notified[queue] += 1
            self._maybe_ready.add(queue)
            self._wake.set()

    def look_everywhere(self) -> None:
        """Events may have been missed (a reconnect): claim from every queue."""
        self._maybe_ready.update(self._queues)
        self._wake.set()

    def slot_freed(self) -> None:
        if self._maybe_ready:
            self._wake.set()

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        node = self._node
        retry_delay = CLAIM_RETRY_MIN_S
        poll = self._poll
        while True:
            if not node.may_claim():
                await node.wait_until_heartbeat_succeeds()
                continue
            limits = self._claim_limits()
            if limits:
                notified_before = dict(self._notified)
                try:
                    if self._claims_uncertain:
                        await self._release_unknown_claims()
                    # Shielded: a stop that cancelled a claim whose answer is on its way
                    # would leave the jobs it committed running on this node, unknown to it,
                    # until a reaper ended them (lost, if they cannot be retried). Claimed,
                    # they are dispatched, and the stop's drain gives them its grace.
                    with anyio.CancelScope(shield=True):
                        claimed = await self._store.claim(
                            node.id, limits, self._clock.time(), self._completer.freeing_keys()
                        )
                except StoreError as exc:
                    if isinstance(exc, StoreUnavailableError):
                        self._claims_uncertain = True  # the claim may have committed
                    log_store_error(exc, "cannot claim jobs (retrying in %.2f s)", retry_delay)
                    await anyio.sleep(retry_delay)
                    retry_delay = min(retry_delay * 2, CLAIM_RETRY_MAX_S)
                    continue
                retry_delay = CLAIM_RETRY_MIN_S
                self._dispatch(claimed, limits, notified_before)
                continue
            self._wake.clear()
            with anyio.move_on_after(poll) as timer:
                await self._wake.wait()
            if timer.cancelled_caught:
                self._maybe_ready.update(self._queues)  # the poll fallback: look everywhere

    def _claim_limits(self) -> dict[str, int]:
        """How many jobs to ask each queue for: together never more than the free capacity.

        The queue asked first rotates, so that under saturation no queue starves the others.
        """
        node = self._node
        limits: dict[str, int] = {}
        budget = min(node.free, self._batch_size)
        order = self._queues
        self._turn = (self._turn + 1) % len(order)
        for i in range(len(order)):
            if budget <= 0:
                break
            queue = order[(self._turn + i) % len(order)]
            if queue not in self._maybe_ready:
                continue
            n = min(node.queue_free[queue], budget)
            if n > 0:
                limits[queue] = n
                budget -= n
        return limits

    def _dispatch(
        self, claimed: list[ClaimedJob], limits: dict[str, int], notified_before: dict[str, int]
    ) -> None:
        per_queue: dict[str, int] = dict.fromkeys(limits, 0)
        for job in claimed:
            per_queue[job.queue] += 1
            self._node.start_job(job)
        self.claimed_total += len(claimed)
        for queue, asked in limits.items():
            # Fewer than we could take means the queue was drained as the claim saw it. A job
            # announced while the claim was in flight may be missing from that view, so the
            # queue stays in view if a notification arrived meanwhile.
            if per_queue[queue] < asked and self._notified[queue] == notified_before[queue]:
                self._maybe_ready.discard(queue)

    async def _release_unknown_claims(self) -> None:
        """Give back jobs the database says this node runs but the node never received."""
        node = self._node
        known = [*node.running, *self._completer.pending_ids()]
        released = await self._store.release_claims(node.id, known)
        self._claims_uncertain = False
        if released:
            log.warning(
                "node %s gave back %d jobs claimed by a statement whose answer was lost with "
                "its connection; they never started and are queued again", node.id, released,
            )  # fmt: skip
