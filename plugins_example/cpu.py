"""CPU-heavy jobs: they run in pool worker processes, never on the node's event loop.

Run a node with them: ``asyncjobs node --app plugins_example:app --plugins plugins_example.cpu
--queues default,cpu=4``. Their own queue, limited to the pool's size, keeps the node from
claiming more of them than it has workers for.
"""

from __future__ import annotations

import hashlib

from . import app


@app.job(isolated=True, queue="cpu", timeout=300)
def hash_chain(rounds: int, seed: str = "asyncjobs") -> str:
    """SHA-256 applied ``rounds`` times: pure CPU, holding the GIL between rounds."""
    digest = seed.encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


@app.job(isolated=True, queue="cpu")
def add_one(x: int) -> int:
    """Almost nothing: the benchmarks use it to measure a pool round trip."""
    return x + 1
