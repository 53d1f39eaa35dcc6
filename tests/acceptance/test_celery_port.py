"""The Celery port's own tests (examples/celery_port), one suite run on both sides.

Each test is written once, as the project's tests would be before and after the port: sync
code calling ``.delay()``, ``.apply_async()``, ``.get(timeout=)``, ``.state``, the canvas
helpers, retries, the soft time limit and the beat ticks counted in the state file. The
``side`` fixture gives the task module of one side, with its worker running:

- ``celery``: ``celery_app.tasks`` on Redis (127.0.0.1:6379 db 12, ``PORT_REDIS_URL``, or a
  private ``redis-server``), served by ``celery worker -B`` (beat embedded);
- ``asyncjobs``: ``asyncjobs_app.tasks`` on a fresh Postgres schema, served by
  ``asyncjobs node``, which fires the beat entry itself.

Each worker is stopped with SIGTERM at the end and must exit 0. Where the two sides differ
(exception types, timings), the assertions keep to what both promise; the port's README lists
the differences.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis

from asyncjobs.testing.postgres import drop_schema, test_schema_name

from .nodes import CLI, ROOT, subprocess_env

PACKAGE = "examples.celery_port"
WAIT_S = 15.0  # the longest any one result may take (the slowest is a retried task, ~3 s)
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0
REDIS_TEST_DB = 12  # bench.peers uses 10 and 11; the example's own default is 13
REDIS_HINT = (
    "The celery side of the port's tests needs Redis: install it (apt install redis-server) "
    "or set PORT_REDIS_URL=redis://host:port/db (that database is flushed)."
)
# The worker dies with the test run, however it ends (see nodes.py).
_DIE_WITH_PARENT = ("setpriv", "--pdeathsig", "KILL") if shutil.which("setpriv") else ()
LOG_TAIL_CHARS = 6000


def poll(
    predicate: Callable[[], Any], *, timeout: float = WAIT_S, interval: float = 0.05, what: str
) -> Any:
    """Call ``predicate`` until it is truthy and return its value; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}", pytrace=False)
        time.sleep(interval)
    return value


# -- the worker processes ---------------------------------------------------------------------


class Worker:
    """A worker subprocess (``celery worker`` or ``asyncjobs node``) in its own process group,
    its output in a file."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.label = label
        self.log = log
        self.exit_code: int | None = None
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        if len(text) > LOG_TAIL_CHARS:
            text = "...\n" + text[-LOG_TAIL_CHARS:]
        return f"--- output of {self.label} (pid {self.proc.pid}) ---\n{text}"

    def running(self) -> bool:
        """True while it runs; fails the test, with its output, if it has exited."""
        if self.proc.poll() is not None:
            pytest.fail(
                f"{self.label} exited with status {self.proc.returncode}\n{self.output()}",
                pytrace=False,
            )
        return True

    def stop(self) -> None:
        """SIGTERM, then its exit status in ``exit_code`` (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.exit_code = None
        finally:
            with contextlib.suppress(ProcessLookupError):  # its children, if any are left
                os.killpg(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)


def check_stopped(worker: Worker) -> None:
    code = worker.exit_code
    if code != 0:
        pytest.fail(
            f"{worker.label} should exit 0 on SIGTERM, but "
            f"{'had to be killed' if code is None else f'exited {code}'}\n{worker.output()}",
            pytrace=False,
        )


# -- Redis, for the celery side ---------------------------------------------------------------


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping())
    except (redis.RedisError, OSError):
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database for the celery side, flushed: ``PORT_REDIS_URL`` if set, else db 12 of
    the server on 127.0.0.1:6379, else a private ``redis-server`` stopped at the end."""
    server: subprocess.Popen[bytes] | None = None
    folder: str | None = None
    url = os.environ.get("PORT_REDIS_URL", "")
    if url:
        if not redis_answers(url):
            pytest.fail(f"PORT_REDIS_URL={url} does not answer. {REDIS_HINT}", pytrace=False)
    elif redis_answers(url := f"redis://127.0.0.1:6379/{REDIS_TEST_DB}"):
        pass
    elif binary := shutil.which("redis-server"):
        folder = tempfile.mkdtemp(prefix="celery-port-redis-")
        port = free_port()
        server = subprocess.Popen(
            [*_DIE_WITH_PARENT, binary, "--port", str(port), "--bind", "127.0.0.1",
             "--dir", folder, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        poll(lambda: redis_answers(url), timeout=10, what=f"{binary} to answer on port {port}")
    else:
        pytest.fail(REDIS_HINT, pytrace=False)
    redis.Redis.from_url(url).flushdb()
    try:
        yield url
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


# -- the two sides ----------------------------------------------------------------------------


@dataclass
class Side:
    name: str
    tasks: ModuleType  # celery_app.tasks or asyncjobs_app.tasks: the same names on both
    worker: Worker


def lines(side: Side, name: str) -> list[str]:
    """The lines the tasks wrote to a state file (none yet if it does not exist)."""
    path: Path = side.tasks.state_file(name)
    return path.read_text().splitlines() if path.exists() else []


def celery_side(request: pytest.FixtureRequest, folder: Path, stack: contextlib.ExitStack) -> Side:
    url: str = request.getfixturevalue("redis_url")
    mp = stack.enter_context(pytest.MonkeyPatch.context())
    mp.setenv("PORT_REDIS_URL", url)  # the module reads it when it is imported
    tasks = importlib.import_module(f"{PACKAGE}.celery_app.tasks")
    tasks.app.conf.update(broker_url=url, result_backend=url)  # if it was imported before
    stack.callback(tasks.app.close)
    argv = [
        *_DIE_WITH_PARENT, sys.executable, "-m", "celery", "-A", tasks.__name__, "worker", "-B",
        "-Q", "celery,slow", "-c", "2", "--pool", "prefork", "--loglevel", "INFO",
        "--schedule", str(folder / "celerybeat-schedule"), "--without-mingle",
    ]  # fmt: skip
    worker = start_worker(stack, "celery worker", argv, subprocess_env(), folder)
    poll(
        lambda: worker.running() and tasks.app.control.ping(timeout=0.5),
        timeout=START_TIMEOUT_S,
        what=f"the celery worker to answer a ping\n{worker.output()}",
    )
    return Side("celery", tasks, worker)


def asyncjobs_side(
    request: pytest.FixtureRequest, folder: Path, stack: contextlib.ExitStack
) -> Side:
    dsn: str = request.getfixturevalue("pg_dsn")
    schema = test_schema_name("test_celery_port")
    stack.callback(lambda: asyncio.run(drop_schema(dsn, schema)))
    tasks = importlib.import_module(f"{PACKAGE}.asyncjobs_app.tasks")
    saved = tasks.app.settings
    tasks.app.configure(dsn=dsn, schema=schema)  # this process's calls: the same database
    stack.callback(lambda: tasks.app.configure(dsn=saved.dsn, schema=saved.schema))
    # Plain def tasks run in the node's pool, whose workers get only the variables named in
    # worker_env (a Celery worker's children inherit everything).
    env = subprocess_env(dsn, schema, worker_env="PORT_STATE_DIR")
    argv = [*CLI, "node", "--app", f"{tasks.__name__}:app", "--queues", "default,slow"]
    worker = start_worker(stack, "asyncjobs node", argv, env, folder)
    stack.callback(tasks.app.close)  # the sync bridge's producer, before the node stops
    poll(
        lambda: worker.running() and " started: queues " in worker.output(),
        timeout=START_TIMEOUT_S,
        what=f"the asyncjobs node to start\n{worker.output()}",
    )
    return Side("asyncjobs", tasks, worker)


def start_worker(
    stack: contextlib.ExitStack, label: str, argv: list[str], env: dict[str, str], folder: Path
) -> Worker:
    """Start a worker with the ``PORT_*`` variables; it is stopped when ``stack`` closes,
    and its output printed (pytest shows it if the side's last test failed)."""
    port_env = {k: v for k, v in os.environ.items() if k.startswith("PORT_")}
    worker = Worker(label, argv, {**env, **port_env}, folder / "log")
    stack.callback(lambda: print(worker.output()))
    stack.callback(worker.stop)
    return worker


@pytest.fixture(scope="module", params=["celery", "asyncjobs"])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    """One side of the port, its worker running, and this process pointed at it, with the
    state files in a folder of its own (``PORT_STATE_DIR``). The worker must exit 0 on
    SIGTERM at the end."""
    with contextlib.ExitStack() as stack:
        folder = Path(tempfile.mkdtemp(prefix=f"celery-port-{request.param}-"))
        stack.callback(shutil.rmtree, folder, ignore_errors=True)
        state = folder / "state"
        state.mkdir()
        folder.chmod(0o755)
        state.chmod(0o777)  # the pool's workers may run as another user (worker_user)
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.setenv("PORT_STATE_DIR", str(state))
        start = celery_side if request.param == "celery" else asyncjobs_side
        current = start(request, folder, stack)
        yield current
    check_stopped(current.worker)


# -- the tests ----------------------------------------------------------------------------------


def test_a_task_called_directly_runs_here_and_is_named_after_its_module(side: Side) -> None:
    tasks = side.tasks

    assert tasks.add(2, 3) == 5
    assert tasks.add.name == f"{tasks.__name__}.add"


def test_delay_returns_a_handle_that_reads_the_result_and_the_state(side: Side) -> None:
    tasks = side.tasks

    result = tasks.add.delay(2, 3)

    assert result.get(timeout=WAIT_S) == 5
    assert result.state == "SUCCESS"
    assert result.ready()
    assert result.successful()
    assert not result.failed()
    assert result.result == 5
    assert tasks.app.AsyncResult(str(result.id)).get(timeout=WAIT_S) == 5
    assert tasks.app.send_task(tasks.mul.name, args=(6, 7)).get(timeout=WAIT_S) == 42
    assert tasks.xsum.delay([1, 2, 3]).get(timeout=WAIT_S) == 6


def test_a_hundred_tasks_each_give_their_own_result(side: Side) -> None:
    results = [side.tasks.add.delay(i, i) for i in range(100)]

    assert [r.get(timeout=WAIT_S) for r in results] == [2 * i for i in range(100)]


def test_apply_async_takes_args_kwargs_and_a_countdown(side: Side) -> None:
    started = time.monotonic()

    result = side.tasks.mul.apply_async((6,), {"y": 7}, countdown=1)

    assert result.state == "PENDING"
    assert result.get(timeout=WAIT_S) == 42
    assert time.monotonic() - started >= 0.9


def test_get_gives_up_at_its_timeout_and_a_revoked_task_never_runs(side: Side) -> None:
    result = side.tasks.add.apply_async((1, 1), countdown=2)

    with pytest.raises(Exception) as info:  # each side has its own class
        result.get(timeout=0.3)
    assert type(info.value).__name__.endswith("TimeoutError")
    assert result.state == "PENDING"
    assert not result.ready()

    result.revoke()

    poll(lambda: result.state == "REVOKED", what="the revoked task to be REVOKED")
    assert result.ready()
    with pytest.raises(Exception, match=r"(?i)revoked"):
        result.get(timeout=WAIT_S)


def test_a_failing_task_raises_its_error_from_get(side: Side) -> None:
    result = side.tasks.add.delay(1, "x")

    with pytest.raises(Exception, match="unsupported operand"):
        result.get(timeout=WAIT_S)
    assert result.state == "FAILURE"
    assert result.failed()
    assert "unsupported operand" in str(result.result)
    assert "TypeError" in result.traceback
    returned = result.get(timeout=WAIT_S, propagate=False)
    assert isinstance(returned, Exception)
    assert "unsupported operand" in str(returned)


def test_chain_group_and_chord_helpers_combine_results(side: Side) -> None:
    tasks = side.tasks

    assert tasks.add_then_mul(2, 3, 4).get(timeout=WAIT_S) == 20
    doubles = tasks.doubles(5)
    assert doubles.get(timeout=WAIT_S) == [0, 2, 4, 6, 8]
    assert len(doubles) == 5
    assert doubles.ready()
    assert doubles.successful()
    assert doubles.completed_count() == 5
    assert tasks.sum_of_doubles(10).get(timeout=WAIT_S) == 90


def test_signatures_compose_with_the_pipe_and_si_ignores_the_parent(side: Side) -> None:
    tasks = side.tasks

    assert (tasks.add.s(1, 1) | tasks.mul.s(10)).delay().get(timeout=WAIT_S) == 20
    assert (tasks.add.s(1, 1) | tasks.add.si(5, 5)).delay().get(timeout=WAIT_S) == 10
    flow = tasks.chain(tasks.add.s(1, 2), tasks.add.s(3), tasks.mul.s(2))
    assert flow.delay().get(timeout=WAIT_S) == 12
    chord = tasks.chord([tasks.mul.s(i, i) for i in range(4)], tasks.xsum.s())
    assert chord.delay().get(timeout=WAIT_S) == 14


def test_a_bound_task_retries_itself_until_it_succeeds(side: Side) -> None:
    result = side.tasks.flaky.delay("recovers", 2)

    assert result.get(timeout=WAIT_S) == {"attempts": 3, "retries": 2}
    assert result.state == "SUCCESS"
    assert lines(side, "flaky-recovers") == ["0", "1", "2"]  # self.request.retries


def test_a_bound_task_fails_with_its_own_error_once_its_retries_are_used(side: Side) -> None:
    result = side.tasks.flaky.delay("down", 10)

    with pytest.raises(Exception, match=r"upstream is down \(attempt 4\)"):
        result.get(timeout=WAIT_S)
    assert result.state == "FAILURE"
    assert lines(side, "flaky-down") == ["0", "1", "2", "3"]  # max_retries=3


def test_autoretry_for_retries_the_listed_exception_with_backoff(side: Side) -> None:
    tasks = side.tasks

    assert tasks.fetch.delay("recovers", 2).get(timeout=WAIT_S) == 3
    down = tasks.fetch.delay("down", 10)
    with pytest.raises(Exception, match=r"connection reset \(attempt 4\)"):
        down.get(timeout=WAIT_S)
    assert down.state == "FAILURE"
    assert len(lines(side, "fetch-down")) == 4


def test_the_soft_time_limit_cuts_a_long_task_short(side: Side) -> None:
    tasks = side.tasks
    assert tasks.crunch.delay(0.1).get(timeout=WAIT_S) == "done"
    started = time.monotonic()

    result = tasks.crunch.delay(30)

    assert result.get(timeout=WAIT_S) == "cut short"
    assert time.monotonic() - started < 4.0  # soft_time_limit=1, time_limit=5


def test_beat_runs_tick_every_second(side: Side) -> None:
    before = len(lines(side, "ticks"))

    poll(
        lambda: len(lines(side, "ticks")) >= before + 4,
        timeout=10,
        what="4 more ticks in the state file",
    )

    stamps = [float(line) for line in lines(side, "ticks")[before:]]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert 0.7 < statistics.median(gaps) < 1.3, stamps
