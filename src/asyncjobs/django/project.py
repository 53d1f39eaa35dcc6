"""The project's App: built once, from the Django settings, with the hooks Django needs."""

from __future__ import annotations

import threading

from ..app import App
from ..errors import ConfigurationError
from ..settings import Settings
from . import hooks
from .conf import settings_from_django


class DjangoApp(App):
    """An ``App`` whose settings come from ``settings.ASYNCJOBS`` (see ``get_app``).

    It declares three hooks of its own: ``django.setup()`` as the pool's first preload hook,
    the closing of Django's connections after each isolated job, and on the node after each
    job ends.
    """

    def __init__(self, settings: Settings, no_dsn: str | None = None) -> None:
        super().__init__(settings=settings)
        self._no_dsn = no_dsn
        self.preload(hooks.setup_django)
        self.after_isolated_job(hooks.close_connections)
        self.on_event("job_finished")(hooks.close_node_connections)

    async def start(self, *, node: bool = True) -> None:
        """``App.start``; without a DSN, raises ``ConfigurationError`` saying why none was
        derived from ``DATABASES``."""
        if self.settings.dsn is None and self._no_dsn is not None:
            raise ConfigurationError("dsn", None, self._no_dsn)
        await super().start(node=node)


_lock = threading.Lock()
_app: DjangoApp | None = None


def get_app() -> DjangoApp:
    """The project's App, built on first use from ``settings.ASYNCJOBS``; the same one after.

    Declare the jobs on it in each Django app's ``jobs.py`` (imported when Django starts, like
    ``admin.py``)::

        from asyncjobs.django import get_app

        app = get_app()

        @app.job
        async def send_receipt(order_id: int) -> None: ...

    Raises ``ConfigurationError`` for an unknown key or a value that cannot work; a missing
    DSN is only an error when the app starts.
    """
    global _app  # noqa: PLW0603 - the one App of this process's Django project
    if _app is None:
        with _lock:
            if _app is None:
                from django.conf import settings

                found = settings_from_django(
                    getattr(settings, "ASYNCJOBS", None), getattr(settings, "DATABASES", None)
                )
                _app = DjangoApp(found.settings, found.no_dsn)
    return _app


def autodiscover_jobs() -> None:
    """Import the ``jobs`` module of every installed Django app that has one, so that their
    jobs register on the project's App.

    Called by the ``asyncjobs.django`` app config when Django starts (``django.setup()``),
    in every process: web servers, ``manage.py`` commands, the node, and the pool's zygote.
    """
    from django.utils.module_loading import autodiscover_modules

    autodiscover_modules("jobs")
