"""A "model" plug-in: a large read-only buffer, loaded once and shared by every worker.

The preload hook runs in the pool's zygote, before any worker is forked, so the buffer's pages
are shared copy-on-write: eight workers reading a 500 MB model use about 500 MB, not 4 GB.
It is one ``bytes`` object on purpose: millions of small Python objects would have their
reference counts written by every worker that touches them, copying their pages one by one.

The size is ``PLUGINS_EXAMPLE_MODEL_MB`` (default 64). Workers see only allowlisted variables,
so pass it through: ``ASYNCJOBS_WORKER_ENV=PLUGINS_EXAMPLE_MODEL_MB``.
"""

from __future__ import annotations

import hashlib
import os

from . import app

MODEL_MB = int(os.environ.get("PLUGINS_EXAMPLE_MODEL_MB", "64"))
MODEL = b""  # filled by load_model in the zygote; empty in the node process


@app.preload
def load_model() -> None:
    """Build the model: a deterministic 1 MiB block, repeated (stands in for real weights)."""
    global MODEL  # noqa: PLW0603 - filled once, in the zygote, before workers fork
    block = hashlib.shake_256(b"plugins_example.model").digest(1024 * 1024)
    MODEL = block * MODEL_MB


@app.job(isolated=True, queue="cpu", timeout=120)
def model_scan(byte: int = 0) -> dict[str, int]:
    """Read the whole model: how often ``byte`` occurs in it, and its size."""
    return {"bytes": len(MODEL), "count": MODEL.count(bytes([byte]))}


@app.job(isolated=True, queue="cpu", timeout=120)
def model_lookup(offset: int, length: int = 16) -> str:
    """Answer a query from the model: ``length`` bytes at ``offset``, as hex."""
    if not 0 <= offset < len(MODEL):
        raise ValueError(f"offset {offset} is outside the model ({len(MODEL)} bytes)")
    return MODEL[offset : offset + length].hex()
