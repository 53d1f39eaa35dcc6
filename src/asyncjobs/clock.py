"""The clock that enqueue, retries and the node read: wall time as epoch seconds.

A narrow seam, so that tests (and ``asyncjobs.testing``) can drive time instead of waiting.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """What asyncjobs asks of a clock: the wall time. Pass one to ``App(clock=...)``."""

    def time(self) -> float:
        """Seconds since the epoch, UTC."""
        ...


class SystemClock:
    """The machine's wall clock."""

    def time(self) -> float:
        return time.time()


def to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def to_timestamp(dt: datetime) -> float:
    """Epoch seconds of an aware datetime; a naive one is refused (its zone is a guess)."""
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(
            f"run_at={dt.isoformat()} has no time zone; pass an aware datetime, for example "
            "datetime.now(UTC) + timedelta(hours=1)"
        )
    return dt.timestamp()
