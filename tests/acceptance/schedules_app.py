"""The acceptance-test app with a fast schedule (``tests.acceptance.schedules_app:app``).

A separate module, so that only the tests that want a schedule run nodes that fire one.
"""

from __future__ import annotations

from .jobs_app import build_app

TICK_S = 0.05  # 20 fire times a second: 100 of them in a few seconds

app = build_app()
app.schedule("tick", "note", every=TICK_S)
