"""Example plug-ins: one module per kind of job, all registered on ``plugins_example.app``.

Run them with ``make run``, or ``asyncjobs node --app plugins_example:app``.
"""

from __future__ import annotations

from asyncjobs import App

app = App()

# Importing the modules registers their jobs on `app`.
from . import failing, io  # noqa: E402

__all__ = ["app", "failing", "io"]
