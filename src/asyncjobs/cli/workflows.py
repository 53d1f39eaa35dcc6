"""``asyncjobs workflow show|cancel``: one workflow's state, or cancel its unfinished steps."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from ..errors import WorkflowNotFoundError
from ..jobs import coerce_job_id
from ..workflows import MAX_FAILURES_SHOWN, WorkflowStatus, status_from
from .common import EXIT_OK, CliError, _command, _open_store, _print_json

if TYPE_CHECKING:
    from .common import Subparsers


async def cmd_workflow(args: argparse.Namespace) -> int:
    try:
        workflow_id = coerce_job_id(args.id)
    except ValueError:
        raise CliError(
            f"{args.id!r} is not a workflow id (a UUID, as `app.submit` returns it)"
        ) from None
    async with _open_store(args) as store:
        if args.action == "cancel":
            if await store.workflow_info(workflow_id) is None:
                raise WorkflowNotFoundError(workflow_id)
            cancelled, stopping = await store.cancel_workflow(workflow_id, args.reason, time.time())
            print(
                f"workflow {workflow_id}: {cancelled} jobs cancelled, "
                f"{stopping} running jobs asked to stop"
            )
            return EXIT_OK
        info = await store.workflow_info(workflow_id)
        if info is None:
            raise WorkflowNotFoundError(workflow_id)
        status = status_from(info, await store.workflow_failures(workflow_id, MAX_FAILURES_SHOWN))
    if args.json:
        fields = {name: getattr(status, name) for name in status.__dataclass_fields__}
        _print_json({**fields, "failures": [f._asdict() for f in status.failures]})
    else:
        _print_workflow(status)
    return EXIT_OK


def _print_workflow(status: WorkflowStatus) -> None:
    name = f" ({status.name})" if status.name else ""
    print(f"workflow {status.id}{name}: {status.state}")
    print(f"created {status.created_at:%Y-%m-%d %H:%M:%S} UTC, {status.total} jobs")
    counts = [f"{state} {n}" for state, n in status.counts.items() if n]
    print("  " + (", ".join(counts) or "no jobs"))
    if status.failures:
        print("failed steps (cancelled dependents not listed):")
    for f in status.failures:
        why = f.reason or ""
        if f.error:
            why = f"{f.error.get('type', '')}: {f.error.get('message', '')}".strip(": ")
        print(
            f"  {f.step or '-'} [{f.name} {f.id}] {f.state}: {why.splitlines()[0] if why else ''}"
        )


def add_workflow(sub: Subparsers) -> None:
    """Register ``asyncjobs workflow`` and its actions."""
    p = sub.add_parser(
        "workflow",
        help="show or cancel a workflow",
        description="Show a workflow's state, its jobs counted by state and the steps that "
        "failed (with their errors), or cancel every step that has not finished.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="a workflow's state, counts and failed steps")
    show.add_argument("id", help="the workflow's id")
    show.add_argument("--json", action="store_true", help="print JSON")
    cancel = actions.add_parser("cancel", help="cancel every unfinished step of a workflow")
    cancel.add_argument("id", help="the workflow's id")
    cancel.add_argument("--reason", default="workflow cancelled", help="stored on each job")
    for each in actions.choices.values():
        _command(each, cmd_workflow)
