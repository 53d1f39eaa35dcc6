"""Helpers for tests: waiting for a state without sleeping blindly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
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


def most_at_once(spans: Iterable[tuple[Any, Any]]) -> int:
    """The most (start, end) intervals open at one instant. An end at the same instant as a
    start closes first: the slot was freed before it was taken."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak
