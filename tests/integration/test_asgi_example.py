"""The README's embedded example works: lifespan starts the node, requests enqueue jobs."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from asyncjobs import Settings
from examples import asgi_service
from tests.helpers import wait_until


async def call(method: str, path: str) -> tuple[int, Any]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await asgi_service.service({"type": "http", "method": method, "path": path}, receive, send)
    return sent[0]["status"], orjson.loads(sent[1]["body"])


async def test_embedded_service_runs_jobs_in_its_own_event_loop(pg_settings: Settings) -> None:
    asgi_service.jobs.configure(dsn=pg_settings.dsn, schema=pg_settings.schema)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    server = asyncio.create_task(asgi_service.service({"type": "lifespan"}, inbox.get, outbox.put))
    await inbox.put({"type": "lifespan.startup"})
    assert (await asyncio.wait_for(outbox.get(), 10))["type"] == "lifespan.startup.complete"
    try:
        status, body = await call("POST", "/vms/vm-42/provision")
        assert status == 202
        job = body["job"]

        async def done() -> bool:
            _, state = await call("GET", f"/jobs/{job}")
            return state["state"] == "succeeded"

        await wait_until(done, what="the provisioning job to succeed")
        assert (await call("GET", f"/jobs/{job}"))[1]["result"] == {
            "vm": "vm-42",
            "status": "ready",
        }
        assert (await call("GET", "/jobs/not-a-job"))[0] == 404
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await asyncio.wait_for(outbox.get(), 10))["type"] == "lifespan.shutdown.complete"
        await server
