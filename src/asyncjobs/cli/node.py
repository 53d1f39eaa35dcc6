"""``asyncjobs node`` (run a node until SIGTERM) and ``asyncjobs migrate``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Coroutine
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio

from .common import (
    EXIT_OK,
    _add_app_flags,
    _add_settings_flags,
    _command,
    _configured_app,
    _open_store,
)

if TYPE_CHECKING:
    from ..app import App
    from .common import Subparsers

# Not __name__: the node's log lines have always been named asyncjobs.cli, and filters match it.
log = logging.getLogger("asyncjobs.cli")


async def cmd_node(args: argparse.Namespace) -> int:
    return await run_node(_configured_app(args), args.dashboard_port, args.dashboard_host)


async def run_node(
    app: App, dashboard_port: int | None = None, dashboard_host: str = "127.0.0.1"
) -> int:
    """Run ``app``'s node until SIGTERM or SIGINT; a second signal cancels running jobs.

    What ``asyncjobs node`` runs, and ``manage.py asyncjobs_node`` (``asyncjobs.django``).
    With ``dashboard_port``, the dashboard is served from the same process.
    """
    stop = anyio.Event()
    signals_seen = 0

    def on_signal(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        name = signal.Signals(signum).name
        if signals_seen == 1:
            log.info(
                "%s received: stopping (no new jobs; running jobs get %g s to finish)",
                name,
                app.settings.shutdown_grace_s,
            )
            stop.set()
        else:
            log.warning("%s received again: cancelling running jobs now", name)
            if app.node is not None:
                app.node.stop(grace=0.0)

    dashboard = None
    if dashboard_port is not None:  # checked before anything starts
        from ..dashboard.cli import load_server

        dashboard = load_server(None, dashboard_host, dashboard_port, "--dashboard-port")
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        await app.start()
        node = app.node
        async with anyio.create_task_group() as tg:
            if dashboard is not None:
                serve, token, sock = dashboard
                url = await tg.start(partial(serve, app.store, token, sock=sock))
                log.info("dashboard on %s", url)
            await _wait_any(stop.wait(), node.wait_stopped())
            tg.cancel_scope.cancel()
    finally:
        await app.stop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    return EXIT_OK


async def _wait_any(*awaitables: Coroutine[Any, Any, Any]) -> None:
    async with anyio.create_task_group() as tg:

        async def run(aw: Coroutine[Any, Any, Any]) -> None:
            await aw
            tg.cancel_scope.cancel()

        for aw in awaitables:
            tg.start_soon(run, aw)


def add_node(sub: Subparsers) -> None:
    """Register ``asyncjobs node``, with the node's flags."""
    p = sub.add_parser(
        "node",
        help="run a node: claim and run jobs until SIGTERM",
        description="Run a node. It migrates the schema, then claims and runs "
        "jobs from its queues. SIGTERM or SIGINT stops it gracefully (no new "
        "jobs; running jobs get --shutdown-grace seconds); a second signal "
        "cancels running jobs at once.",
    )
    _add_app_flags(p, required=True)
    _add_settings_flags(p, node=True)
    p.set_defaults(func=cmd_node)


async def cmd_migrate(args: argparse.Namespace) -> int:
    async with _open_store(args) as store:
        applied = await store.migrate()
    where = store.description
    print(f"applied {', '.join(applied)} to {where}" if applied else f"{where} is up to date")
    return EXIT_OK


def add_migrate(sub: Subparsers) -> None:
    """Register ``asyncjobs migrate``."""
    p = sub.add_parser(
        "migrate",
        help="create or upgrade the tables (safe to repeat)",
        description="Apply pending schema migrations. Safe to run on every "
        "deploy and from several machines at once.",
    )
    _command(p, cmd_migrate)
