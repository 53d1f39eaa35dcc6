"""Settings of the Django project the integration tests run (tests/integration/test_django.py).

Where the database is comes from ``DJANGO_DB_*`` variables, which the tests set: the pool's
zygote loads these settings too, in an environment of its own, so ``ASYNCJOBS["worker_env"]``
passes those names on to it, as a real project that reads its settings from the environment
must.
"""

from __future__ import annotations

import json
import os

SECRET_KEY = "asyncjobs-tests-only"
DEBUG = False
ALLOWED_HOSTS: list[str] = []
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "asyncjobs.django",
    "shop",
]

DB_ENV = (
    "DJANGO_DB_ENGINE",
    "DJANGO_DB_NAME",
    "DJANGO_DB_HOST",
    "DJANGO_DB_PORT",
    "DJANGO_DB_USER",
    "DJANGO_DB_PASSWORD",
    "DJANGO_DB_APP_NAME",
    "DJANGO_ASYNCJOBS_SCHEMA",
    "DJANGO_ASYNCJOBS_JSON",
    "SHOP_BALLAST_MB",
)

if os.environ.get("DJANGO_DB_ENGINE", "postgresql") == "sqlite3":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("DJANGO_DB_NAME", "db.sqlite3"),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("DJANGO_DB_NAME", "asyncjobs_django"),
            "HOST": os.environ.get("DJANGO_DB_HOST", "127.0.0.1"),
            "PORT": os.environ.get("DJANGO_DB_PORT", ""),
            "USER": os.environ.get("DJANGO_DB_USER", "postgres"),
            "PASSWORD": os.environ.get("DJANGO_DB_PASSWORD", ""),
            # How the tests tell this project's connections apart in pg_stat_activity.
            "OPTIONS": {"application_name": os.environ.get("DJANGO_DB_APP_NAME", "shop")},
        }
    }

ASYNCJOBS = {
    "schema": os.environ.get("DJANGO_ASYNCJOBS_SCHEMA", "asyncjobs"),
    "queues": "default,orm=8",
    "workers_min": 8,
    "workers_max": 8,
    "poll_interval_s": 0.5,
    "heartbeat_interval_s": 0.5,
    "shutdown_grace_s": 5.0,
    "worker_env": DB_ENV,
    # Extra keys from the tests (a bad one, for instance), as JSON.
    **json.loads(os.environ.get("DJANGO_ASYNCJOBS_JSON", "{}")),
}
