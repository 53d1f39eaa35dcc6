"""The ``asyncjobs`` command as a user runs it: output, exit status, errors as sentences.

Exit statuses (cli.py): 0 ok, 1 the job or command failed, 2 usage or configuration,
3 the database cannot be reached.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import orjson

from asyncjobs import App
from tests.helpers import wait_until

from .jobs_app import PROVISION_STEPS, STEP_RUNS_DDL
from .nodes import CLI, EXAMPLE_APP, ROOT, NodeRunner, describe, run_cli, subprocess_env


def assert_no_traceback(stderr: str) -> None:
    assert "Traceback" not in stderr, f"a traceback instead of a sentence:\n{stderr}"


async def test_enqueue_with_wait_prints_the_job_id_and_its_result(
    nodes: NodeRunner, pg_dsn: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    await nodes.start(app=EXAMPLE_APP)
    env = subprocess_env(pg_dsn, pg_schema)

    result = await run_cli(
        "enqueue", "sleep", "--app", EXAMPLE_APP, "--args", "[0.1]", "--wait", env=env
    )

    assert result.returncode == 0, describe(result)
    lines = result.stdout.splitlines()
    assert len(lines) == 2, describe(result)
    job_id = uuid.UUID(lines[0])
    assert lines[1] == "0.1", describe(result)
    state = await db.fetchval(
        f"SELECT state::text FROM {pg_schema}.asyncjobs_jobs WHERE id = $1", job_id
    )
    assert state == "succeeded"


async def test_enqueue_with_wait_of_a_failing_job_exits_1_with_one_line_naming_the_job(
    nodes: NodeRunner, pg_dsn: str, pg_schema: str
) -> None:
    await nodes.start(app=EXAMPLE_APP)
    env = subprocess_env(pg_dsn, pg_schema)

    result = await run_cli("enqueue", "always_fails", "--app", EXAMPLE_APP, "--wait", env=env)

    assert result.returncode == 1, describe(result)
    assert_no_traceback(result.stderr)
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1, describe(result)
    assert "always_fails" in error_lines[0], describe(result)
    assert "failed" in error_lines[0], describe(result)
    uuid.UUID(result.stdout.strip())  # the id was printed before waiting


async def test_enqueue_of_an_unknown_job_exits_with_a_sentence_naming_it(
    pg_dsn: str, pg_schema: str
) -> None:
    env = subprocess_env(pg_dsn, pg_schema)

    result = await run_cli("enqueue", "no_such_job", "--app", EXAMPLE_APP, env=env)

    assert result.returncode == 2, describe(result)  # a usage error: the name is wrong
    assert_no_traceback(result.stderr)
    assert "'no_such_job'" in result.stderr, describe(result)
    assert "unknown job" in result.stderr, describe(result)
    assert result.stdout == "", describe(result)


async def test_migrate_applies_the_migrations_once_then_says_the_schema_is_up_to_date(
    pg_dsn: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    env = subprocess_env()  # flags only: no ASYNCJOBS_* variable
    flags = ("--dsn", pg_dsn, "--schema", pg_schema)

    first = await run_cli("migrate", *flags, env=env)
    second = await run_cli("migrate", *flags, env=env)

    assert first.returncode == 0, describe(first)
    assert "applied 0001_initial" in first.stdout, describe(first)
    assert pg_schema in first.stdout, describe(first)
    tables = await db.fetchval(
        "SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'asyncjobs_jobs'",
        pg_schema,
    )
    assert tables == 1
    assert second.returncode == 0, describe(second)
    assert "up to date" in second.stdout, describe(second)
    assert "applied" not in second.stdout, describe(second)


async def test_node_with_an_unreachable_database_exits_3_naming_the_address() -> None:
    result = await run_cli(
        "node", "--app", EXAMPLE_APP, "--dsn", "postgresql://127.0.0.1:1/x", env=subprocess_env()
    )

    assert result.returncode == 3, describe(result)
    assert_no_traceback(result.stderr)
    assert "127.0.0.1:1" in result.stderr, describe(result)


async def test_node_with_a_dsn_that_is_not_a_url_exits_2_naming_the_setting() -> None:
    result = await run_cli(
        "node", "--app", EXAMPLE_APP, "--dsn", "not-a-url", env=subprocess_env(), timeout=15
    )

    assert result.returncode == 2, describe(result)
    assert_no_traceback(result.stderr)
    assert "dsn" in result.stderr, describe(result)
    assert "not-a-url" in result.stderr, describe(result)


async def test_node_with_an_app_module_that_does_not_exist_exits_2_with_a_sentence(
    pg_dsn: str,
) -> None:
    result = await run_cli("node", "--app", "nope:app", env=subprocess_env(pg_dsn), timeout=15)

    assert result.returncode == 2, describe(result)
    assert_no_traceback(result.stderr)
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, describe(result)
    assert "'nope'" in message, describe(result)
    assert "--app" in message, describe(result)


async def test_schedules_list_pause_and_resume_as_a_user_runs_them(
    nodes: NodeRunner, producer: App, pg_dsn: str, pg_schema: str, db: asyncpg.Connection,
    tmp_path: Path,
) -> None:  # fmt: skip
    app = "tests.acceptance.schedules_app:app"
    node_env = subprocess_env(pg_dsn, pg_schema, poll_interval_s="0.2", test_runs_dir=str(tmp_path))
    await nodes.start(app=app, env=node_env)
    env = subprocess_env(pg_dsn, pg_schema)
    fired = f"SELECT count(*) FROM {pg_schema}.asyncjobs_jobs WHERE schedule = 'tick'"
    await wait_until(lambda: _at_least(db, fired, 5), timeout=30, what="the schedule to fire")

    listed = await run_cli("schedules", "list", env=env)
    assert listed.returncode == 0, describe(listed)
    header, row = listed.stdout.splitlines()
    assert header.split()[:4] == ["NAME", "JOB", "WHEN", "STATE"], describe(listed)
    assert "NEXT FIRE (UTC)" in header and "LAST FIRE (UTC)" in header and "MISSED" in header
    assert row.split()[:2] == ["tick", "note"] and "active" in row.split(), describe(listed)

    paused = await run_cli("schedules", "pause", "tick", env=env)
    assert paused.returncode == 0, describe(paused)
    assert paused.stdout.strip() == "schedule tick paused", describe(paused)
    after_pause = int(await db.fetchval(fired))
    # A one-time job due 0.5 s (ten fire times) from now: once the node has run it, a
    # schedule that still fired would have fired.
    marker = await run_cli("enqueue", "record", "--app", app, "--delay", "0.5", "--wait", env=env)
    assert marker.returncode == 0, describe(marker)
    assert int(await db.fetchval(fired)) == after_pause, "a paused schedule fired"
    (record,) = orjson.loads((await run_cli("schedules", "list", "--json", env=env)).stdout)
    assert record["paused"] is True and record["fired"] == after_pause

    resumed = await run_cli("schedules", "resume", "tick", env=env)
    assert resumed.returncode == 0, describe(resumed)
    await wait_until(
        lambda: _at_least(db, fired, after_pause + 5), timeout=30, what="fires after the resume"
    )

    unknown = await run_cli("schedules", "pause", "no-such-schedule", env=env)
    assert unknown.returncode == 2, describe(unknown)
    assert_no_traceback(unknown.stderr)
    assert "'no-such-schedule'" in unknown.stderr and "schedules list" in unknown.stderr


async def _at_least(db: asyncpg.Connection, query: str, n: int) -> bool:
    return bool(await db.fetchval(query) >= n)


async def test_workflow_show_and_cancel_as_a_user_runs_them(
    producer: App, pg_dsn: str, pg_schema: str
) -> None:
    from asyncjobs import Workflow

    record = producer.registry["record"]
    wf = Workflow("nightly audit")
    first = wf.add(record.s(), key="first")
    for i in range(3):
        wf.add(record.s(), after=[first], key=f"check-{i}")
    workflow_id = await producer.submit(wf)  # no node runs: everything stays pending
    env = subprocess_env(pg_dsn, pg_schema)

    shown = await run_cli("workflow", "show", str(workflow_id), env=env)
    assert shown.returncode == 0, describe(shown)
    lines = shown.stdout.splitlines()
    assert lines[0] == f"workflow {workflow_id} (nightly audit): running", describe(shown)
    assert "4 jobs" in lines[1] and lines[2].strip() == "waiting 3, queued 1", describe(shown)

    cancelled = await run_cli("workflow", "cancel", str(workflow_id), env=env)
    assert cancelled.returncode == 0, describe(cancelled)
    assert "4 jobs cancelled, 0 running jobs asked to stop" in cancelled.stdout

    status = orjson.loads(
        (await run_cli("workflow", "show", str(workflow_id), "--json", env=env)).stdout
    )
    assert status["state"] == "cancelled" and status["counts"]["cancelled"] == 4
    assert [f["step"] for f in status["failures"]] == ["first", "check-0", "check-1", "check-2"]

    for bad, expected in (
        ("not-a-uuid", "is not a workflow id"),
        (str(uuid.uuid4()), "no workflow"),
    ):
        result = await run_cli("workflow", "show", bad, env=env)
        assert result.returncode == 2, describe(result)
        assert_no_traceback(result.stderr)
        assert expected in result.stderr, describe(result)


async def test_jobs_show_retry_and_cancel_as_a_user_runs_them(
    nodes: NodeRunner, producer: App, pg_dsn: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    env = subprocess_env(pg_dsn, pg_schema)
    await nodes.start(env=env)
    failed = await producer.enqueue("fail", "the disk is read-only")
    done = await producer.enqueue("record")
    later = await producer.enqueue("record", delay=3600)
    assert await producer.result(done, timeout=30) is None
    await wait_until(lambda: _state(producer, failed, "failed"), timeout=30, what="the failure")

    listed = await run_cli("jobs", env=env)
    assert listed.returncode == 0, describe(listed)
    lines = listed.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "QUEUE", "STATE"], describe(listed)
    assert [line.split()[0] for line in lines[1:]] == [str(later), str(done), str(failed)]

    only_failed = await run_cli("jobs", "--state", "failed", env=env)
    assert [line.split()[:4] for line in only_failed.stdout.splitlines()[1:]] == [
        [str(failed), "fail", "default", "failed"]
    ], describe(only_failed)
    first = await run_cli("jobs", "--limit", "2", "--json", env=env)
    page = orjson.loads(first.stdout)
    assert [j["id"] for j in page["jobs"]] == [str(later), str(done)]
    rest = orjson.loads((await run_cli("jobs", "--before", page["next"], "--json", env=env)).stdout)
    assert [j["id"] for j in rest["jobs"]] == [str(failed)] and rest["next"] is None

    async def both_counted() -> bool:  # the node writes its statistics with its heartbeat
        snap = orjson.loads((await run_cli("status", "--json", env=env)).stdout)
        return bool(snap["throughput"]["finished"] == {"failed": 1, "succeeded": 1})

    await wait_until(both_counted, timeout=30, what="the statistics of both jobs")
    status = await run_cli("status", env=env)
    lines = status.stdout.splitlines()
    at = lines.index("recent failures:")
    assert lines[at + 2].split()[:3] == [str(failed), "fail", "failed"], describe(status)
    assert lines[at + 2].endswith("ValueError: the disk is read-only"), describe(status)
    (throughput,) = [line for line in lines if line.startswith("finished over the last")]
    assert "(1 failed, 1 succeeded)" in throughput, describe(status)
    at = lines.index("nodes:")
    assert lines[at + 1].split()[4:6] == ["RUNNING", "WORKERS"], describe(status)
    snap = orjson.loads((await run_cli("status", "--json", env=env)).stdout)
    assert snap["throughput"]["finished"] == {"failed": 1, "succeeded": 1}
    assert len(snap["nodes"]) == 1 and snap["nodes"][0]["workers"] == 0

    report = await run_cli("report", "cpu-vs-io", "--since", "1h", env=env)
    assert report.returncode == 0, describe(report)
    rows = {line.split()[0]: line.split() for line in report.stdout.splitlines()[2:]}
    assert set(rows) == {"fail", "record"}, describe(report)
    assert rows["fail"][3:5] == ["1", "1"] and rows["record"][3:5] == ["1", "0"]
    as_json = orjson.loads((await run_cli("report", "cpu-vs-io", "--json", env=env)).stdout)
    assert {j["name"]: j["attempts"] for j in as_json["jobs"]} == {"fail": 1, "record": 1}

    shown = await run_cli("show", str(failed), env=env)
    assert shown.returncode == 0, describe(shown)
    assert f"job {failed}: fail [failed]" in shown.stdout
    assert "call  fail('the disk is read-only')" in shown.stdout
    assert "error    ValueError: the disk is read-only" in shown.stdout
    assert "Traceback (most recent call last):" in shown.stdout
    assert "  ran      " in shown.stdout and "s of CPU" in shown.stdout, describe(shown)
    detail = orjson.loads((await run_cli("show", str(failed), "--json", env=env)).stdout)
    assert detail["error"]["type"] == "ValueError" and detail["args"] == ["the disk is read-only"]

    retried = await run_cli("retry", str(failed), env=env)
    assert retried.returncode == 0 and "queued again" in retried.stdout, describe(retried)
    runs = f"SELECT count(*) FROM {pg_schema}.acceptance_runs WHERE job_id = $1"
    await wait_until(lambda: _at_least(db, runs.replace("$1", f"'{failed}'"), 2), timeout=30)
    await wait_until(lambda: _state(producer, failed, "failed"), timeout=30, what="the retry")
    assert (await producer.get(failed)).attempt == 2

    refused = await run_cli("retry", str(done), env=env)
    assert refused.returncode == 1 and "it is succeeded" in refused.stderr, describe(refused)
    cancelled = await run_cli("cancel", str(later), env=env)
    assert cancelled.returncode == 0 and f"{later}: cancelled" in cancelled.stdout
    assert (await producer.get(later)).reason == "cancelled from the command line"

    for args, expected in (
        (("show", "nope"), "'nope' is not a job id"),
        (("show", str(uuid.uuid4())), "no job with id"),
        (("jobs", "--since", "yesterday"), "--since 'yesterday' is neither a duration"),
        (("report", "cpu-vs-io", "--since", "lately"), "--since 'lately' is not a duration"),
        (("jobs", "--since", "9" * 30 + "d"), "is neither a duration"),
        (("report", "cpu-vs-io", "--since", "9" * 30 + "d"), "is not a duration"),
    ):
        result = await run_cli(*args, env=env)
        assert result.returncode == 2, describe(result)
        assert_no_traceback(result.stderr)
        assert expected in result.stderr, describe(result)


async def _state(app: App, job_id: object, state: str) -> bool:
    return (await app.get(job_id)).state.value == state  # type: ignore[arg-type]


async def test_purge_asks_on_a_terminal_needs_yes_elsewhere_and_says_what_it_deleted(
    producer: App, pg_dsn: str, pg_schema: str
) -> None:
    env = subprocess_env(pg_dsn, pg_schema)
    await producer.enqueue_many([producer.signature("record") for _ in range(3)])
    later = await producer.enqueue("record", delay=3600)

    refused = await run_cli("purge", "default", env=env)  # stdin is not a terminal
    assert refused.returncode == 2, describe(refused)
    assert_no_traceback(refused.stderr)
    assert "purge would delete 3 queued jobs from queue 'default'; pass --yes" in refused.stderr
    assert (await producer.counts())["queued"] == 3

    declined = await run_on_a_terminal(["purge", "default"], env, answer="n")
    assert "Delete 3 queued jobs from queue 'default'?" in declined.stdout, describe(declined)
    assert declined.returncode == 1 and "nothing deleted" in declined.stdout
    assert (await producer.counts())["queued"] == 3

    accepted = await run_on_a_terminal(["purge", "default"], env, answer="y")
    assert accepted.returncode == 0, describe(accepted)
    assert "deleted 3 jobs from queue 'default': 3 queued" in accepted.stdout, describe(accepted)
    assert (await producer.counts())["queued"] == 0
    assert (await producer.get(later)).state.value == "scheduled"

    both = await run_cli("purge", "default", "--state", "scheduled", "--yes", env=env)
    assert both.returncode == 0 and "1 scheduled" in both.stdout, describe(both)
    empty = await run_cli("purge", "default", "--yes", env=env)
    assert empty.returncode == 0 and "nothing to delete" in empty.stdout, describe(empty)
    for args, expected in (
        (("purge", "default", "--state", "running", "--yes"), "running jobs are never purged"),
        (("purge", "default", "--state", "done", "--yes"), "use some of scheduled, waiting"),
        (("purge", "no such queue", "--yes"), "cannot take queue='no such queue'"),
    ):
        result = await run_cli(*args, env=env)
        assert result.returncode == 2, describe(result)
        assert_no_traceback(result.stderr)
        assert expected in result.stderr, describe(result)


async def run_on_a_terminal(
    args: list[str], env: dict[str, str], *, answer: str
) -> subprocess.CompletedProcess[str]:
    """Run ``asyncjobs ARGS`` with a pseudo-terminal as its stdin, and type ``answer``."""
    master, slave = os.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            *CLI, *args, cwd=ROOT, env=env, stdin=slave,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        os.write(
            master, answer.encode() + b"\n"
        )  # read once the prompt is up: a terminal buffers it
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        os.close(master)
        os.close(slave)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, stdout.decode(), stderr.decode())


async def test_show_lists_the_steps_of_a_durable_job(
    nodes: NodeRunner, producer: App, pg_dsn: str, pg_schema: str, db: asyncpg.Connection
) -> None:
    await db.execute(STEP_RUNS_DDL.format(schema=pg_schema))
    env = subprocess_env(pg_dsn, pg_schema)
    await nodes.start(env=env)
    job_id = await producer.enqueue("provision", "vm-9")
    await producer.result(job_id, timeout=30)

    shown = await run_cli("show", str(job_id), env=env)
    assert shown.returncode == 0, describe(shown)
    lines = shown.stdout.splitlines()
    assert "  steps    5" in lines, describe(shown)
    at = lines.index("  steps    5")
    assert lines[at + 1].split()[:5] == ["#", "NAME", "KIND", "STATE", "ATTEMPT"], describe(shown)
    assert [line.split()[:4] for line in lines[at + 2 : at + 7]] == [
        [str(seq), name, "call", "succeeded"] for seq, name in enumerate(PROVISION_STEPS, 1)
    ], describe(shown)
    detail = orjson.loads((await run_cli("show", str(job_id), "--json", env=env)).stdout)
    assert [s["name"] for s in detail["steps"]] == list(PROVISION_STEPS)
    assert {s["state"] for s in detail["steps"]} == {"succeeded"}


def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """`asyncjobs show ID | head`: the command stops with 141 (128 + SIGPIPE), no traceback."""
    script = (
        "import sys\n"
        "from asyncjobs.cli import run_command\n"
        "async def chatty(args):\n"
        "    for _ in range(200_000):\n"
        "        print('x' * 100)\n"
        "    return 0\n"
        "sys.exit(run_command(chatty, None))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"xxx")
    proc.stdout.close()  # as head does after its lines
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 141
    assert stderr == b"", stderr.decode()
