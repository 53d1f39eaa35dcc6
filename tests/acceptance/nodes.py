"""Real ``asyncjobs`` processes for the acceptance tests: nodes that run in the background, and
one-shot commands.

A node is started as ``python -m asyncjobs.cli node ...`` in its own process group, with only
the ``ASYNCJOBS_*`` variables a test gives it. ``NodeRunner.start`` returns once the node's row
is in ``<schema>.asyncjobs_nodes`` (polled with a deadline), so a test never sleeps on a guess.
Each node writes its output to a file, shown in failure messages; ``NodeRunner.close`` kills
every process group it started, whatever state the test left them in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

import asyncpg
import pytest

from ..helpers import wait_until

ROOT = Path(__file__).resolve().parents[2]  # the repository root: `tests` and plugins import
# Nodes die with the test process, however it dies (a timeout, Ctrl-C twice): teardown kills
# them when a test ends, and setpriv's parent-death signal covers the test run being killed,
# which would otherwise leave nodes claiming jobs forever. (Not preexec_fn: unsafe with threads.)
_DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL") if shutil.which("setpriv") else ()
CLI = (*_DIE_WITH_PARENT, sys.executable, "-m", "asyncjobs.cli")
TEST_APP = "tests.acceptance.jobs_app:app"
EXAMPLE_APP = "plugins_example:app"
NODE_START_TIMEOUT_S = 20.0
OUTPUT_TAIL_CHARS = 6000


def subprocess_env(
    dsn: str | None = None, schema: str | None = None, **settings: str
) -> dict[str, str]:
    """This process's environment without any ``ASYNCJOBS_*`` variable, plus the given ones.

    ``settings`` are further ``ASYNCJOBS_<NAME>`` values, e.g. ``poll_interval_s="0.5"``.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_")}
    env["PYTHONUNBUFFERED"] = "1"
    if dsn is not None:
        env["ASYNCJOBS_DSN"] = dsn
    if schema is not None:
        env["ASYNCJOBS_SCHEMA"] = schema
    for name, value in settings.items():
        env[f"ASYNCJOBS_{name.upper()}"] = value
    return env


async def run_cli(
    *args: str, env: Mapping[str, str], timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``asyncjobs ARGS`` to completion (killed after ``timeout`` s) and capture its output."""
    return await asyncio.to_thread(
        subprocess.run,
        [*CLI, *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A command's exit status and output, for assertion messages."""
    return (
        f"command {result.args!r} exited {result.returncode}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


class NodeProcess:
    """One ``asyncjobs node`` subprocess."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, label: str) -> None:
        self.proc = proc
        self.log_path = log_path
        self.label = label
        self.node_id: uuid.UUID | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        """Everything the node printed so far (stdout and stderr), the end if it is long."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        if len(text) > OUTPUT_TAIL_CHARS:
            text = "...\n" + text[-OUTPUT_TAIL_CHARS:]
        return f"--- output of {self.label} (pid {self.pid}) ---\n{text}"

    def send(self, signum: int) -> float:
        """Send a signal to the node process; returns the monotonic time it was sent."""
        self.proc.send_signal(signum)
        return time.monotonic()

    async def wait_exit(self, timeout: float, what: str = "") -> int:
        """The exit status, polled until ``timeout`` s (then the test fails, with the output)."""
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{self.label} did not exit within {timeout:g} s"
                    f"{' ' + what if what else ''}\n{self.output()}",
                    pytrace=False,
                )
            await asyncio.sleep(0.02)
        return code

    async def wait_output(self, text: str, timeout: float = 10.0) -> None:
        """Wait until the node has printed ``text``."""
        await wait_until(
            lambda: text in self.log_path.read_text(errors="replace"),
            timeout=timeout,
            what=f"{self.label} to print {text!r}\n{self.output()}",
        )

    def kill(self) -> None:
        """SIGKILL the node's whole process group, and reap it."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):  # a kernel problem, not ours
            self.proc.wait(timeout=10)


class NodeRunner:
    """Starts nodes on one database and schema; ``close()`` kills all of them."""

    def __init__(self, dsn: str, schema: str, log_dir: Path) -> None:
        self.dsn = dsn
        self.schema = schema
        self.log_dir = log_dir
        self.nodes: list[NodeProcess] = []

    async def start(
        self,
        *args: str,
        app: str = TEST_APP,
        env: Mapping[str, str] | None = None,
        timeout: float = NODE_START_TIMEOUT_S,
    ) -> NodeProcess:
        """Start ``asyncjobs node --app APP ARGS`` and wait until it has registered itself."""
        node = self.spawn(*args, app=app, env=env)
        node.node_id = await wait_until(
            lambda: self._registered(node),
            timeout=timeout,
            interval=0.05,
            what=f"{node.label} to register in {self.schema}.asyncjobs_nodes",
        )
        return node

    def spawn(
        self, *args: str, app: str = TEST_APP, env: Mapping[str, str] | None = None
    ) -> NodeProcess:
        """Start ``asyncjobs node --app APP ARGS`` (without waiting for anything)."""
        number = len(self.nodes) + 1
        log_path = self.log_dir / f"node{number}.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(
                [*CLI, "node", "--app", app, *args],
                cwd=ROOT,
                env=dict(env) if env is not None else subprocess_env(self.dsn, self.schema),
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one in teardown
            )
        node = NodeProcess(proc, log_path, f"node {number}")
        self.nodes.append(node)
        return node

    async def _registered(self, node: NodeProcess) -> uuid.UUID | None:
        if node.proc.poll() is not None:
            pytest.fail(
                f"{node.label} exited with status {node.proc.returncode} before it registered\n"
                f"{node.output()}",
                pytrace=False,
            )
        con = await asyncpg.connect(self.dsn)
        try:
            return await con.fetchval(
                f"SELECT id FROM {self.schema}.asyncjobs_nodes WHERE pid = $1 "
                "ORDER BY started_at DESC LIMIT 1",
                node.pid,
            )
        except (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError):
            return None  # the node has not migrated yet
        finally:
            await con.close()

    def outputs(self) -> str:
        return "\n".join(node.output() for node in self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
