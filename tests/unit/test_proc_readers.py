"""Reading ``/proc`` when the process goes away mid-read: it reads as gone, never raises.

A process can exit between the open and the read of one of its ``/proc`` files; the read then
fails with ESRCH (``ProcessLookupError``). ``open`` is replaced here, so nothing touches
``/proc``; tests/integration/test_proc_readers.py does the same with a real reaped process.
"""

from __future__ import annotations

import errno
import io
from collections.abc import Callable
from typing import Any

import pytest

from asyncjobs.pool import memory
from asyncjobs.pool.memory import MemoryUse, memory_use, read_proc
from tests import procfs

SMAPS_ROLLUP = b"""\
55fc0e36a000-7ffd8f627000 ---p 00000000 00:00 0                          [rollup]
Rss:                  40 kB
Pss:                  24 kB
Shared_Clean:          8 kB
Private_Clean:         4 kB
Private_Dirty:        12 kB
Private_Hugetlb:       2 kB
"""
STAT = b"4242 (a (strange) name) S 17 4242 4242 0 -1 4194560 107 0 0 0"


class VanishingFile(io.BytesIO):
    """A file whose process is reaped after the open: every read fails as the kernel's does."""

    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def read(self, size: int | None = -1) -> bytes:
        raise self.error


def opens(monkeypatch: pytest.MonkeyPatch, make: Callable[[str], Any]) -> list[str]:
    """Make ``open`` in the reader return ``make(path)``; the paths opened, in order."""
    paths: list[str] = []

    def fake_open(path: str, mode: str = "r") -> Any:
        assert mode == "rb"
        paths.append(path)
        return make(path)

    monkeypatch.setattr(memory, "open", fake_open, raising=False)
    return paths


def plain_oserror(code: int) -> OSError:
    """An OSError with ``code`` that is not the subclass Python would map it to (as a wrapper
    or a C extension may raise)."""
    error = OSError("no such process")
    error.errno = code
    return error


GONE_AT_READ = [
    pytest.param(ProcessLookupError(errno.ESRCH, "No such process"), id="ProcessLookupError"),
    pytest.param(ProcessLookupError(), id="ProcessLookupError-without-errno"),
    pytest.param(plain_oserror(errno.ESRCH), id="OSError-ESRCH"),
    pytest.param(FileNotFoundError(errno.ENOENT, "No such file"), id="FileNotFoundError"),
]


@pytest.mark.parametrize("error", GONE_AT_READ)
def test_a_process_that_goes_away_between_the_open_and_the_read_reads_as_gone(
    monkeypatch: pytest.MonkeyPatch, error: OSError
) -> None:
    paths = opens(monkeypatch, lambda path: VanishingFile(error))
    assert read_proc("/proc/4242/stat") is None
    assert memory_use(4242) is None
    assert procfs.proc_stat(4242) is None
    assert procfs.alive(4242) is False
    assert procfs.children(4242) == []
    assert procfs.cmdline(4242) == b""
    assert paths == [
        "/proc/4242/stat", "/proc/4242/smaps_rollup", "/proc/4242/stat", "/proc/4242/stat",
        "/proc/4242/task/4242/children", "/proc/4242/cmdline",
    ]  # fmt: skip


@pytest.mark.parametrize("error", [ProcessLookupError(), FileNotFoundError()])
def test_a_process_that_is_gone_before_the_open_reads_as_gone(
    monkeypatch: pytest.MonkeyPatch, error: OSError
) -> None:
    def gone(path: str) -> Any:
        raise error

    opens(monkeypatch, gone)
    assert memory_use(4242) is None
    assert procfs.alive(4242) is False


def test_an_error_that_does_not_mean_gone_is_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    opens(monkeypatch, lambda path: VanishingFile(PermissionError(errno.EACCES, "denied")))
    with pytest.raises(PermissionError):
        memory_use(4242)


def test_a_live_process_reads_as_its_memory_state_and_parent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    files = {"/proc/4242/smaps_rollup": SMAPS_ROLLUP, "/proc/4242/stat": STAT}
    opens(monkeypatch, lambda path: io.BytesIO(files[path]))
    assert memory_use(4242) == MemoryUse(rss=40 * 1024, pss=24 * 1024, uss=18 * 1024)
    assert procfs.proc_stat(4242) == ("S", 17)
    assert procfs.alive(4242) is True
    files["/proc/4242/stat"] = STAT.replace(b") S 17", b") Z 17")
    assert procfs.alive(4242) is False  # a zombie: only its exit status is left
