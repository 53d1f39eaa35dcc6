"""IO-bound jobs: they spend their time awaiting, so thousands run at once in one node."""

from __future__ import annotations

import asyncio

from asyncjobs import JobContext

from . import app


@app.job()
async def sleep(seconds: float) -> float:
    """Wait, like a job waiting on a slow API; returns how long it slept."""
    await asyncio.sleep(seconds)
    return seconds


@app.job(timeout=30)
async def fetch_banner(ctx: JobContext, host: str, port: int) -> str:
    """Open a TCP connection and read the first line the server sends (e.g. an SSH banner)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        line = await asyncio.wait_for(reader.readline(), timeout=5)
    finally:
        writer.close()
        await writer.wait_closed()
    ctx.logger.info("read %d bytes from %s:%d", len(line), host, port)
    return line.decode(errors="replace").strip()


@app.job()
async def noop() -> None:
    """Does nothing: the benchmarks use it to measure the runner itself."""
