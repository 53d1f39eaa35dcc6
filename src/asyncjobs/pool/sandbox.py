"""Locking down a freshly forked worker, in the order DESIGN §7 gives, with ctypes only.

This is defence in depth, not a jail for hostile code: a worker keeps the node's user (unless
``worker_user`` names another), its filesystem view and its network. What it loses is the
node's environment (no DSN, no secrets), its file descriptors (no database connection), the
right to outlive its parent, the ability to gain privileges, and unbounded resources.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import resource
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

# Passed to the zygote and every worker whatever the settings say: enough for Python, locale
# and time zones to behave, nothing that could carry a secret.
ENV_ALLOWLIST = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONHASHSEED")
# Numeric libraries start one thread per core unless told otherwise. The zygote must stay
# single-threaded (fork copies only the calling thread) and each worker is one job at a time.
ENV_FIXED = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}


def clean_environment(source: Mapping[str, str], extra_names: Iterable[str] = ()) -> dict[str, str]:
    """The allowlisted subset of ``source``, plus the fixed thread-count variables."""
    names = (*ENV_ALLOWLIST, *extra_names)
    env = {name: source[name] for name in names if name in source}
    env.update(ENV_FIXED)
    return env


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def prctl(option: int, arg: int = 0) -> None:
    """Call prctl(2) through ctypes; raise ``OSError`` if it fails."""
    if _libc().prctl(option, ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0), 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


def die_with_parent(expected_parent: int) -> None:
    """SIGKILL this process when its parent dies; exit now if that already happened.

    The re-check closes the race where the parent died before the prctl: the process would
    have been re-parented already and would never get the signal.
    """
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != expected_parent:
        os._exit(70)


@dataclass(frozen=True, slots=True)
class WorkerLimits:
    """Resource limits applied to each worker (None: leave the inherited limit)."""

    address_space_bytes: int | None
    cpu_seconds: int | None
    open_files: int | None
    processes: int | None
    uid: int | None = None  # switch to this user (and gid) when the node runs as root
    gid: int | None = None

    def to_json(self) -> dict[str, int | None]:
        return {
            "address_space_bytes": self.address_space_bytes,
            "cpu_seconds": self.cpu_seconds,
            "open_files": self.open_files,
            "processes": self.processes,
            "uid": self.uid,
            "gid": self.gid,
        }


def harden(keep_fd: int, parent: int, env: Mapping[str, str], limits: WorkerLimits) -> int:
    """Run the start-up steps of a forked worker; return the fd of its socket (now 3)."""
    # 1. A new session: the worker leads its own process group, so SIGKILL to the group takes
    #    whatever it forked, and signals meant for the node's terminal never reach it.
    os.setsid()
    # 2. Default signal dispositions and an empty mask (the zygote's wakeup fd goes too).
    signal.set_wakeup_fd(-1)
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        # Some real-time signals cannot be set from Python; they are at their defaults anyway.
        with contextlib.suppress(OSError, ValueError):
            signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    # 3. Only stdio and the worker's own socket survive: no database connection, no zygote
    #    control socket, nothing another worker could use.
    if keep_fd != 3:
        os.dup2(keep_fd, 3)
    os.closerange(4, _max_fd())
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    # 4. The environment: the allowlist only.
    os.environ.clear()
    os.environ.update(env)
    # 5. Resource limits, then the user switch (which must come before PDEATHSIG: changing
    #    credentials clears it).
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_AS, limits.address_space_bytes)
    _limit(resource.RLIMIT_NOFILE, limits.open_files)
    _limit(resource.RLIMIT_NPROC, limits.processes)
    if limits.cpu_seconds is not None:
        # Soft limit: SIGXCPU (the worker dies, its job fails); hard limit a little later.
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
    if limits.uid is not None and os.getuid() == 0:
        os.setgroups([])
        os.setgid(limits.gid if limits.gid is not None else limits.uid)
        os.setuid(limits.uid)
    # 6. Never outlive the zygote (which never outlives the node).
    die_with_parent(parent)
    # 7. No setuid binary or file capability can raise this process's privileges again.
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    return 3


def _limit(kind: int, value: int | None) -> None:
    if value is None:
        return
    _soft, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY and value > hard and os.getuid() != 0:
        value = hard  # cannot raise a hard limit without privileges; keep the stricter one
    resource.setrlimit(kind, (value, value))


def _max_fd() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 65536


def has_children() -> bool:
    """True if this process has children, running or exited and unreaped (one system call,
    where reading ``/proc/<pid>/task/<pid>/children`` costs eight)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True
