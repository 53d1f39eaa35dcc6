"""Helpers for tests: waiting for a state without sleeping blindly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest


async def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> Any:
    """Poll ``predicate`` (sync or async) until it is truthy, or fail after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(interval)
