"""What a node process serves over HTTP: the dashboard (``--dashboard-port``) and Prometheus
metrics (``--metrics-port``); and ``asyncjobs dashboard`` on its own, as a user runs them."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
from pathlib import Path

import httpx

from asyncjobs import App
from tests.helpers import wait_until

from .nodes import CLI, ROOT, TEST_APP, NodeRunner, describe, run_cli, subprocess_env

TOKEN = "a-long-enough-dashboard-token"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def spawn_dashboard(env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as log:
        return subprocess.Popen(
            [*CLI, "dashboard", "--port", "0"], cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_node_serves_the_dashboard_and_metrics_beside_its_jobs(
    nodes: NodeRunner, producer: App, pg_dsn: str, pg_schema: str
) -> None:
    env = {**subprocess_env(pg_dsn, pg_schema), "ASYNCJOBS_DASHBOARD_TOKEN": TOKEN}
    dashboard, metrics = free_port(), free_port()
    node = await nodes.start(
        "--dashboard-port", str(dashboard), "--metrics-port", str(metrics), env=env
    )
    await node.wait_output(f"dashboard on http://127.0.0.1:{dashboard}/", timeout=30)
    job_id = await producer.enqueue("record")
    assert await producer.result(job_id, timeout=30) is None

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{dashboard}") as client:
        assert (await client.get("/")).status_code == 401
        page = await client.get(f"/jobs/{job_id}", headers=BEARER)
        assert page.status_code == 200 and "record" in page.text and "succeeded" in page.text

        async def counted() -> bool:
            text = (await client.get(f"http://127.0.0.1:{metrics}/metrics")).text
            return 'asyncjobs_jobs_finished_total{name="record",outcome="succeeded"} 1.0' in text

        await wait_until(counted, timeout=30, what="the job in the node's metrics")

    node.send(signal.SIGTERM)
    assert await node.wait_exit(timeout=30) == 0, node.output()


async def test_the_dashboard_command_serves_until_sigterm_and_refuses_without_a_token(
    pg_dsn: str, pg_schema: str, producer: App, tmp_path: Path
) -> None:
    env = {**subprocess_env(pg_dsn, pg_schema), "ASYNCJOBS_DASHBOARD_TOKEN": TOKEN}
    refused = await run_cli("dashboard", env=subprocess_env(pg_dsn, pg_schema))
    assert refused.returncode == 2 and "the dashboard needs a token" in refused.stderr
    assert "Traceback" not in refused.stderr, describe(refused)

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        for args in (("dashboard", "--port", port), ("node", "--app", TEST_APP,
                                                     "--dashboard-port", port)):  # fmt: skip
            taken = await run_cli(*args, env=env)
            assert taken.returncode == 2, describe(taken)
            assert f"cannot listen on 127.0.0.1:{port}" in taken.stderr, describe(taken)
            assert "Traceback" not in taken.stderr, describe(taken)

    out = tmp_path / "dashboard.log"
    proc = spawn_dashboard(env, out)
    try:
        found: list[str] = []

        async def printed_its_url() -> bool:
            found[:] = re.findall(r"asyncjobs dashboard on (http://\S+)", out.read_text())
            assert proc.poll() is None, out.read_text()
            return bool(found)

        await wait_until(printed_its_url, timeout=30, what="the dashboard's URL")
        async with httpx.AsyncClient(base_url=found[0]) as client:
            assert (await client.get("/")).status_code == 401
            assert (await client.get("/", headers=BEARER)).status_code == 200
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0, out.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
