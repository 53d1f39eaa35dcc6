"""The node never takes a queue for empty when work arrived while it was looking."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from asyncjobs import App, MemoryStore, Settings
from asyncjobs.jobs import JobId
from asyncjobs.store.base import ClaimedJob


class GatedClaims(MemoryStore):
    """Answers a claim from the state when it arrived, but returns only when the gate opens:
    like a claim whose snapshot predates a job committed while the round trip was in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.claim_started = asyncio.Event()

    async def claim(
        self,
        node_id: JobId,
        limits: Mapping[str, int],
        now: float,
        freeing: Sequence[str] = (),
    ) -> list[ClaimedJob]:
        answer = await super().claim(node_id, limits, now, freeing)
        if self.gate is not None:
            self.claim_started.set()
            await self.gate.wait()
        return answer


async def test_a_notification_during_a_claim_keeps_the_queue_in_view() -> None:
    store = GatedClaims()
    app = App(settings=Settings(dsn="memory://", poll_interval_s=60.0), store=store)

    @app.job()
    async def add(a: int, b: int) -> int:
        return a + b

    async with app:
        assert await app.result(await app.enqueue(add, 1, 1), timeout=5) == 2
        store.gate = asyncio.Event()
        store.claim_started.clear()
        first = await app.enqueue(add, 2, 2)  # its notification starts a claim, held open
        await asyncio.wait_for(store.claim_started.wait(), 5)
        second = await app.enqueue(add, 3, 3)  # announced while that claim is in flight
        await asyncio.sleep(0)  # deliver the event before the claim returns (with `first` only)
        store.gate.set()
        store.gate = None
        assert await app.result(first, timeout=5) == 4
        assert await app.result(second, timeout=5) == 6  # not 60 s later, at the poll
