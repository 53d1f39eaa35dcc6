"""asyncjobs embedded in an ASGI service: the node runs in the server's own event loop.

No framework needed; with FastAPI or Starlette, put the same ``async with jobs:`` in the
``lifespan`` function. Run it with any ASGI server, for example::

    ASYNCJOBS_DSN=postgresql://postgres@127.0.0.1/postgres uvicorn examples.asgi_service:service

    curl -X POST localhost:8000/vms/vm-42/provision     ->  {"job": "01a1..."}
    curl localhost:8000/jobs/01a1...                    ->  {"state": "succeeded", ...}
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from asyncjobs import App, JobContext, JobNotFoundError

jobs = App()  # settings from ASYNCJOBS_* variables


@jobs.job(timeout=3600)
async def provision_vm(ctx: JobContext, vm_id: str) -> dict[str, str]:
    ctx.logger.info("provisioning %s", vm_id)
    await asyncio.sleep(0.05)  # stands in for awaiting the hypervisor's API
    return {"vm": vm_id, "status": "ready"}


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def service(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI application."""
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
    elif scope["type"] == "http":
        status, body = await route(scope["method"], scope["path"])
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": orjson.dumps(body)})


async def lifespan(receive: Receive, send: Send) -> None:
    message = await receive()  # lifespan.startup
    async with jobs:  # connects, migrates and starts a node in this event loop
        await send({"type": "lifespan.startup.complete"})
        message = await receive()  # lifespan.shutdown: leaving the block drains the node
    assert message["type"] == "lifespan.shutdown"
    await send({"type": "lifespan.shutdown.complete"})


async def route(method: str, path: str) -> tuple[int, Any]:
    parts = path.strip("/").split("/")
    if method == "POST" and len(parts) == 3 and parts[0] == "vms" and parts[2] == "provision":
        job_id = await jobs.enqueue(provision_vm, parts[1])
        return 202, {"job": str(job_id)}
    if method == "GET" and len(parts) == 2 and parts[0] == "jobs":
        try:
            record = await jobs.get(parts[1])
        except (JobNotFoundError, ValueError):
            return 404, {"error": f"no job {parts[1]}"}
        return 200, {"state": record.state.value, "result": record.result, "error": record.error}
    return 404, {"error": "not found"}
