"""The Django app config of ``asyncjobs.django``: the project's App built, its jobs imported,
and a mistake in ``settings.ASYNCJOBS`` reported by Django's system checks."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig

from ..errors import ConfigurationError

CHECK_ID = "asyncjobs.E001"


class AsyncJobsConfig(AppConfig):
    """``INSTALLED_APPS = [..., "asyncjobs.django"]``: when Django starts, build the project's
    App from ``settings.ASYNCJOBS`` and import each app's ``jobs`` module.

    A mistake in ``settings.ASYNCJOBS`` (an unknown key, a value that cannot work) does not
    raise here, where Django would show it as a traceback out of ``django.setup()``: the
    ``asyncjobs`` system check reports it as one sentence, and stops every command that runs
    the checks (``check``, ``migrate``, ``runserver``, ``asyncjobs_node``). Until it is fixed,
    no ``jobs`` module is imported, and ``get_app()`` raises the same ``ConfigurationError``.
    """

    name = "asyncjobs.django"
    label = "asyncjobs"
    verbose_name = "asyncjobs"

    def ready(self) -> None:
        from django.core import checks

        from .project import autodiscover_jobs, get_app

        checks.register(check_settings, "asyncjobs")
        try:
            get_app()
        except ConfigurationError:
            return  # check_settings reports it; each jobs.py would raise it again on import
        autodiscover_jobs()


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """Django system check: ``settings.ASYNCJOBS`` makes valid asyncjobs settings."""
    from django.core import checks

    from .project import get_app

    try:
        get_app()
    except ConfigurationError as exc:
        return [checks.Error(str(exc), id=CHECK_ID)]
    return []
