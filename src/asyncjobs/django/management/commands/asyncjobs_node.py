"""``python manage.py asyncjobs_node``: run a node of the project's App until SIGTERM.

The same runner and flags as ``asyncjobs node`` (``asyncjobs.cli.node.run_node``); the app is
``get_app()``, its settings ``settings.ASYNCJOBS``, and its jobs were imported by
``django.setup()``, which ``manage.py`` ran before this command, so coroutine jobs can use the
async ORM.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ....cli import run_command, settings_changes
from ....cli.common import add_node_flags
from ....cli.node import run_node
from ...project import get_app

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"  # as `asyncjobs node` logs
LOG_LEVELS = {0: logging.WARNING, 1: logging.INFO}  # by --verbosity; 2 and 3: DEBUG


class Command(BaseCommand):
    help = (
        "Run an asyncjobs node for this project: claim and run jobs until SIGTERM or SIGINT "
        "(running jobs then get --shutdown-grace seconds; a second signal cancels them)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_node_flags(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        if not logging.getLogger().handlers:  # unless LOGGING configured the root logger
            level = LOG_LEVELS.get(options["verbosity"], logging.DEBUG)
            logging.basicConfig(level=level, format=LOG_FORMAT)
        code = run_command(_node, argparse.Namespace(**options))
        if code:
            sys.exit(code)  # run_command printed why, as `asyncjobs node` does


async def _node(args: argparse.Namespace) -> int:
    app = get_app()
    app.configure(**settings_changes(args))
    return await run_node(app, args.dashboard_port, args.dashboard_host)
