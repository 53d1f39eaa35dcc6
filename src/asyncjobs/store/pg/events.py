"""EventsMixin: PostgresStore's events, from a LISTEN connection kept open (and reopened)."""

from __future__ import annotations

import anyio
import asyncpg

from ..base import EventHandler, StoreEvent
from ..connections import CONNECTION_ERRORS
from .base import _SERVER_SETTINGS, PgStoreBase, log

_EVENT_KINDS = {"q": "queue", "s": "scheduled", "c": "cancel", "f": "finished"}
_LISTEN_RETRY_MAX_S = 5.0  # the LISTEN connection retries with backoff up to this delay


class EventsMixin(PgStoreBase):
    """Events: the store's notifications (new work, cancels, finished jobs) as StoreEvents."""

    async def listen(
        self,
        handler: EventHandler,
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Hold a LISTEN connection; on loss, reconnect with backoff and emit ``reconnected``."""
        started = False
        delay = 0.05
        while True:
            lost = anyio.Event()
            con: asyncpg.Connection | None = None
            try:
                con = await asyncpg.connect(
                    self.dsn,
                    timeout=self.settings.connect_timeout_s,
                    server_settings={**_SERVER_SETTINGS, "application_name": "asyncjobs-listen"},
                )

                def on_notify(_c: object, _pid: int, _chan: str, payload: object) -> None:
                    kind, _, value = str(payload).partition(":")
                    handler(StoreEvent(_EVENT_KINDS.get(kind, kind), value))

                con.add_termination_listener(lambda _c, ev=lost: ev.set())  # this loop's event
                await con.add_listener(self.channel, on_notify)
                delay = 0.05
                if started:
                    log.info("LISTEN connection to %s restored", self.target)
                    handler(StoreEvent("reconnected", ""))
                else:
                    started = True
                    task_status.started()
                await lost.wait()
                log.warning("LISTEN connection to %s lost; reconnecting", self.target)
            except CONNECTION_ERRORS as exc:
                if not started:
                    raise self._translate(exc) from exc
                log.warning(
                    "LISTEN connection to %s failed (%s); retrying in %.2f s",
                    self.target,
                    exc,
                    delay,
                )
                await anyio.sleep(delay)
                delay = min(delay * 2, _LISTEN_RETRY_MAX_S)
            finally:
                if con is not None and not con.is_closed():
                    con.terminate()
