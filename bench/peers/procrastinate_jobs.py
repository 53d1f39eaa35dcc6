"""procrastinate's app and jobs for the peers harness (its side imports them from here: its
docs ask for the app to live in a module of its own, not in ``__main__``).

The app is made without connection settings; the side puts a connector in with
``app.replace_connector`` for each use.
"""

from __future__ import annotations

import asyncio
import time

import procrastinate

from . import side_common as sc

app = procrastinate.App(connector=procrastinate.PsycopgConnector())


@app.task(name="noop")
async def noop() -> None:
    return None


@app.task(name="probe")
async def probe(i: int, sent: float) -> None:
    """The latency job: its start minus the wall time passed by the producer."""
    sc.record(f"{i} {time.time() - sent}")


@app.task(name="sleeper")
async def sleeper(seconds: float) -> None:
    sc.record("s")
    await asyncio.sleep(seconds)
