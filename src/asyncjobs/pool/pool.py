"""The node's side of the process pool: the zygote's lifecycle, idle and busy workers.

- The zygote is a child of the node, watched through its pidfd. If it dies, its workers die
  with it (PDEATHSIG), their jobs fail as crashed, and it is started again.
- Workers are kept between ``min_workers`` and ``max_workers``. A job takes an idle worker,
  or a new one while below the maximum, or waits its turn.
- A worker is retired after ``max_jobs`` jobs (jittered, so workers do not all recycle
  together), when its USS passes ``max_uss_bytes``, when a job leaves processes behind, and
  after ``idle_timeout_s`` idle while above the minimum. A dead worker is replaced at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections import deque
from typing import Any

from ..errors import PoolError
from .config import PoolConfig
from .frames import decode_message, encode_frame
from .handle import WorkerDied, WorkerHandle
from .memory import memory_use

log = logging.getLogger("asyncjobs.pool")

CONTROL_MAX_BYTES = 1024 * 1024
WORKER_READY_TIMEOUT_S = 10.0  # a forked worker is ready in milliseconds; this is a hang
USS_CHECK_INTERVAL_S = 0.1  # reading smaps_rollup walks page tables: not after every tiny job
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
RECYCLE_JITTER = 0.1  # max_jobs is spread by +/-10% per worker


class ProcessPool:
    """Warm worker processes forked from one zygote. Start it before any DB connection."""

    def __init__(self, config: PoolConfig) -> None:
        self.config = config
        self.workers: dict[int, WorkerHandle] = {}
        self._idle: list[WorkerHandle] = []
        self._count = 0  # live workers plus those being spawned
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._spawning: dict[int, asyncio.Future[tuple[int, list[int]]]] = {}
        self._refs = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._zygote: subprocess.Popen[bytes] | None = None
        self._zygote_pidfd: int | None = None
        self._control: socket.socket | None = None
        self._zygote_ready = asyncio.Event()
        self._closing = False
        self._restarts = 0
        self.replaced = 0  # workers replaced after dying (for logs and benchmarks)

    @property
    def zygote_pid(self) -> int | None:
        return self._zygote.pid if self._zygote is not None else None

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the zygote (imports and preloads) and the minimum number of workers."""
        await self._start_zygote()
        try:
            for _ in range(self.config.min_workers):
                self._count += 1
                self._idle.append(await self._spawn())
        except BaseException:
            await self.close()
            raise
        self._background(self._prune_idle())

    async def close(self) -> None:
        """Stop every worker and the zygote; nothing outlives this call."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for worker in list(self.workers.values()):
            worker.kill()
        control, self._control = self._control, None
        if control is not None:
            asyncio.get_running_loop().remove_reader(control.fileno())
            control.close()  # the zygote sees end-of-stream, kills its workers and exits
        proc, pidfd = self._zygote, self._zygote_pidfd
        if proc is not None and pidfd is not None:
            loop = asyncio.get_running_loop()
            exited = asyncio.Event()
            loop.remove_reader(pidfd)
            loop.add_reader(pidfd, exited.set)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await exited.wait()
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self._forget_zygote()
        closed = PoolError("the process pool is closed")
        waiting: list[asyncio.Future[Any]] = [*self._waiters, *self._spawning.values()]
        for future in waiting:  # none waits forever
            if not future.done():
                future.set_exception(closed)

    # -- taking and giving back workers ---------------------------------------------------------

    async def acquire(self) -> WorkerHandle:
        """An idle worker, a new one, or the next one freed; never more than max_workers."""
        while True:
            if self._closing:
                raise PoolError("the process pool is closed")
            while self._idle:
                worker = self._idle.pop()  # the most recently used: its caches are warm
                if worker.alive:
                    worker.busy = True
                    return worker
            if self._count < self.config.max_workers:
                self._count += 1
                try:
                    worker = await self._spawn()
                except BaseException:
                    self._count -= 1
                    self._wake_one()
                    raise
                worker.busy = True
                return worker
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # we were woken but leave: pass the turn on
                raise

    def release(self, worker: WorkerHandle, *, retire: bool = False) -> None:
        """Give a worker back after a job that it answered."""
        worker.busy = False
        worker.jobs_done += 1
        worker.idle_since = time.monotonic()
        if not worker.alive:
            self.discard(worker)
        elif retire or worker.jobs_done >= worker.max_jobs or self._over_memory(worker):
            self._retire(worker)
        elif self._closing:
            worker.kill()
        else:
            self._idle.append(worker)
            self._wake_one()

    def discard(self, worker: WorkerHandle) -> None:
        """Forget a dead (or killed) worker and replace it."""
        if self.workers.pop(worker.pid, None) is None:
            return
        worker.kill()
        self._count -= 1
        if not self._closing:
            self.replaced += 1
            self._top_up()
            self._wake_one()

    async def call(self, worker: WorkerHandle, header: dict[str, Any], body: bytes) -> Any:
        """Run one job on ``worker``; on its death wait briefly for the zygote's exit report."""
        try:
            return await worker.call(header, body)
        except WorkerDied as exc:
            if exc.how == "exited":
                await worker.wait_exited(0.5)
                exc.how = worker.describe_exit()
            raise

    def _worker_exited(self, worker: WorkerHandle) -> None:
        if worker in self._idle:
            self._idle.remove(worker)
        if not worker.busy:
            self.discard(worker)  # a busy one is discarded by the job that used it

    # -- internals ------------------------------------------------------------------------------

    def _retire(self, worker: WorkerHandle) -> None:
        self.workers.pop(worker.pid, None)
        self._count -= 1
        worker.retire()
        if not self._closing:
            self._top_up()
            self._wake_one()

    def _over_memory(self, worker: WorkerHandle) -> bool:
        limit = self.config.max_uss_bytes
        if limit is None:
            return False
        now = time.monotonic()
        if worker.uss_checked and now - worker.uss_checked < USS_CHECK_INTERVAL_S:
            return False
        worker.uss_checked = now
        use = memory_use(worker.pid)
        if use is None or use.uss <= limit:
            return False
        log.warning(
            "pool worker %d uses %.0f MB of private memory (max_worker_uss_bytes is %.0f MB); "
            "retiring it",
            worker.pid, use.uss / 1e6, limit / 1e6,
        )  # fmt: skip
        return True

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _top_up(self) -> None:
        """Spawn in the background until the pool holds ``min_workers``."""
        while self._count < self.config.min_workers and not self._closing:
            self._count += 1
            self._background(self._spawn_idle())

    async def _spawn_idle(self) -> None:
        try:
            worker = await self._spawn()
        except (PoolError, WorkerDied, OSError, TimeoutError) as exc:
            self._count -= 1
            if not self._closing:
                log.error("could not start a pool worker: %s", exc)
            self._wake_one()
            return
        self._idle.append(worker)
        self._wake_one()

    async def _spawn(self) -> WorkerHandle:
        await self._zygote_ready.wait()
        control = self._control
        if control is None:
            raise PoolError("the process pool is closed")
        ref = next(self._refs)
        future = asyncio.get_running_loop().create_future()
        self._spawning[ref] = future
        try:
            control.send(encode_frame({"op": "spawn", "ref": ref}))
            pid, fds = await future
        finally:
            self._spawning.pop(ref, None)
        sock_fd, pidfd = fds
        jitter = 1.0 + RECYCLE_JITTER * (2.0 * random.random() - 1.0)
        worker = WorkerHandle(
            pid, pidfd, self.config.max_payload + 1024,
            max(1, round(self.config.max_jobs * jitter)), self._worker_exited,
        )  # fmt: skip
        self.workers[pid] = worker
        try:
            await worker.connect(socket.socket(fileno=sock_fd), WORKER_READY_TIMEOUT_S)
        except BaseException:
            self.workers.pop(pid, None)
            worker.kill()
            raise
        return worker

    def _background(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _prune_idle(self) -> None:
        interval = min(self.config.idle_timeout_s / 2, 5.0)
        while True:
            await asyncio.sleep(interval)
            cutoff = time.monotonic() - self.config.idle_timeout_s
            for worker in list(self._idle):
                if len(self.workers) <= self.config.min_workers:
                    break
                if worker.idle_since < cutoff and worker.alive:
                    self._idle.remove(worker)
                    self._retire(worker)

    # -- the zygote -----------------------------------------------------------------------------

    async def _start_zygote(self) -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # Popen returns once the child exists; it is then watched through its pidfd.
            proc = subprocess.Popen(  # noqa: ASYNC220
                [sys.executable, "-m", "asyncjobs.pool.zygote", str(os.getpid()),
                 str(theirs.fileno())],
                pass_fds=[theirs.fileno()], env=self.config.env, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            theirs.close()
        ours.setblocking(False)
        cfg = self.config
        bootstrap = {
            "op": "start", "sys_path": [p or os.getcwd() for p in sys.path], "jobs": cfg.jobs,
            "preloads": cfg.preloads, "teardowns": cfg.teardowns, "env": cfg.env,
            "limits": cfg.limits.to_json(), "max_payload": cfg.max_payload,
        }  # fmt: skip
        try:
            await loop.sock_sendall(ours, encode_frame(bootstrap))
            async with asyncio.timeout(cfg.start_timeout_s):
                data = await loop.sock_recv(ours, CONTROL_MAX_BYTES)
        except (TimeoutError, OSError) as exc:
            proc.kill()
            proc.wait()
            ours.close()
            what = "did not start" if isinstance(exc, TimeoutError) else f"failed ({exc})"
            raise PoolError(
                f"the process pool's zygote {what} within pool_start_timeout_s "
                f"({cfg.start_timeout_s:g} s): its plug-ins' imports or preload hooks are too "
                "slow or hang"
            ) from None
        header = decode_message(data) if data else {"op": "failed", "message": "it exited"}
        if header["op"] != "ready":
            proc.wait()
            ours.close()
            raise PoolError(
                "the process pool's zygote could not import the isolated jobs or run the "
                f"preload hooks: {header.get('message')}\n{header.get('error', '')}".rstrip()
            )
        self._zygote, self._control = proc, ours
        self._zygote_pidfd = os.pidfd_open(proc.pid)
        loop.add_reader(self._zygote_pidfd, self._zygote_died)
        loop.add_reader(ours.fileno(), self._on_control)
        self._zygote_ready.set()
        log.info(
            "process pool ready: zygote %d, %d to %d workers, jobs %s",
            proc.pid, cfg.min_workers, cfg.max_workers, ", ".join(sorted(cfg.jobs)),
        )  # fmt: skip

    def _on_control(self) -> None:
        control = self._control
        if control is None:
            return
        try:
            data, fds, _, _ = socket.recv_fds(control, CONTROL_MAX_BYTES, 2)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        if not data:
            asyncio.get_running_loop().remove_reader(control.fileno())
            return  # the pidfd reports the zygote's death
        header = decode_message(data)
        op = header["op"]
        if op == "spawned":
            future = self._spawning.get(header["ref"])
            if future is not None and not future.done():
                future.set_result((header["pid"], fds))
                return
            for fd in fds:
                os.close(fd)
        elif op == "spawn_failed":
            future = self._spawning.get(header["ref"])
            if future is not None and not future.done():
                future.set_exception(PoolError(f"the zygote could not fork: {header['error']}"))
        elif op == "exited":
            worker = self.workers.get(header["pid"])
            if worker is not None:
                worker.exit_reported(header["code"])

    def _zygote_died(self) -> None:
        proc = self._zygote
        self._forget_zygote()
        for future in self._spawning.values():
            if not future.done():
                future.set_exception(PoolError("the zygote died"))
        if self._closing or proc is None:
            return
        code = proc.wait()
        log.error(
            "the process pool's zygote %d died (exit %s); its workers die with it, their jobs "
            "fail as crashed, and it is started again",
            proc.pid, code,
        )  # fmt: skip
        self._background(self._restart_zygote())

    def _forget_zygote(self) -> None:
        loop = asyncio.get_running_loop()
        self._zygote_ready.clear()
        if self._zygote_pidfd is not None:
            loop.remove_reader(self._zygote_pidfd)
            os.close(self._zygote_pidfd)
            self._zygote_pidfd = None
        if self._control is not None:
            loop.remove_reader(self._control.fileno())
            self._control.close()
            self._control = None
        self._zygote = None

    async def _restart_zygote(self) -> None:
        while not self._closing:
            delay = RESTART_BACKOFF_S[min(self._restarts, len(RESTART_BACKOFF_S) - 1)]
            self._restarts += 1
            await asyncio.sleep(delay)
            try:
                await self._start_zygote()
            except PoolError as exc:
                log.error("could not restart the zygote: %s", exc)
                continue
            self._restarts = 0
            self._top_up()
            self._wake_one()
            return
