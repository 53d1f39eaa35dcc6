"""The local nodes a load test starts: real ``asyncjobs node`` processes, stopped for sure.

Each node runs ``python -m asyncjobs.cli node --app asyncjobs.loadtest.jobs:app`` in its own
session (its own process group, so one signal reaches its pool too, and a Ctrl-C in the
terminal reaches only the harness, which then stops the nodes itself). ``stop()`` sends
SIGTERM, then SIGKILL to the whole group after a deadline; it runs in the harness's
``finally``. Where ``setpriv`` exists, the kernel also kills a node if the harness dies
without cleaning up (``kill -9``).

The DSN reaches the nodes in ``ASYNCJOBS_DSN``, never on a command line that ``ps`` shows.
Other ``ASYNCJOBS_*`` variables of the harness pass through, to tune the nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from ..store.base import Store
from .jobs import node_queues

NODE_APP = "asyncjobs.loadtest.jobs:app"
START_TIMEOUT_S = 60.0  # a node's pool starts its zygote first, which imports the jobs
KILL_AFTER_S = 10.0  # after SIGTERM, a node that has not exited gets SIGKILL
SHUTDOWN_GRACE_S = 1.0  # what a node gives its running jobs once told to stop
OUTPUT_TAIL_CHARS = 3000
_DIE_WITH_HARNESS = ("setpriv", "--pdeathsig", "KILL") if shutil.which("setpriv") else ()


class NodeStartError(Exception):
    """A node the harness started exited, or did not register in time."""


class LocalNode:
    """One node process, and its memory over time."""

    def __init__(self, number: int, proc: asyncio.subprocess.Process, log_path: Path) -> None:
        self.number = number
        self.proc = proc
        self.log_path = log_path
        self.samples: list[tuple[float, int, int]] = []  # (t, node RSS, RSS with its pool)
        self._ps: Any = None  # psutil.Process

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output_tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-OUTPUT_TAIL_CHARS:].strip()

    def sample(self, t: float) -> None:
        """Record the node's RSS, and its RSS plus its children's (the pool), at ``t``."""
        import psutil

        try:
            if self._ps is None:
                self._ps = psutil.Process(self.pid)
            rss = int(self._ps.memory_info().rss)
            tree = rss
            for child in self._ps.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    tree += int(child.memory_info().rss)
        except psutil.Error:
            return  # it has exited
        self.samples.append((t, rss, tree))


class LocalCluster:
    """Starts ``count`` nodes on one schema, and stops them all."""

    def __init__(
        self,
        count: int,
        *,
        dsn: str,
        schema: str,
        table_prefix: str,
        concurrency: int,
        workers: int,
        log_dir: Path,
    ) -> None:
        self.count = count
        self.dsn = dsn
        self.schema = schema
        self.table_prefix = table_prefix
        self.concurrency = concurrency
        self.workers = workers
        self.log_dir = log_dir
        self.nodes: list[LocalNode] = []

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "ASYNCJOBS_APP"}
        env |= {
            "ASYNCJOBS_DSN": self.dsn,
            "ASYNCJOBS_SCHEMA": self.schema,
            "ASYNCJOBS_TABLE_PREFIX": self.table_prefix,
            "ASYNCJOBS_WORKERS_MAX": str(self.workers),
            "ASYNCJOBS_WORKERS_MIN": str(min(self.workers, 1)),
            "PYTHONUNBUFFERED": "1",
        }
        return env

    async def start(self, store: Store, timeout: float = START_TIMEOUT_S) -> None:
        """Start the nodes and return once each has registered in the nodes table."""
        args = [
            *_DIE_WITH_HARNESS, sys.executable, "-m", "asyncjobs.cli", "--log-level", "WARNING",
            "node", "--app", NODE_APP, "--concurrency", str(self.concurrency),
            "--queues", node_queues(self.workers), "--shutdown-grace", str(SHUTDOWN_GRACE_S),
        ]  # fmt: skip
        env = self._env()
        for number in range(1, self.count + 1):
            log_path = self.log_dir / f"node{number}.log"
            with log_path.open("wb") as log_file:
                proc = await asyncio.create_subprocess_exec(
                    *args,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
            self.nodes.append(LocalNode(number, proc, log_path))
        host = socket.gethostname()
        deadline = time.monotonic() + timeout
        while True:
            for node in self.nodes:
                if node.proc.returncode is not None:
                    raise NodeStartError(
                        f"node {node.number} (pid {node.pid}) exited with status "
                        f"{node.proc.returncode} before it registered. Its output:\n"
                        f"{node.output_tail()}"
                    )
            up = {n.pid for n in await store.live_nodes() if n.host == host}
            if all(node.pid in up for node in self.nodes):
                return
            if time.monotonic() > deadline:
                late = [n.number for n in self.nodes if n.pid not in up]
                raise NodeStartError(
                    f"node(s) {late} did not register within {timeout:g} s. Output of node "
                    f"{late[0]}:\n{self.nodes[late[0] - 1].output_tail()}"
                )
            await anyio.sleep(0.1)

    def sample(self, t: float) -> None:
        for node in self.nodes:
            if node.proc.returncode is None:
                node.sample(t)

    async def stop(self, kill_after: float = KILL_AFTER_S) -> None:
        """SIGTERM every node, then SIGKILL the process group of any still running after
        ``kill_after`` seconds (and of every node, for strays of its pool)."""
        for node in self.nodes:
            if node.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    node.proc.send_signal(signal.SIGTERM)
        with anyio.move_on_after(kill_after):
            for node in self.nodes:
                await node.proc.wait()
        for node in self.nodes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(node.pid, signal.SIGKILL)
            with anyio.move_on_after(5.0):
                await node.proc.wait()

    def crashed(self) -> list[LocalNode]:
        """Nodes that have exited on their own (before ``stop``)."""
        return [n for n in self.nodes if n.proc.returncode is not None]
