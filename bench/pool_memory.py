"""pool_memory: what the pool's workers use together over one large preload.

``plugins_example.model`` preloads a model of ``PLUGINS_EXAMPLE_MODEL_MB`` MiB (one ``bytes``
object) in the zygote, before any worker is forked. The pool is started with that variable
passed through ``worker_env`` and every worker kept warm (``workers_min = workers_max``); each
worker then runs ``model_scan``, which reads the whole model, so every page of it is mapped in
every worker. The figure is the PSS (``/proc/<pid>/smaps_rollup``, ``asyncjobs.pool.memory``)
summed over the zygote and the workers: PSS divides each shared page between the processes
that map it, so the sum is what they use together. The benchmark process is not counted.

Bare baseline, in the same repeat: as many separate Python processes (``python -c``), each
importing ``plugins_example.model`` and running ``load_model()`` and ``model_scan()`` itself,
then waiting on stdin; the sum of their PSS. *vs bare* is the share of that the pool needs.
"""

from __future__ import annotations

import asyncio
import os
import sys

import orjson

from asyncjobs.pool.memory import MemoryUse, memory_use
from asyncjobs.pool.pool import ProcessPool

from .common import REPO_ROOT, Context, Figure, alternate
from .pool import make_config, run_header, run_job

NAME = "pool_memory"
MODULE = "plugins_example.model"
ENV_NAME = "PLUGINS_EXAMPLE_MODEL_MB"
MIB = 1024 * 1024
SCAN_ARGS = b"[[],{}]"  # model_scan(): no arguments
READY_TIMEOUT_S = 120.0

_SEPARATE_CHILD = """
import sys
from plugins_example import model
model.load_model()
assert model.model_scan()["bytes"] == model.MODEL_MB * 1024 * 1024
sys.stdout.write("ready\\n")
sys.stdout.flush()
sys.stdin.read()
"""


def _use(pid: int) -> MemoryUse:
    use = memory_use(pid)
    if use is None:
        raise RuntimeError(f"process {pid} is gone: its memory cannot be read")
    return use


async def _pool(model_mb: int, workers: int) -> dict[str, float]:
    """PSS of zygote + workers (MiB), after every worker scanned the model."""
    environ = {**os.environ, ENV_NAME: str(model_mb)}
    config = make_config(
        (MODULE,), environ, workers_min=workers, workers_max=workers, worker_env=(ENV_NAME,)
    )
    pool = ProcessPool(config)
    await pool.start()
    try:
        # Every worker is warm and idle: take them all, so that each scans the model once.
        held = [await pool.acquire() for _ in range(workers)]
        replies = await asyncio.gather(
            *(pool.call(w, run_header("model_scan"), SCAN_ARGS) for w in held)
        )
        for worker, (reply, _) in zip(held, replies, strict=True):
            pool.release(worker, retire=bool(reply.get("retire")))
        for reply, body in replies:
            if reply["op"] != "ok" or orjson.loads(body)["bytes"] != model_mb * MIB:
                raise RuntimeError(f"model_scan failed in the pool: {reply} {body[:200]!r}")
        pids = sorted(pool.workers)
        if len(pids) != workers or sorted(w.pid for w in held) != pids:
            raise RuntimeError(f"the pool holds workers {pids}, not the {workers} that scanned")
        zygote = pool.zygote_pid
        assert zygote is not None
        zygote_pss = _use(zygote).pss
        uses = [_use(pid) for pid in pids]
        worker_pss = [u.pss for u in uses]
        worker_uss = [u.uss for u in uses]
        await run_job(pool, "model_scan", SCAN_ARGS)  # still answering after the readings
    finally:
        await pool.close()
    return {
        "total": (zygote_pss + sum(worker_pss)) / MIB,
        "zygote": zygote_pss / MIB,
        "worker_pss_mean": sum(worker_pss) / len(worker_pss) / MIB,
        "worker_uss_mean": sum(worker_uss) / len(worker_uss) / MIB,
    }


async def _separate(model_mb: int, processes: int) -> dict[str, float]:
    """PSS of ``processes`` Python processes that each built and scanned the model (MiB)."""
    env = {**os.environ, ENV_NAME: str(model_mb)}
    children: list[asyncio.subprocess.Process] = []
    try:
        for _ in range(processes):
            child = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _SEPARATE_CHILD, cwd=REPO_ROOT, env=env,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            children.append(child)
        async with asyncio.timeout(READY_TIMEOUT_S):
            for child in children:
                assert child.stdout is not None
                line = await child.stdout.readline()
                if line != b"ready\n":
                    raise RuntimeError(f"a separate model process failed ({line!r})")
        pss = [_use(child.pid).pss for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
            await child.wait()
    return {"total": sum(pss) / MIB, "per_process": sum(pss) / len(pss) / MIB}


async def run(ctx: Context) -> list[Figure]:
    model_mb = ctx.size(500, 32)
    workers = ctx.size(8, 2)
    runs, bare = await alternate(
        ctx,
        lambda: _pool(model_mb, workers),
        lambda: _separate(model_mb, workers),
        lambda r, b: (
            f"pool {r['total']:,.0f} MiB (zygote {r['zygote']:,.0f}, per worker PSS "
            f"{r['worker_pss_mean']:,.1f}, USS {r['worker_uss_mean']:,.1f}); "
            f"{workers} separate processes {b['total']:,.0f} MiB ({r['total'] / b['total']:.2f}x)"
        ),
    )
    params = {
        "model_mib": model_mb,
        "workers": workers,
        "model": f"plugins_example.model: one bytes object of {model_mb} MiB built by the "
        "preload hook in the zygote; every worker ran model_scan (reads all of it)",
        "measured": "PSS from /proc/<pid>/smaps_rollup, summed over the zygote and the workers "
        "(the benchmark process not counted)",
        "bare": f"{workers} separate python -c processes, each running load_model() and "
        "model_scan() itself; sum of their PSS",
        "zygote_pss_mib_per_repeat": [r["zygote"] for r in runs],
        "worker_pss_mib_mean_per_repeat": [r["worker_pss_mean"] for r in runs],
        "worker_uss_mib_mean_per_repeat": [r["worker_uss_mean"] for r in runs],
        "bare_pss_mib_per_process_per_repeat": [b["per_process"] for b in bare],
    }
    return [
        Figure(
            name="pool_memory_pss",
            unit="MiB",
            samples=[r["total"] for r in runs],
            target=None,
            higher_is_better=False,
            params=params,
            baseline_samples=[b["total"] for b in bare],
        )
    ]
