"""pool: the process pool of isolated jobs, measured directly, with no database.

Each repeat starts a ``ProcessPool`` the way a node does: ``pool_config`` over the settings of
``plugins_example.app`` and its isolated jobs, here those of ``plugins_example.cpu`` only (no
preload hook: ``bench.pool_memory`` measures those). Three measurements:

- **round trip**: one tiny job, ``add_one(41)``, on a warm worker: ``acquire()``, ``call()``
  and ``release()``, as ``node.isolated`` does them, timed together with ``perf_counter_ns``.
  One worker (``workers_min = workers_max = 1``), and ``max_jobs_per_worker`` raised so that
  no sample includes the recycling of a worker: every sample is a warm one.
  Bare baseline, in the same repeat: the same exchange with no asyncjobs code, a child process
  answering length-prefixed orjson frames over a Unix socket pair (blocking ``recv``/
  ``sendall``, decoding the header and arguments and encoding ``x + 1``), and on this side a
  uvloop protocol that writes the request and awaits the reply's header. That is the floor of
  one round trip between two processes on this machine.
- **replacement**: with one worker, ``SIGKILL`` the idle worker, and time from the kill until
  ``acquire()`` returns its replacement (a new pid, forked by the zygote, connected and
  ``ready``). The benchmark waits for the pool to see the death (the worker's pidfd) by
  yielding to the loop, then awaits ``acquire()``, which wakes when the new worker is idle.
- **throughput**: ``hash_chain(20_000)`` (pure CPU, about 9 ms here) as n jobs through a pool
  of two warm workers, two callers taking jobs in turn, against the same n calls made inline
  in the benchmark process one after the other (the bare baseline). On two cores the pool can
  at best double the rate.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import socket
import struct
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any, cast

import orjson

from asyncjobs.pool.config import PoolConfig, pool_config
from asyncjobs.pool.pool import ProcessPool

from .common import Context, Figure, alternate, percentile

NAME = "pool"
JOBS_MODULE = "plugins_example.cpu"
ADD_ONE_ARGS = b"[[41],{}]"  # decode_args: [args, kwargs]
WARMUP = 200
TARGETS_US = {"p50": 150.0, "p99": None}
KILLS = 20
TARGET_REPLACE_MS = 50.0
DEATH_SEEN_TIMEOUT_S = 5.0
REPLACE_TIMEOUT_S = 10.0
HASH_ROUNDS = 20_000
CPU_WORKERS = 2


# -- building a pool ------------------------------------------------------------------------------


def make_config(
    modules: tuple[str, ...], environ: dict[str, str] | None = None, **settings: Any
) -> PoolConfig:
    """The pool a node would start for the isolated jobs and preload hooks of ``modules``.

    ``plugins_example.app`` is shared by every module imported here, so its jobs and hooks are
    filtered by module: what one benchmark imported does not change another's pool.
    """
    for module in modules:
        importlib.import_module(module)
    from plugins_example import app

    registry = {n: d for n, d in app.registry.items() if d.fn.__module__ in modules}
    preloads = [h for h in app.preloads if h.__module__ in modules]
    config = pool_config(app.settings.replace(**settings), registry, preloads, environ)
    if config is None:
        raise RuntimeError(f"{', '.join(modules)} declare no isolated job")
    return config


def run_header(name: str) -> dict[str, Any]:
    """What ``node.isolated`` sends with a job (a fresh id each time)."""
    return {
        "op": "run", "id": str(uuid.uuid4()), "name": name, "queue": "cpu", "attempt": 1,
        "max_attempts": 1,
    }  # fmt: skip


async def run_job(pool: ProcessPool, name: str, body: bytes) -> bytes:
    """One job on a worker, as the node runs it; returns the result's JSON."""
    header = run_header(name)
    worker = await pool.acquire()
    reply, result = await pool.call(worker, header, body)
    pool.release(worker, retire=bool(reply.get("retire")))
    assert isinstance(result, bytes)
    if reply["op"] != "ok":
        raise RuntimeError(f"{name} failed in the pool: {reply.get('message')}")
    return result


# -- round trip ------------------------------------------------------------------------------------


def _stats_us(samples_ns: list[int]) -> dict[str, float]:
    values = [s / 1000 for s in samples_ns]
    return {"p50": percentile(values, 50), "p99": percentile(values, 99), "max": max(values)}


async def _round_trip(n: int) -> dict[str, float]:
    config = make_config((JOBS_MODULE,), workers_min=1, workers_max=1, max_jobs_per_worker=10**9)
    pool = ProcessPool(config)
    await pool.start()
    try:
        for _ in range(WARMUP):
            await run_job(pool, "add_one", ADD_ONE_ARGS)
        samples = [0] * n
        for i in range(n):
            header = run_header("add_one")
            t0 = time.perf_counter_ns()
            worker = await pool.acquire()
            reply, result = await pool.call(worker, header, ADD_ONE_ARGS)
            pool.release(worker, retire=bool(reply.get("retire")))
            samples[i] = time.perf_counter_ns() - t0
            if result != b"42":
                raise RuntimeError(f"add_one(41) returned {result!r}: {reply}")
    finally:
        await pool.close()
    return _stats_us(samples)


_PREFIX = struct.Struct(">II")
_ECHO_CHILD = """
import os, socket, struct, sys
import orjson
PREFIX = struct.Struct(">II")
sock = socket.socket(fileno=int(sys.argv[1]))
def exactly(n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            os._exit(0)
        buf += chunk
    return buf
while True:
    head_len, body_len = PREFIX.unpack(exactly(PREFIX.size))
    rest = exactly(head_len + body_len)
    header = orjson.loads(rest[:head_len])
    args, kwargs = orjson.loads(rest[head_len:])
    head = orjson.dumps({"op": "ok", "retire": False})
    body = orjson.dumps(args[0] + 1)
    sock.sendall(PREFIX.pack(len(head), len(body)) + head + body)
"""


class _Echo(asyncio.Protocol):
    """The node's side of the bare round trip: one request out, one reply's header back."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.reply: asyncio.Future[tuple[dict[str, Any], bytes]] | None = None
        self.buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are no subclasses

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) < _PREFIX.size:
            return
        head_len, body_len = _PREFIX.unpack_from(self.buf)
        end = _PREFIX.size + head_len + body_len
        if len(self.buf) < end:
            return
        header = orjson.loads(bytes(self.buf[_PREFIX.size : _PREFIX.size + head_len]))
        body = bytes(self.buf[_PREFIX.size + head_len : end])
        del self.buf[:end]
        if self.reply is not None and not self.reply.done():
            self.reply.set_result((header, body))

    async def call(self, header: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        assert self.transport is not None
        self.reply = asyncio.get_running_loop().create_future()
        head = orjson.dumps(header)
        self.transport.write(_PREFIX.pack(len(head), len(body)) + head + body)
        return await self.reply


async def _bare_round_trip(n: int) -> dict[str, float]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _ECHO_CHILD, str(theirs.fileno()), pass_fds=[theirs.fileno()]
        )
    finally:
        theirs.close()
    try:
        loop = asyncio.get_running_loop()
        transport, echo = await loop.create_unix_connection(_Echo, sock=ours)
        for _ in range(WARMUP):
            await echo.call(run_header("add_one"), ADD_ONE_ARGS)
        samples = [0] * n
        for i in range(n):
            header = run_header("add_one")
            t0 = time.perf_counter_ns()
            reply, result = await echo.call(header, ADD_ONE_ARGS)
            samples[i] = time.perf_counter_ns() - t0
            if result != b"42" or reply["op"] != "ok":
                raise RuntimeError(f"the echo child answered {reply} {result!r}")
        transport.close()
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    return _stats_us(samples)


# -- replacement after a kill ----------------------------------------------------------------------


async def _replacement(kills: int) -> tuple[list[float], list[float]]:
    """Per kill: ms from SIGKILL to a new worker from ``acquire()``, and ms until the pool
    saw the death."""
    config = make_config((JOBS_MODULE,), workers_min=1, workers_max=1)
    pool = ProcessPool(config)
    await pool.start()
    replaced, seen = [], []
    try:
        for _ in range(kills):
            old = await pool.acquire()
            await pool.call(old, run_header("add_one"), ADD_ONE_ARGS)  # warm, then idle
            pool.release(old)
            t0 = time.perf_counter()
            os.kill(old.pid, signal.SIGKILL)
            deadline = t0 + DEATH_SEEN_TIMEOUT_S
            while old.alive:  # the pidfd callback runs on a pass of the loop
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"the pool did not see worker {old.pid} die")
                await asyncio.sleep(0)
            t_seen = time.perf_counter()
            async with asyncio.timeout(REPLACE_TIMEOUT_S):
                new = await pool.acquire()
            t1 = time.perf_counter()
            pool.release(new)
            if new.pid == old.pid or not new.alive:
                raise RuntimeError(f"acquire() gave worker {new.pid} after {old.pid} was killed")
            replaced.append((t1 - t0) * 1000)
            seen.append((t_seen - t0) * 1000)
        if pool.replaced != kills:
            raise RuntimeError(f"the pool counted {pool.replaced} replacements, not {kills}")
        await run_job(pool, "add_one", ADD_ONE_ARGS)  # the last replacement works
    finally:
        await pool.close()
    return replaced, seen


# -- CPU throughput --------------------------------------------------------------------------------


async def _pool_throughput(n: int) -> float:
    config = make_config((JOBS_MODULE,), workers_min=CPU_WORKERS, workers_max=CPU_WORKERS)
    pool = ProcessPool(config)
    await pool.start()
    body = orjson.dumps([[HASH_ROUNDS], {}])
    expected = _hash_chain_inline()
    try:
        # Warm both workers (one job each, at once) before the clock starts.
        await asyncio.gather(*(run_job(pool, "add_one", ADD_ONE_ARGS) for _ in range(2)))
        todo = iter(range(n))
        results: list[bytes] = []

        async def caller() -> None:
            for _ in todo:
                results.append(await run_job(pool, "hash_chain", body))

        t0 = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(CPU_WORKERS)))
        elapsed = time.perf_counter() - t0
    finally:
        await pool.close()
    if len(results) != n or any(orjson.loads(r) != expected for r in results):
        raise RuntimeError("hash_chain in the pool returned something else than inline")
    return n / elapsed


def _hash_chain() -> Callable[[int], str]:
    """The plain function behind the job, to call inline (JobDef types it as async)."""
    from plugins_example.cpu import hash_chain

    return cast(Callable[[int], str], hash_chain.fn)


def _hash_chain_inline() -> str:
    return _hash_chain()(HASH_ROUNDS)


async def _inline_throughput(n: int) -> float:
    fn = _hash_chain()
    fn(HASH_ROUNDS)  # warm
    t0 = time.perf_counter()
    for _ in range(n):
        fn(HASH_ROUNDS)
    return n / (time.perf_counter() - t0)


# -- the figures -----------------------------------------------------------------------------------


async def run(ctx: Context) -> list[Figure]:
    n_trips = ctx.size(5_000, 500)
    trips, bare_trips = await alternate(
        ctx,
        lambda: _round_trip(n_trips),
        lambda: _bare_round_trip(n_trips),
        lambda r, b: (
            f"round trip p50 {r['p50']:.0f} us, p99 {r['p99']:.0f} us; "
            f"bare p50 {b['p50']:.0f} us, p99 {b['p99']:.0f} us"
        ),
    )
    kills = ctx.size(KILLS, 5)
    replacements = []
    for i in range(ctx.repeats):
        replaced, seen = await _replacement(kills)
        replacements.append((replaced, seen))
        ctx.note(
            f"repeat {i + 1}: replacement p50 {percentile(replaced, 50):.1f} ms, "
            f"max {max(replaced):.1f} ms (death seen after p50 {percentile(seen, 50):.2f} ms)"
        )
    n_jobs = ctx.size(200, 20)
    rates, inline = await alternate(
        ctx,
        lambda: _pool_throughput(n_jobs),
        lambda: _inline_throughput(n_jobs),
        lambda r, b: f"hash_chain {r:.1f} jobs/s in the pool, {b:.1f} jobs/s inline ({r / b:.2f}x)",
    )
    # One dict for every figure: RESULTS.md lists a benchmark's parameters once.
    params = {
        "round_trip_n": n_trips,
        "round_trip_job": "add_one(41) (plugins_example.cpu), body b'[[41],{}]', warm-up "
        f"{WARMUP}",
        "round_trip_workers": "1, max_jobs_per_worker = 10**9 (no recycling in the samples)",
        "round_trip_measured": "perf_counter_ns around acquire(), call() and release(), "
        "no database",
        "round_trip_bare": "length-prefixed orjson request and reply over a Unix socket pair "
        "to a child process (blocking recv/sendall), a uvloop protocol on this side",
        "round_trip_max_us_per_repeat": [r["max"] for r in trips],
        "round_trip_bare_max_us_per_repeat": [b["max"] for b in bare_trips],
        "replace_kills": kills,
        "replace_workers": "1 (workers_min = workers_max = 1)",
        "replace_measured": "os.kill(pid, SIGKILL) of the idle worker until acquire() returns "
        "one with another pid (forked by the zygote, connected, ready)",
        "replace_death_seen_ms_p50_per_repeat": [percentile(s, 50) for _, s in replacements],
        "replace_ms_per_repeat": [r for r, _ in replacements],
        "cpu_n": n_jobs,
        "cpu_job": f"hash_chain({HASH_ROUNDS}) (plugins_example.cpu): pure CPU",
        "cpu_workers": f"{CPU_WORKERS}, warm; {CPU_WORKERS} callers taking jobs in turn",
        "cpu_cores": os.cpu_count(),
        "cpu_bare": "the same n calls of hash_chain.fn, inline and one after the other in the "
        "benchmark process",
        "cpu_speedup_per_repeat": [r / b for r, b in zip(rates, inline, strict=True)],
    }
    return [
        *(
            Figure(
                name=f"pool_round_trip_{key}",
                unit="µs",
                samples=[r[key] for r in trips],
                target=target,
                higher_is_better=False,
                params=params,
                baseline_samples=[b[key] for b in bare_trips],
            )
            for key, target in TARGETS_US.items()
        ),
        Figure(
            name="pool_replace_p50",
            unit="ms",
            samples=[percentile(r, 50) for r, _ in replacements],
            target=TARGET_REPLACE_MS,
            higher_is_better=False,
            params=params,
        ),
        Figure(
            name="pool_replace_max",
            unit="ms",
            samples=[max(r) for r, _ in replacements],
            target=None,
            higher_is_better=False,
            params=params,
        ),
        Figure(
            name="pool_cpu_throughput",
            unit="jobs/s",
            samples=rates,
            target=None,
            higher_is_better=True,
            params=params,
            baseline_samples=inline,
        ),
    ]
