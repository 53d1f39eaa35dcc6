"""The MemoryStore's parts, one module an area, on one shared state.

The areas are those of the Store protocol (store/base.py) and of the Postgres migrations:
jobs, nodes and the reaper, claiming and completing, limits, schedules, workflows, counting
and purging, and monitoring. ``asyncjobs.store.memory`` composes them into MemoryStore; import
it from there (or from ``asyncjobs``), never from here.
"""
