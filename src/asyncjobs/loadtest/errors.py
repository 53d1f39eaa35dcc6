"""The load test's errors: one sentence for the user, and the exit status to end with."""

from __future__ import annotations

from ..errors import AsyncJobsError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class LoadTestError(AsyncJobsError):
    """The load test cannot run as asked; ``code`` is the exit status (2: fix the command)."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


class MixError(LoadTestError, ValueError):
    """The job mix cannot be used; the message names the value and what to write."""
