"""``asyncjobs dashboard``: serve the web dashboard until SIGINT or SIGTERM.

This module imports nothing of the dashboard's extra, so ``asyncjobs --help`` works without
it; the command itself says which extra to install.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import anyio

from .defaults import DEFAULT_HOST, DEFAULT_PORT, TOKEN_ENV

EXTRA_MODULES = ("starlette", "jinja2", "uvicorn")  # what asyncjobs[dashboard] installs

Command = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    register: Callable[[argparse.ArgumentParser, Command], None],
) -> None:
    """Add ``dashboard`` to the ``asyncjobs`` parser; ``register`` adds the common flags."""
    p = sub.add_parser(
        "dashboard",
        help="serve the web dashboard (needs asyncjobs[dashboard])",
        description="Serve the web dashboard: queues, nodes, throughput, jobs with filters, "
        "a job's traceback, workflows, schedules; cancel and retry jobs. Every request needs "
        f"the token (from --token or {TOKEN_ENV}; the variable keeps it out of `ps`), as "
        "'Authorization: Bearer <token>' or through the login form.",
    )
    p.add_argument(
        "--host", default=DEFAULT_HOST, help="address to listen on (default %(default)s)"
    )
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s; 0: any free)"
    )
    p.add_argument("--token", help=f"the token to require (env {TOKEN_ENV}); 16+ characters")
    register(p, cmd_dashboard)


def load_server(
    token: str | None, host: str, port: int, flag: str = "--port"
) -> tuple[Any, str, Any]:
    """The ``serve`` function, the checked token and a socket listening on host:port, or a
    ``CliError`` that says what to do (install the extra, give a token, free the port)."""
    from ..cli.common import CliError

    try:
        from .auth import check_token
        from .server import listen, serve
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in EXTRA_MODULES:
            raise
        raise CliError(
            f"the dashboard needs its extra: pip install 'asyncjobs[dashboard]' ({exc})"
        ) from None
    if not 0 <= port <= 65535:
        raise CliError(f"{flag} {port} is not a port (0 to 65535)")
    checked = check_token(token or os.environ.get(TOKEN_ENV))
    return serve, checked, listen(host, port)  # a busy port fails here, as one sentence


async def cmd_dashboard(args: argparse.Namespace) -> int:
    from ..cli.common import EXIT_OK, _open_store

    serve, token, sock = load_server(args.token, args.host, args.port)
    stop = anyio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        async with _open_store(args) as store, anyio.create_task_group() as tg:
            url = await tg.start(partial(serve, store, token, sock=sock))
            print(f"asyncjobs dashboard on {url} (Ctrl-C stops it)", flush=True)
            await stop.wait()
            tg.cancel_scope.cancel()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return EXIT_OK
