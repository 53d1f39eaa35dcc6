"""The Django integration in a real Django project (``tests/django_project``) on real Postgres.

``manage.py migrate`` and ``manage.py asyncjobs_node`` run as subprocesses; the test process
enqueues through a plain asyncjobs App on the same database and schema, and looks at the rows,
at ``pg_stat_activity`` and at ``/proc`` directly. The module gets a database of its own
(Django's tables live in its ``public`` schema, asyncjobs' in ``asyncjobs``), dropped at the
end, and one node, shared by the tests that need one; the last test stops it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from asyncjobs import App, PoolError, Settings
from asyncjobs.django import DjangoApp
from asyncjobs.pool.memory import memory_use
from tests.acceptance.nodes import describe
from tests.procfs import alive, children, cmdline

pytestmark = pytest.mark.postgres

PROJECT = Path(__file__).resolve().parents[1] / "django_project"
# The node dies with the test run, however it ends (see tests/acceptance/nodes.py).
_DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL") if shutil.which("setpriv") else ()
MANAGE = (*_DIE_WITH_PARENT, sys.executable, "manage.py")
SCHEMA = "asyncjobs"  # asyncjobs' tables, beside Django's in the module's own database
WORKERS = 8  # workers_min = workers_max in the project's settings.ASYNCJOBS
BALLAST_MB = 80  # what the shop app allocates when Django starts (shop/apps.py)
PSS_LIMIT_RATIO = 1.3  # PSS of zygote + 8 workers, at most this times the zygote's RSS
NODE_START_TIMEOUT_S = 30.0
MB = 1024 * 1024


@dataclass(frozen=True)
class DjangoDatabase:
    dsn: str  # the module's database, as a URL, for asyncpg and the producer app
    app_name: str  # Django's application_name: its connections in pg_stat_activity
    env: dict[str, str]  # the environment of manage.py commands


@dataclass
class NodeProcess:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return f"--- output of manage.py asyncjobs_node ---\n{self.log.read_text(errors='replace')}"


# -- helpers ------------------------------------------------------------------------------------


def poll(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    """``predicate()`` once it is truthy, polled until ``timeout`` s (then the test fails)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}", pytrace=False)
        time.sleep(0.05)
    return value


async def apoll(predicate: Callable[[], Any], *, timeout: float, what: Callable[[], str]) -> Any:
    """``await predicate()`` once it is truthy, polled until ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := await predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what()}", pytrace=False)
        await asyncio.sleep(0.05)
    return value


def manage(
    *args: str, env: Mapping[str, str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python manage.py ARGS`` in the test project, to completion."""
    return subprocess.run(
        [*MANAGE, *args],
        cwd=PROJECT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def base_env(**variables: str) -> dict[str, str]:
    """This process's environment without ASYNCJOBS_* variables, with the project importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASYNCJOBS_", "DJANGO_"))}
    env["DJANGO_SETTINGS_MODULE"] = "proj.settings"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env["SHOP_BALLAST_MB"] = str(BALLAST_MB)
    env.update(variables)
    return env


def pool_processes(node_pid: int) -> tuple[int, list[int]] | None:
    """The node's zygote and its workers, once the zygote exists."""
    for child in children(node_pid):
        if b"asyncjobs.pool.zygote" in cmdline(child):
            return child, children(child)
    return None


# Stand-ins for the shop's jobs (tests/django_project/shop/jobs.py): the producer knows their
# names and queues, and never runs them.
def mark_paid(order_id: int, wait_for_paid: int = 0, wait_s: float = 20.0) -> dict[str, Any]:
    raise AssertionError("runs on the node only")


async def create_order(total: str) -> dict[str, Any]:
    raise AssertionError("runs on the node only")


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def django_db(pg_dsn: str) -> Iterator[DjangoDatabase]:
    """A fresh database on the test server, and the environment that points Django at it."""
    tag = uuid.uuid4().hex[:10]
    name = f"ajt_django_{tag}"
    with psycopg.connect(pg_dsn, autocommit=True) as con:
        con.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    params = conninfo_to_dict(pg_dsn)
    env = base_env(
        DJANGO_DB_NAME=name,
        DJANGO_DB_HOST=str(params.get("host") or ""),
        DJANGO_DB_PORT=str(params.get("port") or ""),
        DJANGO_DB_USER=str(params.get("user") or ""),
        DJANGO_DB_PASSWORD=str(params.get("password") or ""),
        DJANGO_DB_APP_NAME=f"ajt_django_{tag}",
        DJANGO_ASYNCJOBS_SCHEMA=SCHEMA,
    )
    url = urlsplit(pg_dsn)
    try:
        yield DjangoDatabase(urlunsplit(url._replace(path=f"/{name}")), f"ajt_django_{tag}", env)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as con:
            con.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            ))  # fmt: skip


@pytest.fixture(scope="module")
def migrated(django_db: DjangoDatabase) -> subprocess.CompletedProcess[str]:
    """``manage.py migrate``, run once for the module."""
    return manage("migrate", "--no-input", env=django_db.env)


@pytest.fixture(scope="module")
def node(
    django_db: DjangoDatabase,
    migrated: subprocess.CompletedProcess[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[NodeProcess]:
    """``manage.py asyncjobs_node``, running once its row is stored and its 8 workers exist."""
    if migrated.returncode != 0:
        pytest.fail(f"manage.py migrate failed:\n{describe(migrated)}", pytrace=False)
    log = tmp_path_factory.mktemp("django") / "node.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*MANAGE, "asyncjobs_node", "--concurrency", "20", "--verbosity", "1"],
            cwd=PROJECT,
            env=django_db.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, killed as one at the end
        )
    node = NodeProcess(proc, log)

    def started() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"the node exited {proc.returncode}\n{node.output()}", pytrace=False)
        with psycopg.connect(django_db.dsn, autocommit=True) as con:
            try:
                row = con.execute(
                    sql.SQL("SELECT 1 FROM {}.asyncjobs_nodes WHERE pid = %s").format(
                        sql.Identifier(SCHEMA)
                    ),
                    (proc.pid,),
                ).fetchone()
            except (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName):
                return False  # not migrated yet
        found = pool_processes(proc.pid)
        return row is not None and found is not None and len(found[1]) == WORKERS

    try:
        poll(started, timeout=NODE_START_TIMEOUT_S, what=f"the node and its workers\n{log}")
        yield node
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        print(node.output())  # shown when a test failed


@pytest.fixture
async def producer(django_db: DjangoDatabase) -> AsyncIterator[App]:
    """An app on the node's database and schema that enqueues the shop's jobs by name."""
    app = App(settings=Settings(dsn=django_db.dsn, schema=SCHEMA))
    app.job(isolated=True, name="mark_paid", queue="orm")(mark_paid)
    app.job(name="create_order")(create_order)
    await app.start(node=False)
    try:
        yield app
    finally:
        await app.stop()


@pytest.fixture
async def db(django_db: DjangoDatabase) -> AsyncIterator[asyncpg.Connection]:
    con = await asyncpg.connect(django_db.dsn)
    try:
        yield con
    finally:
        await con.close()


async def new_orders(db: asyncpg.Connection, count: int) -> list[int]:
    rows = await db.fetch(
        "INSERT INTO shop_order (total, status) SELECT 10.00 + i, 'new' "
        "FROM generate_series(1, $1) AS i RETURNING id",
        count,
    )
    return [row["id"] for row in rows]


async def django_backends(db: asyncpg.Connection, app_name: str) -> list[asyncpg.Record]:
    """Django's connections to the server, as pg_stat_activity shows them."""
    return await db.fetch(
        "SELECT pid, backend_start, state, query FROM pg_stat_activity "
        "WHERE application_name = $1 AND pid <> pg_backend_pid()",
        app_name,
    )


async def wait_closed(db: asyncpg.Connection, app_name: str, after: str) -> None:
    """Wait until Django has no connection left on the server (a closed connection's backend
    leaves pg_stat_activity a moment after the client closed it)."""
    left: list[dict[str, Any]] = []

    async def closed() -> bool:
        left[:] = [dict(r) for r in await django_backends(db, app_name)]
        return not left

    await apoll(
        closed,
        timeout=10,
        what=lambda: f"Django's connections to be closed after {after}; still open: {left}",
    )


# -- tests --------------------------------------------------------------------------------------


async def test_manage_py_migrate_creates_the_shop_tables(
    migrated: subprocess.CompletedProcess[str], db: asyncpg.Connection
) -> None:
    assert migrated.returncode == 0, describe(migrated)
    assert "Applying shop.0001_initial... OK" in migrated.stdout, describe(migrated)
    assert await db.fetchval("SELECT to_regclass('public.shop_order') IS NOT NULL")
    applied = await db.fetchval("SELECT count(*) FROM django_migrations WHERE app = 'shop'")
    assert applied == 1


async def test_node_runs_an_isolated_sync_orm_job_and_an_async_orm_job(
    node: NodeProcess, producer: App, db: asyncpg.Connection
) -> None:
    (order,) = await new_orders(db, 1)
    paid_id = await producer.enqueue("mark_paid", order)
    created_id = await producer.enqueue("create_order", "19.99")

    paid = await producer.result(paid_id, timeout=30)
    pool = pool_processes(node.proc.pid)
    assert pool is not None, node.output()
    assert paid["updated"] == 1, paid
    assert paid["pid"] in pool[1], f"{paid} ran outside the pool's workers {pool}"
    assert paid["pid"] != node.proc.pid
    assert await db.fetchval("SELECT status FROM shop_order WHERE id = $1", order) == "paid"

    created = await producer.result(created_id, timeout=30)
    assert created["total"] == "19.99", created
    assert created["status"] == "confirmed", created
    row = await db.fetchrow(
        "SELECT total::text, status FROM shop_order WHERE id = $1", created["id"]
    )
    assert row is not None and tuple(row) == ("19.99", "confirmed")


async def test_django_connections_are_closed_after_each_isolated_job(
    node: NodeProcess, producer: App, db: asyncpg.Connection, django_db: DjangoDatabase
) -> None:
    jobs = 2 * WORKERS  # one at a time: some worker runs several, whatever worker takes each
    results = []
    for order in await new_orders(db, jobs):
        job_id = await producer.enqueue("mark_paid", order)
        results.append(await producer.result(job_id, timeout=30))
    # Each job found no connection open in its worker: not the zygote's, not a former job's.
    assert [r["open_before"] for r in results] == [0] * jobs, results
    assert len({r["pid"] for r in results}) < jobs, results

    # And none is left open on the server: neither the jobs' own nor any other of Django's.
    used = {r["backend_pid"] for r in results}
    await wait_closed(db, django_db.app_name, f"{jobs} isolated jobs (theirs: {sorted(used)})")


async def test_the_node_closes_the_async_orms_connections_after_coroutine_jobs(
    node: NodeProcess, producer: App, db: asyncpg.Connection, django_db: DjangoDatabase
) -> None:
    ids = await producer.enqueue_many(
        [producer.signature("create_order", f"{i}.50") for i in range(5)]
    )
    results = [await producer.result(job_id, timeout=30) for job_id in ids]
    assert [r["total"] for r in results] == [f"{i}.50" for i in range(5)]
    await wait_closed(db, django_db.app_name, "5 coroutine jobs")


async def test_eight_workers_running_orm_jobs_share_the_preloaded_project(
    node: NodeProcess, producer: App, db: asyncpg.Connection
) -> None:
    paid_before = await db.fetchval("SELECT count(*) FROM shop_order WHERE status = 'paid'")
    orders = await new_orders(db, WORKERS)
    # Each job waits for all 8 to be paid: 8 jobs at once, so one in each worker.
    ids = await producer.enqueue_many(
        [producer.signature("mark_paid", order, wait_for_paid=paid_before + WORKERS)
         for order in orders]
    )  # fmt: skip
    results = [await producer.result(job_id, timeout=40) for job_id in ids]
    pool = pool_processes(node.proc.pid)
    assert pool is not None, node.output()
    zygote, workers = pool
    assert sorted(r["pid"] for r in results) == sorted(workers), (results, workers)

    found = {pid: memory_use(pid) for pid in (zygote, *workers)}
    uses = {pid: use for pid, use in found.items() if use is not None}
    assert len(uses) == 1 + WORKERS, f"processes gone: {found}"
    zygote_rss = uses[zygote].rss
    total_pss = sum(use.pss for use in uses.values())
    figures = (
        f"zygote RSS {zygote_rss / MB:.1f} MB (PSS {uses[zygote].pss / MB:.1f} MB); "
        f"workers' PSS {[round(uses[w].pss / MB, 1) for w in workers]} MB; "
        f"zygote + {WORKERS} workers: PSS {total_pss / MB:.1f} MB = "
        f"{total_pss / zygote_rss:.2f} x the zygote's RSS (their RSS adds up to "
        f"{sum(use.rss for use in uses.values()) / MB:.0f} MB)"
    )
    print(figures)
    assert zygote_rss > BALLAST_MB * MB, f"the preload is not in the zygote: {figures}"
    assert total_pss <= PSS_LIMIT_RATIO * zygote_rss, figures


async def test_sigterm_stops_the_node_with_exit_status_0(node: NodeProcess) -> None:
    pool = pool_processes(node.proc.pid)
    assert pool is not None, node.output()
    node.proc.send_signal(signal.SIGTERM)
    code = await apoll(
        lambda: _exit_status(node), timeout=20, what=lambda: f"the node to exit\n{node.output()}"
    )
    assert code == [0], node.output()
    assert "SIGTERM received" in node.output()
    await apoll(
        lambda: _all_gone([pool[0], *pool[1]]), timeout=5, what=lambda: "the pool to be gone"
    )


async def _exit_status(node: NodeProcess) -> list[int]:
    """[status] once the node has exited (a list, so that status 0 is truthy); else []."""
    code = node.proc.poll()
    return [] if code is None else [code]


async def _all_gone(pids: list[int]) -> bool:
    return not any(alive(pid) for pid in pids)


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "prefix", "status"),
    [
        (["check"], "(asyncjobs.E001) ", 1),  # Django's system checks report it
        (["asyncjobs_node"], "(asyncjobs.E001) ", 1),
        (["asyncjobs_node", "--skip-checks"], "asyncjobs: ", 2),  # then get_app() raises it
    ],
)
def test_an_unknown_asyncjobs_key_is_one_sentence_that_names_it(
    command: list[str], prefix: str, status: int
) -> None:
    env = base_env(DJANGO_ASYNCJOBS_JSON=json.dumps({"concurency": 8}))
    result = manage(*command, env=env)
    assert result.returncode == status, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    sentence = (
        f"{prefix}setting ASYNCJOBS['concurency']=8 is invalid: settings.ASYNCJOBS has a key "
        "that names no asyncjobs setting. Did you mean 'concurrency'?"
    )
    assert sentence in result.stderr, describe(result)


def test_a_sqlite_project_without_a_dsn_is_told_so_when_the_node_starts(tmp_path: Path) -> None:
    env = base_env(DJANGO_DB_ENGINE="sqlite3", DJANGO_DB_NAME=str(tmp_path / "db.sqlite3"))
    checked = manage("check", env=env)
    assert checked.returncode == 0, describe(checked)  # the rest of the project still works

    result = manage("asyncjobs_node", env=env)
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    assert (
        "asyncjobs: setting dsn=None is invalid: settings.ASYNCJOBS has no 'dsn' and "
        "DATABASES['default'] uses 'django.db.backends.sqlite3', not PostgreSQL. Set "
        "ASYNCJOBS['dsn']"
    ) in result.stderr, describe(result)


async def test_a_pool_without_django_settings_module_does_not_start_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    app = DjangoApp(Settings(dsn="memory://", workers_min=1, workers_max=1))
    app.job(isolated=True, name="mark_paid", queue="orm")(mark_paid)
    try:
        with pytest.raises(PoolError) as info:
            await app.start()
    finally:
        with contextlib.suppress(Exception):
            await app.stop()
    assert (
        "the process pool loads the Django project named by DJANGO_SETTINGS_MODULE, which is "
        "not set in the node's environment"
    ) in str(info.value)
