"""The ``/proc`` readers against the kernel: a process reaped between the open and the read of
its files reads as gone (the unit tests fake the same failure)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from asyncjobs.pool import memory
from asyncjobs.pool.memory import memory_use
from tests import procfs


def test_a_process_reaped_between_the_open_and_the_read_reads_as_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pid = child.pid
    names = ("stat", "smaps_rollup", f"task/{pid}/children", "cmdline")
    opened = {f"/proc/{pid}/{name}": open(f"/proc/{pid}/{name}", "rb") for name in names}  # noqa: SIM115
    try:
        child.kill()
        child.wait()
        # The files were opened while it ran; the kernel now answers their reads with ESRCH.
        with pytest.raises(ProcessLookupError):
            opened[f"/proc/{pid}/stat"].read()

        def reopen(path: str, mode: str = "r") -> Any:
            # The reader closes what it opens: hand it a copy of the one opened before the reap.
            return os.fdopen(os.dup(opened[path].fileno()), mode)

        monkeypatch.setattr(memory, "open", reopen, raising=False)
        assert memory_use(pid) is None
        assert procfs.proc_stat(pid) is None
        assert procfs.alive(pid) is False
        assert procfs.children(pid) == []
        assert procfs.cmdline(pid) == b""
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for file in opened.values():
            file.close()
