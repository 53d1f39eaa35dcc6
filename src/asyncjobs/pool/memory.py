"""How much memory a process really uses, from ``/proc/<pid>/smaps_rollup``.

RSS counts every page a process maps, shared or not, so forty workers sharing a 500 MB preload
would each "use" 500 MB. What matters is:

- USS (unique set size): pages only this process holds, ``Private_Clean + Private_Dirty``.
  It is what killing the process gives back, and what ``max_worker_uss_bytes`` limits.
- PSS (proportional set size): each page divided by the number of processes sharing it. The
  PSS of all processes adds up to what they use together.

Every ``/proc/<pid>`` read goes through ``read_proc``: the process may be gone by then.
"""

from __future__ import annotations

import errno
from typing import NamedTuple


class MemoryUse(NamedTuple):
    rss: int
    pss: int
    uss: int


def read_proc(path: str) -> bytes | None:
    """The contents of a ``/proc/<pid>/...`` file; None if the process is gone.

    A process can exit at any moment, also between the open and the read: the open then works
    and the read fails with ESRCH (``ProcessLookupError``). Both read as gone. Other errors,
    such as ``PermissionError``, are raised.
    """
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        if isinstance(exc, FileNotFoundError | ProcessLookupError) or exc.errno in _GONE:
            return None
        raise


def memory_use(pid: int) -> MemoryUse | None:
    """RSS, PSS and USS of ``pid`` in bytes; None if the process is gone."""
    data = read_proc(f"/proc/{pid}/smaps_rollup")
    if data is None:
        return None
    fields: dict[str, int] = {}
    for line in data.splitlines():
        key, _, rest = line.partition(b":")
        if key in _WANTED:
            fields[key.decode()] = int(rest.split()[0]) * 1024
    uss = fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)
    uss += fields.get("Private_Hugetlb", 0)
    return MemoryUse(fields.get("Rss", 0), fields.get("Pss", 0), uss)


_GONE = frozenset({errno.ENOENT, errno.ESRCH})
_WANTED = frozenset({b"Rss", b"Pss", b"Private_Clean", b"Private_Dirty", b"Private_Hugetlb"})
