"""The hooks a ``DjangoApp`` declares: Django loaded in the pool's zygote, and Django's database
connections closed where one job must not leave them to the next.

Connections are per thread in Django. In a pool worker, a sync job's ORM calls run in the
worker's main thread, where ``close_connections`` runs after each job. On the node, every async
ORM call of every coroutine job runs in one thread (asgiref's thread-sensitive executor, as for
any async code outside a request), over that thread's connections; ``close_node_connections``
checks them there after jobs end.
"""

from __future__ import annotations

import os
import time

from ..errors import ConfigurationError
from ..node.hooks import Event

_zygote_pid: int | None = None  # set by setup_django, which runs in the zygote only
_node_checked_at = 0.0  # epoch seconds when close_node_connections last began a check


def setup_django() -> None:
    """Preload hook: ``django.setup()`` in the pool's zygote, before any worker is forked.

    It loads the settings, every installed app, its models and its ``jobs`` module, so that
    each worker shares them copy-on-write instead of loading them again.
    """
    global _zygote_pid  # noqa: PLW0603 - set once, in the zygote
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        raise ConfigurationError(
            "DJANGO_SETTINGS_MODULE",
            None,
            "the process pool loads the Django project named by DJANGO_SETTINGS_MODULE, which "
            "is not set in the node's environment (manage.py sets it; settings.configure() "
            "cannot be repeated in the pool's processes)",
        )
    import django

    django.setup()
    _zygote_pid = os.getpid()


def close_connections() -> None:
    """after_isolated_job hook: Django's database connections, after each isolated job.

    In a worker, as Django does after each request (``close_old_connections``): a connection
    is closed when it is older than ``CONN_MAX_AGE`` (so always with the default, 0), when
    an error left it unusable, or when the job left autocommit changed. In the zygote, once
    after the preload hooks, every connection is closed: a worker must never inherit one.
    """
    from django.db import close_old_connections, connections

    if os.getpid() == _zygote_pid:
        connections.close_all()
    else:
        close_old_connections()


async def close_node_connections(event: Event) -> None:
    """Lifecycle hook (``job_finished``) on the node: the async ORM's connections, checked as
    Django does after a request (``close_old_connections``) in the thread that holds them.

    Jobs end faster than a check can run, so one check covers every job that ended before it
    began.
    """
    global _node_checked_at  # noqa: PLW0603 - one node per process
    if event.at <= _node_checked_at:
        return
    _node_checked_at = time.time()
    from asgiref.sync import sync_to_async
    from django.db import close_old_connections

    await sync_to_async(close_old_connections)()
