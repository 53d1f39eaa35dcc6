"""``serve``: the dashboard over HTTP (uvicorn), inside the caller's event loop.

A node serves it next to its jobs, ``asyncjobs dashboard`` on its own. Either way the signals
stay the caller's: uvicorn is told not to install handlers, and stops when the task serving it
is cancelled, after letting the requests in flight finish (at most ``GRACE_S``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import anyio
import uvicorn

from ..errors import ConfigurationError
from ..store.base import Store
from .app import DEFAULT_TITLE, create_app
from .defaults import DEFAULT_HOST, DEFAULT_PORT

log = logging.getLogger("asyncjobs.dashboard")

GRACE_S = 5  # seconds the requests in flight get to finish when the dashboard stops
BACKLOG = 128


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the caller (a node, or the CLI) owns SIGINT and SIGTERM


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: any free port); ``ConfigurationError`` if the
    address cannot be had."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise ConfigurationError("dashboard_host", host, f"it cannot be resolved ({exc})") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            "dashboard_port", port, f"cannot listen on {host}:{port} ({exc.strerror})"
        ) from exc
    sock.setblocking(False)
    return sock


async def serve(
    store: Store,
    token: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    title: str = DEFAULT_TITLE,
    sock: socket.socket | None = None,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the dashboard for ``store`` on host:port until cancelled.

    Reports its URL through ``task_status`` (``url = await tg.start(serve, store, token)``) once
    the port is listening, so ``port=0`` picks a free one. Raises ``ConfigurationError`` for a
    token that cannot protect it or an address that cannot be had. ``sock``: a socket already
    listening (``listen(host, port)``), for callers that want a busy port to fail before
    anything else starts; it is closed when serving ends.
    """
    app = create_app(store, token, title=title)
    sock = sock if sock is not None else listen(host, port)
    try:
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
        url = f"http://{shown}:{bound[1]}/"
        config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # the process's logging stays as the caller set it up
            access_log=False,
            server_header=False,
            timeout_graceful_shutdown=GRACE_S,
        )
        server = _Server(config)
        running = asyncio.create_task(server.serve(sockets=[sock]))
    except BaseException:
        sock.close()
        raise
    log.info("dashboard on %s", url)
    task_status.started(url)
    try:
        await asyncio.shield(running)
    finally:
        server.should_exit = True
        with anyio.CancelScope(shield=True):
            await running
