"""arq's job functions for the peers harness (``async def f(ctx, ...)``, as arq calls them)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from . import side_common as sc


async def noop(ctx: dict[str, Any]) -> None:
    return None


async def probe(ctx: dict[str, Any], i: int, sent: float) -> None:
    """The latency job: its start minus the wall time passed by the producer."""
    sc.record(f"{i} {time.time() - sent}")


async def sleeper(ctx: dict[str, Any], seconds: float) -> None:
    sc.record("s")
    await asyncio.sleep(seconds)


async def on_startup(ctx: dict[str, Any]) -> None:
    """arq's start-up hook: the worker is connected and about to poll."""
    sc.ready()


FUNCTIONS = [noop, probe, sleeper]
