"""Django integration (``pip install asyncjobs[django]``), an installable Django app.

``INSTALLED_APPS = [..., "asyncjobs.django"]``, then:

- ``settings.ASYNCJOBS``: a dict of asyncjobs settings (``{"concurrency": 200, ...}``); without
  a ``dsn``, the one of ``DATABASES["default"]`` when it is PostgreSQL.
- ``get_app()``: the project's App, built once from those settings. Declare jobs on it in each
  Django app's ``jobs.py``, which is imported when Django starts.
- ``python manage.py asyncjobs_node``: run a node, with the flags of ``asyncjobs node``.
- A mistake in ``settings.ASYNCJOBS`` is reported by Django's system checks
  (``asyncjobs.E001``), as one sentence, and raised by ``get_app()``.
- Isolated jobs run in pool workers forked from a zygote that called ``django.setup()``, so
  they share the loaded project copy-on-write; Django's connections are closed after each job.

See "Django" in the README.
"""

from __future__ import annotations

from .conf import dsn_from_database, settings_from_django
from .project import DjangoApp, autodiscover_jobs, get_app

__all__ = ["DjangoApp", "autodiscover_jobs", "dsn_from_database", "get_app", "settings_from_django"]
