"""``asyncjobs schedules list|pause|resume``: the schedules the nodes have declared."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..clock import to_datetime
from ..errors import ScheduleNotFoundError
from ..store.base import ScheduleRecord
from .common import EXIT_OK, _command, _open_store, _print_json

if TYPE_CHECKING:
    from .common import Subparsers


async def cmd_schedules(args: argparse.Namespace) -> int:
    async with _open_store(args) as store:
        if args.action == "list":
            records = await store.list_schedules()
            if args.json:
                _print_json([r._asdict() for r in records])
            else:
                _print_schedules(records)
            return EXIT_OK
        paused = args.action == "pause"
        if not await store.pause_schedule(args.name, paused, time.time()):
            raise ScheduleNotFoundError(args.name)
        print(f"schedule {args.name} {'paused' if paused else 'resumed'}")
        return EXIT_OK


def _print_schedules(records: Sequence[ScheduleRecord]) -> None:
    if not records:
        print("no schedules (nodes record theirs when they start)")
        return
    header = ("NAME", "JOB", "WHEN", "STATE", "NEXT FIRE (UTC)", "LAST FIRE (UTC)", "RUNS",
              "MISSED", "SKIPPED")  # fmt: skip
    rows = [header]
    for r in records:
        rows.append(
            (r.name, r.job, r.spec, "paused" if r.paused else "active", _utc(r.next_fire_at),
             _utc(r.last_fire_at), str(r.fired), str(r.missed), str(r.skipped))
        )  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _utc(ts: float | None) -> str:
    if ts is None:
        return "-"
    return to_datetime(ts).strftime("%Y-%m-%d %H:%M:%S")


def add_schedules(sub: Subparsers) -> None:
    """Register ``asyncjobs schedules`` and its actions."""
    p = sub.add_parser(
        "schedules",
        help="list, pause or resume recurring schedules",
        description="Show the schedules the nodes have declared (next and last fire, runs, "
        "missed and skipped fire times), or pause and resume one. Resuming does not catch up "
        "the fire times of the pause.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="every schedule and its state")
    listing.add_argument("--json", action="store_true", help="print JSON")
    for action in ("pause", "resume"):
        one = actions.add_parser(action, help=f"{action} a schedule by name")
        one.add_argument("name", help="the schedule's name")
    for each in actions.choices.values():
        _command(each, cmd_schedules)
