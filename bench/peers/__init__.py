"""``python -m bench.peers`` (``make bench-peers``): asyncjobs beside procrastinate, arq, Celery.

The same workloads run against each system in one run, interleaved, and each figure is also
given as a ratio, asyncjobs / peer. Every peer lives in its own virtual environment under
``bench/.peers/<peer>/`` (created on first use, with pinned versions; see ``venvs.py``) and is
driven only through its documented public API, by a *side*: ``<system>_side.py``, a small
program run with that system's Python, which defines the jobs, starts the system's own worker
as a separate process and measures one workload at a time. ``side_common.py`` holds what the
sides share and imports nothing but the standard library, so that it runs in every venv.

Nothing in this package imports asyncjobs at import time: a peer's Python imports
``bench.peers`` on its way to its side.
"""
