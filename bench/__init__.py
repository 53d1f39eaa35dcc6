"""Benchmarks for asyncjobs: ``python -m bench`` (or ``make bench``).

Each benchmark module exposes ``NAME``, ``SCHEMA`` and ``async def run(ctx) -> list[Figure]``.
They are not tests: they print a table, write JSON to ``bench/results/`` and rewrite
``bench/RESULTS.md``; nothing here asserts a number of seconds. Each also times a bare
baseline of the same work in the same run (``bench/baselines.py``) and reports asyncjobs'
figure as a ratio to it: on a shared machine, the ratio is what compares between runs.
"""
