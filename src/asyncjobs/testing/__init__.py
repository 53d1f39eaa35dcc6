"""Testing your jobs: the real node code against a MemoryStore or a throwaway Postgres schema,
on a clock the test moves.

- ``Harness(app)``: runs ``app``'s jobs in the test (``run_until_idle``, ``advance``), with
  ``assert_enqueued`` and ``assert_succeeded``. See ``asyncjobs.testing.harness``.
- ``ManualClock``: the clock the harness's app, node, retries and schedules read.
- The pytest plugin (``asyncjobs.testing.plugin``, registered as ``asyncjobs``): fixtures
  ``asyncjobs_harness`` (MemoryStore) and ``asyncjobs_pg_harness`` (a fresh Postgres schema)
  for the app a test's ``asyncjobs_app`` fixture returns.
"""

from __future__ import annotations

from .harness import Harness, HarnessError, ManualClock, Ran

__all__ = ["Harness", "HarnessError", "ManualClock", "Ran"]
