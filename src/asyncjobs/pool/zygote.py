"""The zygote: imports the plug-ins once, preloads their data, then forks warm workers.

Started by the node (``python -m asyncjobs.pool.zygote NODE_PID FD``) before the node opens
any database connection, with a clean environment, so nothing a worker inherits by fork holds
a connection, a thread or a secret. It stays single-threaded: ``fork`` copies only the calling
thread, and a lock held by another thread would stay locked forever in the child.

Protocol, over a SOCK_SEQPACKET control socket (one message per frame, fds attached with
SCM_RIGHTS):

- node -> zygote: the bootstrap (modules, jobs, preload and after-job hooks, limits), then
  ``spawn``.
- zygote -> node: ``ready`` (or ``failed``), ``spawned`` with the worker's socket and pidfd,
  ``spawn_failed``, and ``exited`` with the exit status of each worker it reaped.

A worker's exit also ends its process group: the zygote kills the group before reaping the
worker, so whatever a job forked dies with it (the unreaped worker keeps its pid, and so its
group id, from being reused).

A zygote whose node has gone (its end of the control socket closed, mid-spawn or not) kills
its workers and exits 0 without a word: nobody is left to read it.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import os
import selectors
import signal
import socket
import sys
import traceback
from collections.abc import Callable
from typing import Any

from .frames import decode_message, encode_frame
from .sandbox import PR_SET_CHILD_SUBREAPER, WorkerLimits, die_with_parent, harden, prctl
from .worker import run_worker

CONTROL_MAX_BYTES = 1024 * 1024

JobTable = dict[str, tuple[Callable[..., Any], bool]]


def send(control: socket.socket, header: dict[str, Any], fds: list[int] | None = None) -> bool:
    """Send one message to the node; False if the node cannot be reached any more.

    A closed end (the node stopped, or died) is the normal way for a node to go and is not
    reported; any other error on the socket gets one line on stderr.
    """
    frame = encode_frame(header)
    try:
        if fds:
            socket.send_fds(control, [frame], fds)
        else:
            control.send(frame)
    except ConnectionError:  # EPIPE, ECONNRESET: the node's end is closed
        return False
    except OSError as exc:
        sys.stderr.write(f"asyncjobs zygote {os.getpid()}: cannot reach its node ({exc})\n")
        return False
    return True


def resolve(target: str) -> Any:
    """Import ``module:qualname`` and return the object it names."""
    module_name, _, qualname = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def load_jobs(jobs: dict[str, str]) -> JobTable:
    from ..jobs import JobDef, wants_context

    table: JobTable = {}
    for name, target in jobs.items():
        obj = resolve(target)
        if isinstance(obj, JobDef):
            table[name] = (obj.fn, obj.wants_context)
        elif callable(obj):
            table[name] = (obj, wants_context(obj))
        else:
            raise TypeError(f"{target} (job {name!r}) is a {type(obj).__name__}, not a function")
    return table


class Zygote:
    def __init__(self, control: socket.socket, config: dict[str, Any]) -> None:
        self.control = control
        self.pid = os.getpid()
        self.jobs = load_jobs(config["jobs"])
        self.teardowns = [resolve(target) for target in config["teardowns"]]
        self.env: dict[str, str] = config["env"]
        self.limits = WorkerLimits(**config["limits"])
        self.max_payload: int = config["max_payload"]
        self.workers: set[int] = set()

    def serve(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        selector = selectors.DefaultSelector()
        selector.register(self.control, selectors.EVENT_READ, "control")
        selector.register(wake_r, selectors.EVENT_READ, "children")
        while True:
            for key, _ in selector.select():
                if key.data == "children":
                    while len(os.read(wake_r, 512)) == 512:
                        pass
                    self.reap()
                    continue
                try:
                    data = self.control.recv(CONTROL_MAX_BYTES)
                except ConnectionResetError:
                    # The node closed its end with our notices unread: it is gone all the same.
                    data = b""
                if not data:
                    self.shutdown()
                header = decode_message(data)
                if header["op"] == "spawn":
                    self.spawn(header.get("ref"))
        # not reached

    def spawn(self, ref: Any) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError as exc:
            parent_end.close()
            child_end.close()
            if not send(self.control, {"op": "spawn_failed", "ref": ref, "error": str(exc)}):
                self.shutdown()
            return
        if pid == 0:
            self._become_worker(child_end)
        child_end.close()
        self.workers.add(pid)
        pidfd = os.pidfd_open(pid)
        try:
            sent = send(
                self.control, {"op": "spawned", "ref": ref, "pid": pid},
                [parent_end.fileno(), pidfd],
            )  # fmt: skip
        finally:
            parent_end.close()
            os.close(pidfd)
        if not sent:
            self.shutdown()  # the new worker included

    def _become_worker(self, sock: socket.socket) -> None:
        try:
            self.control.detach()  # harden() closes the fd; the object must not close fd 3 later
            fd = harden(sock.detach(), self.pid, self.env, self.limits)
            run_worker(
                socket.socket(fileno=fd), self.jobs, self.max_payload, self.limits.cpu_seconds,
                self.teardowns,
            )  # fmt: skip
        finally:
            os._exit(70)

    def reap(self) -> None:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return
            if info is None:
                return
            pid = info.si_pid
            if pid in self.workers:
                with contextlib.suppress(OSError):  # what the job forked dies with the worker
                    os.killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            if pid in self.workers:
                self.workers.discard(pid)
                code = os.waitstatus_to_exitcode(status)
                if not send(self.control, {"op": "exited", "pid": pid, "code": code}):
                    self.shutdown()

    def shutdown(self) -> None:
        for pid in self.workers:
            # A worker forked a moment ago may not lead its own group yet: kill it by pid too.
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(OSError):
                    kill(pid, signal.SIGKILL)
        os._exit(0)


def main(argv: list[str]) -> None:
    node_pid, fd = int(argv[1]), int(argv[2])
    die_with_parent(node_pid)
    prctl(PR_SET_CHILD_SUBREAPER, 1)  # orphans of a job's own children are reaped here
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the node's to handle
    control = socket.socket(fileno=fd)
    data = control.recv(CONTROL_MAX_BYTES)
    if not data:
        os._exit(0)
    config = decode_message(data)
    try:
        sys.path[:] = config["sys_path"]
        # Preloads first: one may set up what the jobs' modules need to import (django.setup()).
        for target in config["preloads"]:
            resolve(target)()
        zygote = Zygote(control, config)
        # What the preloads opened (a database connection) must not be inherited by a worker.
        for hook in zygote.teardowns:
            hook()
    except BaseException as exc:
        error = "".join(traceback.format_exception(exc))[-16_000:]
        send(control, {"op": "failed", "error": error, "message": str(exc)[:2000]})
        os._exit(1)
    # Everything loaded so far is permanent: the collector will never touch (and so never
    # dirty) those objects' pages, which is what keeps them shared with every worker.
    gc.collect()
    gc.freeze()
    if not send(control, {"op": "ready", "pid": os.getpid()}):
        os._exit(0)  # the node gave up waiting, or went away
    zygote.serve()


if __name__ == "__main__":
    main(sys.argv)
