"""A node's own liveness: whether it may claim, judged by its last successful heartbeat.

A node that has gone ``node_timeout_s`` without a heartbeat may have been reaped by the others
(DESIGN §10), so it fences itself: it claims nothing until a heartbeat succeeds again. Its
running jobs go on and their outcomes stay buffered; the heartbeat decides whether it must
rejoin under a new id.

The same judgement keeps a node from reaping others too soon: a node reaps only once it has
been in touch with the database, without a failed heartbeat, for ``node_timeout_s``. After
an outage that every node lived through, each one's last heartbeat is old; without this,
the first node back would reap the others, alive and about to heartbeat, and lose their
at-most-once jobs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio

from ..jobs import JobId

log = logging.getLogger("asyncjobs.node")


class Liveness:
    def __init__(self, node_timeout_s: float, node_id: Callable[[], JobId]) -> None:
        self._timeout = node_timeout_s
        self._node_id = node_id
        self._last_beat = time.monotonic()  # registration counts as the first heartbeat
        self._in_touch_since: float | None = self._last_beat  # since the last failed beat
        self._fenced = False
        self._beat_ok = anyio.Event()

    def registered(self) -> None:
        """The node (re)registered: that counts as a heartbeat."""
        self._last_beat = self._in_touch_since = time.monotonic()

    def heartbeat_failed(self) -> None:
        self._in_touch_since = None

    def may_reap(self) -> bool:
        """True once the node has been in touch for ``node_timeout_s``: long enough that a
        live node would have heartbeated meanwhile."""
        since = self._in_touch_since
        return since is not None and time.monotonic() - since >= self._timeout

    def may_claim(self) -> bool:
        """False once the node has gone ``node_timeout_s`` without a heartbeat."""
        silent = time.monotonic() - self._last_beat
        if silent <= self._timeout:
            return True
        if not self._fenced:
            self._fenced = True
            log.error(
                "node %s has not heartbeated for %.0f s (node_timeout_s is %g): it may have "
                "been reaped, so it stops claiming until a heartbeat succeeds; running jobs "
                "go on and their outcomes stay buffered", self._node_id(), silent, self._timeout,
            )  # fmt: skip
        return False

    def heartbeat_succeeded(self) -> None:
        self._last_beat = time.monotonic()
        if self._in_touch_since is None:
            self._in_touch_since = self._last_beat
        if self._fenced:
            self._fenced = False
            log.warning("node %s heartbeats again: claiming resumes", self._node_id())
        self._beat_ok.set()

    async def wait_until_heartbeat_succeeds(self) -> None:
        self._beat_ok = anyio.Event()
        await self._beat_ok.wait()
