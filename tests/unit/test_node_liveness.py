"""A node that cannot heartbeat stops claiming; a reaped node rejoins, even past a failure."""

from __future__ import annotations

from typing import Any

from asyncjobs import App, JobState, MemoryStore, Settings, StoreUnavailableError
from asyncjobs.ids import new_id
from tests.helpers import wait_until

FAST = {"heartbeat_interval_s": 0.05, "node_timeout_s": 0.2, "poll_interval_s": 0.05}


class FaultyStore(MemoryStore):
    """A MemoryStore whose heartbeats (and registrations) can be made to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.heartbeats_fail = False
        self.failed_heartbeats = 0
        self.registrations_to_fail = 0

    async def heartbeat(self, node_id: Any, running: int, workers: int = 0, stats: Any = ()) -> Any:
        if self.heartbeats_fail:
            self.failed_heartbeats += 1
            raise StoreUnavailableError("test", "heartbeats are failing")
        return await super().heartbeat(node_id, running, workers, stats)

    async def register_node(self, node: Any) -> None:
        if self.registrations_to_fail:
            self.registrations_to_fail -= 1
            raise StoreUnavailableError("test", "registration failed")
        await super().register_node(node)


def app_on(store: FaultyStore) -> App:
    app = App(settings=Settings(dsn="memory://", **FAST), store=store)

    @app.job()
    async def add(a: int, b: int) -> int:
        return a + b

    return app


async def test_a_node_that_cannot_heartbeat_past_its_timeout_stops_claiming() -> None:
    store = FaultyStore()
    app = app_on(store)
    async with app:
        assert await app.result(await app.enqueue("add", 1, 1), timeout=5) == 2
        store.heartbeats_fail = True
        await wait_until(lambda: not app.node.may_claim(), timeout=5, what="the node to fence")
        job_id = await app.enqueue("add", 2, 2)
        failed_before = store.failed_heartbeats
        await wait_until(
            lambda: store.failed_heartbeats >= failed_before + 3, what="more failed heartbeats"
        )
        assert (await app.get(job_id)).state is JobState.QUEUED  # fenced: not claimed
        store.heartbeats_fail = False
        assert await app.result(job_id, timeout=5) == 4  # claiming resumed


async def test_a_reaped_node_rejoins_under_a_new_id_even_if_registering_fails_once() -> None:
    store = FaultyStore()
    app = app_on(store)
    async with app:
        first_id = app.node.id
        store.registrations_to_fail = 1
        reaper = new_id()
        store.heartbeats_fail = True  # silent long enough to be reaped
        await wait_until(lambda: not app.node.may_claim(), timeout=5, what="the node to fence")
        assert [r.node_id for r in await store.reap(reaper, 0.0, 10)] == [first_id]
        store.heartbeats_fail = False
        await wait_until(
            lambda: app.node.id != first_id and app.node.may_claim() and app.node.id in store.nodes,
            timeout=5,
            what="the node to rejoin under a new id",
        )
        assert store.registrations_to_fail == 0  # the first try failed, a later one worked
        assert await app.result(await app.enqueue("add", 3, 3), timeout=5) == 6
