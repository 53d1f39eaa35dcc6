"""The node's handle on one worker process: send a job, await the reply, signal, kill.

The worker's socket is read by an asyncio protocol; its death is seen through its pidfd,
which becomes readable when the process exits, even if a process the job forked still holds
the socket open. Signals go through the pidfd too, so they can never reach a recycled pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any, cast

from .frames import FrameError, FrameReader, encode_frame

log = logging.getLogger("asyncjobs.pool")

Reply = tuple[dict[str, Any], bytes]


class WorkerDied(Exception):
    """The worker ended (or broke the protocol) before it replied."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


class WorkerHandle(asyncio.Protocol):
    """One live worker, as the node sees it."""

    def __init__(
        self,
        pid: int,
        pidfd: int,
        max_body: int,
        max_jobs: int,
        on_exit: Callable[[WorkerHandle], None],
    ) -> None:
        self.pid = pid
        self.pidfd = pidfd
        self.max_jobs = max_jobs
        self.jobs_done = 0
        self.busy = False
        self.alive = True
        self.started = time.monotonic()
        self.idle_since = self.started
        self.uss_checked = 0.0
        self.exit_code: int | None = None
        self._on_exit = on_exit
        self._reader = FrameReader(max_body)
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._reply: asyncio.Future[Reply] | None = None
        self._exited = asyncio.Event()
        self._loop.add_reader(pidfd, self._process_exited)

    async def connect(self, sock: socket.socket, timeout: float) -> None:
        """Attach the worker's socket and wait for its ``ready`` frame."""
        await self._loop.create_unix_connection(lambda: self, sock=sock)
        async with asyncio.timeout(timeout):
            await self._ready

    # -- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except FrameError as exc:
            self._broken(f"sent a malformed frame ({exc})")
            return
        for header, body in frames:
            if header["op"] == "ready" and not self._ready.done():
                self._ready.set_result(None)
            elif self._reply is not None and not self._reply.done():
                self._reply.set_result((header, body))
            else:
                self._broken(f"sent an unexpected {header['op']!r} frame")

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self.alive:
            # Normally the pidfd reports the exit first; an early EOF means the same soon.
            self.kill()

    # -- the node's side -----------------------------------------------------------------------

    async def call(self, header: dict[str, Any], body: bytes) -> Reply:
        """Send one job and wait for its reply; ``WorkerDied`` if the worker ends first."""
        if not self.alive or self._transport is None:
            raise WorkerDied(self.describe_exit())
        self._reply = self._loop.create_future()
        self._transport.write(encode_frame(header, body))
        try:
            return await self._reply
        finally:
            self._reply = None

    def signal(self, signum: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError, OSError):
                signal.pidfd_send_signal(self.pidfd, signum)

    def kill(self) -> None:
        """SIGKILL the worker; the zygote then kills its process group and reaps it."""
        self.signal(signal.SIGKILL)

    def retire(self) -> None:
        """Ask an idle worker to exit (it sees end-of-stream), and make sure it does."""
        if self._transport is not None:
            self._transport.close()
        if self.alive:
            self._loop.call_later(2.0, self.kill)

    async def wait_exited(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._exited.wait()

    def exit_reported(self, code: int) -> None:
        """The zygote reaped this worker and told us how it ended."""
        self.exit_code = code
        self._exited.set()

    def describe_exit(self) -> str:
        code = self.exit_code
        if code is None:
            return "exited"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = {
                "SIGKILL": " (killed: by the node, the kernel's OOM killer, or an operator)",
                "SIGXCPU": " (it used up worker_cpu_seconds)",
                "SIGSEGV": " (a segmentation fault)",
            }.get(name, "")
            return f"was killed by {name}{hint}"
        return f"exited with status {code}"

    # -- internals ------------------------------------------------------------------------------

    def _process_exited(self) -> None:
        self._loop.remove_reader(self.pidfd)
        os.close(self.pidfd)
        self.alive = False
        if self._transport is not None:
            self._transport.abort()
        self._fail(WorkerDied("exited"))
        self._on_exit(self)

    def _broken(self, why: str) -> None:
        log.error("pool worker %d %s; killing it", self.pid, why)
        self.kill()
        self._fail(WorkerDied(why))

    def _fail(self, exc: WorkerDied) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(exc)
        if not self._ready.done():
            self._ready.set_exception(exc)
            self._ready.exception()  # retrieved: a spawn that is not awaited must not warn
