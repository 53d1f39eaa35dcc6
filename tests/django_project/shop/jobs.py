"""The shop's jobs, declared on the project's App (imported when Django starts)."""

from __future__ import annotations

import os
import time
from decimal import Decimal
from typing import Any

from django.db import connection, connections

from asyncjobs.django import get_app

from .models import Order

app = get_app()
WARM_UP_RUNS = 20  # more than the calls after which Python specialises a function


@app.job(isolated=True, queue="orm", timeout=60)
def mark_paid(order_id: int, wait_for_paid: int = 0, wait_s: float = 20.0) -> dict[str, Any]:
    """Mark an order paid with the sync ORM, in a pool worker.

    With ``wait_for_paid``, wait (up to ``wait_s``) until that many orders are paid, so that
    that many jobs are seen running at once, each in a worker of its own.
    """
    open_before = sum(c.connection is not None for c in connections.all(initialized_only=True))
    updated = Order.objects.filter(pk=order_id).update(status="paid")
    deadline = time.monotonic() + wait_s
    while Order.objects.filter(status="paid").count() < wait_for_paid:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {wait_for_paid} orders were paid after {wait_s} s")
        time.sleep(0.02)
    return {
        "pid": os.getpid(),
        "updated": updated,
        "open_before": open_before,
        "backend_pid": connection.connection.info.backend_pid,
    }


@app.job
async def create_order(total: str) -> dict[str, Any]:
    """Create an order with the async ORM, on the node's event loop, and read it back."""
    order = await Order.objects.acreate(total=Decimal(total))
    await Order.objects.filter(pk=order.pk).aupdate(status="confirmed")
    again = await Order.objects.aget(pk=order.pk)
    return {"id": again.pk, "total": str(again.total), "status": again.status}


@app.preload
def warm_orm() -> None:
    """Preload hook (after ``django.setup()``): run the jobs' ORM code in the zygote first.

    Python specialises a function's bytecode in place once it has run a few times, and the
    ORM caches what it computed (the connection's features, compiled lookups): done once here,
    every worker shares the result instead of writing its own copy of those pages. The
    connection this opens is closed in the zygote before any worker is forked.
    """
    for _ in range(WARM_UP_RUNS):
        Order.objects.filter(pk=0).update(status="new")
        Order.objects.filter(status="paid").count()
