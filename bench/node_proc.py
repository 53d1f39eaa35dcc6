"""A node in its own process, for the figures where producer and node must not share a loop.

Child side: ``python -m bench.node_proc --dsn ... --schema ... --concurrency N`` runs one node
on uvloop (the loop nodes use in production) with the benchmark jobs, prints ``ready <node id>``
once it listens and has registered, and on SIGTERM stops with the given shutdown grace. Any
other setting comes from ``ASYNCJOBS_*`` variables, as for ``asyncjobs node``.

Parent side: ``NodeProcess``, an async context manager that starts it, waits for ``ready`` and
always stops it: SIGTERM, then SIGKILL if it has not exited within the grace. Its base,
``ChildProcess``, also runs the bare baselines' children (``bench.bare_proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Self

from asyncjobs import App, Settings

from .bare_proc import READY_LINE, stop_event
from .common import REPO_ROOT, register_jobs

START_TIMEOUT_S = 30.0


class ChildProcess:
    """A child process that prints ``ready`` once it is; ``pid`` is what psutil should measure.

    Used as an async context manager: entering starts it and waits for ``ready``; leaving
    always stops it. Words after ``ready`` on that line are kept in ``ready_words``.
    """

    def __init__(
        self,
        args: list[str],
        *,
        kill_after_s: float = 5.0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.args = args
        self.kill_after_s = kill_after_s
        self.env = None if env is None else dict(env)
        self.proc: asyncio.subprocess.Process | None = None
        self.ready_words: list[str] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def readline(self, timeout: float) -> bytes:
        """The child's next line of output (empty if it exited)."""
        assert self.proc is not None and self.proc.stdout is not None
        return await asyncio.wait_for(self.proc.stdout.readline(), timeout)

    async def __aenter__(self) -> Self:
        # stderr is inherited so a crashing child explains itself in the benchmark's output.
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, env=self.env
        )
        try:
            line = await self.readline(START_TIMEOUT_S)
            words = line.split()
            if not words or words[0] != READY_LINE:
                raise RuntimeError(f"{self.args[2]} did not start (it said {line!r})")
            self.ready_words = [w.decode() for w in words[1:]]
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def kill(self) -> float:
        """SIGKILL at once (a crash, as ``kill -9``) and reap the process; returns the
        ``time.perf_counter()`` at which the signal was sent."""
        proc = self.proc
        assert proc is not None
        sent = time.perf_counter()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        return sent

    async def stop(self) -> bytes:
        """SIGTERM, then SIGKILL if it has not exited in time; returns what it printed since
        the last line read (nothing if it had already been stopped or was killed)."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return b""
        proc.send_signal(signal.SIGTERM)
        out = b""
        try:
            # communicate() reads while waiting: a child printing more than a pipe holds
            # would otherwise never exit.
            out, _ = await asyncio.wait_for(proc.communicate(), self.kill_after_s)
        except TimeoutError:
            pass  # SIGKILL below
        finally:
            if proc.returncode is None:
                # Too slow, or we are being cancelled (Ctrl-C): a stray node would keep
                # claiming jobs, so it never outlives the benchmark.
                proc.kill()
                await proc.wait()
        return out


class NodeProcess(ChildProcess):
    """A running ``bench.node_proc`` child: one asyncjobs node.

    ``settings`` are further node settings, passed as ``ASYNCJOBS_<NAME>`` variables (e.g.
    ``{"heartbeat_interval_s": 1}``); ``env`` adds other variables for the jobs. The child
    sees no ``ASYNCJOBS_*`` variable of this process, so a stray one cannot change a figure.
    """

    def __init__(
        self,
        dsn: str,
        schema: str,
        *,
        concurrency: int,
        poll_interval_s: float = 2.0,
        shutdown_grace_s: float = 0.0,
        kill_after_s: float = 5.0,
        settings: Mapping[str, object] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        args = [
            sys.executable,
            "-m",
            "bench.node_proc",
            "--dsn",
            dsn,
            "--schema",
            schema,
            "--concurrency",
            str(concurrency),
            "--poll-interval",
            str(poll_interval_s),
            "--shutdown-grace",
            str(shutdown_grace_s),
        ]
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCJOBS_")}
        for name, value in (settings or {}).items():
            if name in _FLAG_SETTINGS:
                raise ValueError(f"pass {name} as its own argument, not in settings")
            child_env[f"ASYNCJOBS_{name.upper()}"] = str(value)
        child_env |= env or {}
        super().__init__(args, kill_after_s=kill_after_s, env=child_env)

    @property
    def node_id(self) -> uuid.UUID:
        """The node's id, as it registered (the victim of a reap is found by it)."""
        return uuid.UUID(self.ready_words[0])


# Settings the child takes as command-line flags; the flags would override the variables.
_FLAG_SETTINGS = frozenset({"dsn", "schema", "concurrency", "poll_interval_s", "shutdown_grace_s"})


# -- child ---------------------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> None:
    settings = Settings.from_env(
        dsn=args.dsn,
        schema=args.schema,
        concurrency=args.concurrency,
        poll_interval_s=args.poll_interval,
        shutdown_grace_s=args.shutdown_grace,
    )
    app = App(settings=settings)
    register_jobs(app)
    stop = stop_event(signal.SIGTERM, signal.SIGINT)
    await app.start()
    try:
        # app.start() returns once the LISTEN connection is up and the node has registered and
        # started its fetcher: from here a NOTIFY reaches it.
        sys.stdout.buffer.write(READY_LINE + b" " + str(app.node.id).encode() + b"\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await app.stop(grace=args.shutdown_grace)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.node_proc")
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--poll-interval", type=float, default=2.0)
    parser.add_argument("--shutdown-grace", type=float, default=0.0)
    args = parser.parse_args()
    # Only errors: the node's warnings on a forced stop are expected here and would clutter
    # the benchmark output.
    logging.basicConfig(level=logging.ERROR, format="node_proc %(levelname)s %(name)s: %(message)s")
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(args))


if __name__ == "__main__":
    main()
