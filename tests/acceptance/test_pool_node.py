"""The process pool in a real ``asyncjobs node``: kill -9 leaves no orphans, and misbehaving
plug-ins fail only their own jobs (DESIGN §7, §10).

The node runs the example plug-ins (``plugins_example.cpu`` and ``.misbehaving``) on real
Postgres; the test enqueues through its own app with the same job names and queues.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from asyncjobs import App, JobFailedError, JobState, Settings
from plugins_example import cpu, misbehaving
from tests.helpers import wait_until
from tests.procfs import alive, children, cmdline, proc_stat

from .nodes import NodeRunner, subprocess_env

PLUGINS = "plugins_example.cpu,plugins_example.misbehaving"


@asynccontextmanager
async def producer_app(settings: Settings) -> AsyncIterator[App]:
    """An app that knows the plug-ins' job names and queues, started without a node: it never
    runs them, and must not reap the node under test by its own (shorter) node timeout."""
    app = App(settings=settings)
    for module in (cpu, misbehaving):
        for definition in module.app.registry.values():
            if definition.isolated and definition.fn.__module__ == module.__name__:
                app.job(isolated=True, name=definition.name, queue=definition.queue)(definition.fn)
    await app.start(node=False)
    try:
        yield app
    finally:
        await app.stop()


def pool_processes(node_pid: int) -> tuple[int, list[int]] | None:
    """The node's zygote and its workers, once they exist."""
    for child in children(node_pid):
        if b"asyncjobs.pool.zygote" in cmdline(child):
            return child, children(child)
    return None


async def test_kill_9_of_a_node_with_busy_workers_leaves_no_zygote_or_worker_within_1_s(
    nodes: NodeRunner, pg_settings: Settings, pg_dsn: str, pg_schema: str
) -> None:
    env = subprocess_env(pg_dsn, pg_schema, workers_min="2", workers_max="2")
    node = await nodes.start(
        "--plugins", PLUGINS, "--queues", "default,cpu=2", app="plugins_example:app", env=env
    )
    async with producer_app(pg_settings) as producer:
        ids = [await producer.enqueue("hash_chain", 10**10) for _ in range(2)]
        await wait_until(
            lambda: all_running(producer, ids), timeout=30, what="both jobs to be running"
        )
        found = await wait_until(lambda: pool_processes(node.pid), what="the zygote")
        zygote, workers = found
        assert len(workers) == 2, workers
        pids = [zygote, *workers]

        os.kill(node.pid, signal.SIGKILL)  # the node only: its zygote is in its process group
        killed = time.monotonic()
        await node.wait_exit(5)
        while any(alive(pid) for pid in pids):
            orphans = [pid for pid in pids if (s := proc_stat(pid)) and s[0] != "Z" and s[1] == 1]
            assert time.monotonic() - killed < 1.0, (
                f"still alive 1 s after the node's kill -9: "
                f"{[(pid, proc_stat(pid)) for pid in pids if alive(pid)]}, "
                f"re-parented to PID 1: {orphans}"
            )
            await wait_until(lambda: True, interval=0.005)
        assert not any(alive(pid) for pid in pids)


async def all_running(app: App, ids: list[object]) -> bool:
    return all([(await app.get(i)).state is JobState.RUNNING for i in ids])  # type: ignore[arg-type]


async def test_misbehaving_plugins_fail_only_their_own_jobs_and_the_pool_heals(
    nodes: NodeRunner, pg_settings: Settings, pg_dsn: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    sandbox = {"worker_processes": "64", "worker_address_space_bytes": str(2 * 1024**3)}
    if os.getuid() == 0:
        sandbox["worker_user"] = "nobody"  # root is exempt from RLIMIT_NPROC
    env = subprocess_env(pg_dsn, pg_schema, workers_min="2", workers_max="3", **sandbox)
    node = await nodes.start(
        "--plugins", PLUGINS, "--queues", "default,cpu=3", app="plugins_example:app", env=env
    )
    async with producer_app(pg_settings) as producer:
        expected = {
            "segfault": "SIGSEGV",
            "memory_bomb": "MemoryError",
            "fork_bomb": "BlockingIOError",
            "spin_forever": "hard time limit of 3 s",
        }
        ids = {name: await producer.enqueue(name) for name in expected}
        for name, words in expected.items():
            with pytest.raises(JobFailedError) as info:
                await producer.result(ids[name], timeout=60)
            assert words in str(info.value), (name, str(info.value))
        stolen = await producer.result(await producer.enqueue("steal_secrets"), timeout=30)
        assert stolen["found"] in ({}, {"parent_environ": "unreadable: PermissionError"})
        assert stolen["parent_has_dsn"] is False
        assert not any(key.startswith("ASYNCJOBS") for key in stolen["env_keys"])
        # The node and its pool go on: CPU jobs still run, on healed workers.
        results = [await producer.enqueue("hash_chain", 1000) for _ in range(6)]
        for job_id in results:
            assert len(await producer.result(job_id, timeout=30)) == 64
    assert node.proc.poll() is None
    found = pool_processes(node.pid)
    assert found is not None and 2 <= len(found[1]) <= 3
    if os.getuid() == 0:
        leftovers = await wait_until(
            lambda: len(nobody_processes()) <= 3, timeout=10, what="fork-bomb leftovers to die"
        )
        assert leftovers


def nobody_processes() -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == 65534 and alive(int(entry.name)):
                    out.append(int(entry.name))
            except FileNotFoundError:
                continue
    return out
