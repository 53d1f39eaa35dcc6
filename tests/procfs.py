"""What the tests read from ``/proc``: a process that goes away, even between the open and the
read, reads as gone (``asyncjobs.pool.memory.read_proc``), never as an error."""

from __future__ import annotations

from asyncjobs.pool.memory import read_proc


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process; None if it is gone."""
    data = read_proc(f"/proc/{pid}/stat")
    if not data:
        return None
    fields = data.rsplit(b")", 1)[1].split()  # the command, in parentheses, may hold spaces
    return fields[0].decode(), int(fields[1])


def alive(pid: int) -> bool:
    """True while ``pid`` runs: a zombie is dead, only its exit status is left."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def children(pid: int) -> list[int]:
    """The pids of the children of ``pid``; none if it is gone."""
    data = read_proc(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in data.split()] if data else []


def cmdline(pid: int) -> bytes:
    """The command line of ``pid``, NUL-separated; empty if it is gone."""
    return read_proc(f"/proc/{pid}/cmdline") or b""
