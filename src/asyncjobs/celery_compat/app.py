"""``Celery``: an asyncjobs ``App`` that declares and calls its jobs the way Celery does.

It *is* an App: ``asyncjobs node --app proj.celery:app`` runs its tasks, ``async with app:``
embeds them, and every asyncjobs method works beside the Celery-shaped ones. What Celery
configures with a broker and a result backend, asyncjobs keeps in Postgres
(``ASYNCJOBS_DSN``), so ``broker=`` and ``backend=`` are refused with a sentence saying so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from typing import Any, overload

from ..app import App
from ..jobs import JobId
from ..settings import Settings
from . import results
from .beat import BeatSchedule, crontab, declare, redeclare
from .bridge import SyncBridge
from .options import APP_OPTIONS, TASK_OPTIONS, CeleryOptionError, present, refuse
from .tasks import Task

TASK_KNOWN = (
    "name", "bind", "queue", "max_retries", "default_retry_delay", "autoretry_for",
    "retry_backoff", "retry_backoff_max", "retry_jitter", "time_limit", "soft_time_limit",
    "rate_limit", "priority",
)  # fmt: skip
CONF_KNOWN = (
    "beat_schedule", "timezone", "enable_utc", "task_default_queue", "worker_concurrency",
    "result_expires", "task_serializer", "result_serializer", "accept_content",
)  # fmt: skip
DEFAULT_RETRY_DELAY_S = 180.0  # Celery's default_retry_delay
RETRY_BACKOFF_MAX_S = 600.0  # Celery's retry_backoff_max


class Celery(App):
    """An App with Celery's ways: ``@app.task``, ``task.delay()``, ``app.conf``,
    ``app.AsyncResult(id)``, ``add_periodic_task``. ``main`` names the project (used in task
    names, as Celery does); ``include`` lists modules to import so their tasks register;
    any other keyword is an asyncjobs setting (``dsn=``, ``concurrency=``...)."""

    def __init__(
        self,
        main: str | None = None,
        *,
        include: Iterable[str] = (),
        settings: Settings | None = None,
        **options: Any,
    ) -> None:
        refuse("Celery()", [k for k in options if k in APP_OPTIONS], APP_OPTIONS, ())
        if include:
            options.setdefault("plugins", tuple(include))
        super().__init__(settings, **options)
        self.main = main
        self.timezone = "UTC"
        self.default_queue = "default"
        self.tasks: dict[str, Task] = {}  # Celery's app.tasks: name -> task
        self.beat: dict[str, Mapping[str, Any]] = {}  # the beat entries declared, by name
        self._autodiscover: list[tuple[Any, str]] = []  # autodiscover_tasks, done at start
        self.conf = Conf(self)
        self.bridge = SyncBridge(self)

    async def start(self, *, node: bool = True) -> None:
        for packages, related_name in self._autodiscover:
            _import_related(packages, related_name)
        await super().start(node=node)
        self.bridge.home = asyncio.get_running_loop()  # blocking calls from other threads run here

    async def stop(self, *, grace: float | None = None) -> None:
        await self.bridge.flush()  # jobs delay() returned in this loop are written first
        self.bridge.home = None
        await super().stop(grace=grace)

    # -- declaring ---------------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[..., Any], /) -> Task: ...

    @overload
    def task(self, fn: None = None, /, **options: Any) -> Callable[[Callable[..., Any]], Task]: ...

    def task(
        self, fn: Callable[..., Any] | None = None, /, **options: Any
    ) -> Task | Callable[[Callable[..., Any]], Task]:
        """Declare a task: ``async def`` ones run on the node's event loop, plain ``def``
        ones in its process pool. Options: ``name`` (default ``module.function``, as in
        Celery), ``bind``, ``queue``, ``max_retries`` (3), ``default_retry_delay`` (180 s),
        ``autoretry_for``, ``retry_backoff``, ``retry_backoff_max`` (600 s),
        ``retry_jitter`` (True), ``time_limit``, ``soft_time_limit``, ``rate_limit``
        (``"10/m"``), ``priority``. Any other Celery option raises a sentence."""
        refuse("@app.task()", present(options), TASK_OPTIONS, TASK_KNOWN)

        def register(f: Callable[..., Any]) -> Task:
            name = options.get("name") or f"{f.__module__}.{f.__name__}"
            task = Task(
                self, f, name=name, queue=options.get("queue"),
                bind=bool(options.get("bind", False)),
                max_retries=options.get("max_retries", 3),
                default_retry_delay=float(
                    options.get("default_retry_delay", DEFAULT_RETRY_DELAY_S)),
                autoretry_for=tuple(options.get("autoretry_for") or ()),
                retry_backoff=options.get("retry_backoff", False),
                retry_backoff_max=float(options.get("retry_backoff_max", RETRY_BACKOFF_MAX_S)),
                retry_jitter=bool(options.get("retry_jitter", True)),
                time_limit=options.get("time_limit"),
                soft_time_limit=options.get("soft_time_limit"),
                rate_limit=options.get("rate_limit"), priority=options.get("priority") or 0,
            )  # fmt: skip
            self.tasks[name] = task
            return task

        return register(fn) if fn is not None else register

    def add_periodic_task(
        self,
        schedule: crontab | timedelta | float,
        sig: Any,
        *,
        name: str | None = None,
        **options: Any,
    ) -> None:
        """Fire ``sig`` (a ``task.s(...)``) on ``schedule``: a ``crontab``, or seconds."""
        entry = {"task": sig.task.name, "schedule": schedule, "args": sig.args,
                 "kwargs": sig.kwargs, "options": options or sig.options}  # fmt: skip
        declare(self, name or f"{sig.task.name}{tuple(sig.args)!r}", entry)

    def config_from_object(
        self, obj: Any, *, namespace: str | None = None, silent: bool = False, **_: Any
    ) -> None:
        """Read Celery settings from an object or a module (``"proj.settings"``, or
        ``"django.conf:settings"``). With ``namespace="CELERY"``, the names that start with
        ``CELERY_`` are read, without it (``CELERY_TIMEZONE`` is ``timezone``); without a
        namespace, the names of Celery settings. Each goes through ``app.conf``: mapped, or refused
        with a sentence (``CELERY_BROKER_URL`` says to set ASYNCJOBS_DSN instead)."""
        if isinstance(obj, str):
            try:
                obj = _load(obj)
            except ImportError:
                if silent:
                    return
                raise
        prefix = f"{namespace}_" if namespace else None
        for name in dir(obj):
            if prefix is not None:
                if not name.startswith(prefix):
                    continue
                key = name[len(prefix) :].lower()
            elif name in CONF_KNOWN or name in APP_OPTIONS:  # not its imports and helpers
                key = name
            else:
                continue
            setattr(self.conf, key, getattr(obj, name))

    def autodiscover_tasks(
        self, packages: Any = None, related_name: str = "tasks", force: bool = False
    ) -> None:
        """Import ``<package>.tasks`` of each package (by default, of each Django app in
        ``INSTALLED_APPS``) when the app starts, so their tasks register; ``force=True``
        imports them now."""
        if force:
            _import_related(packages, related_name)
        else:
            self._autodiscover.append((packages, related_name))

    # -- calling -----------------------------------------------------------------------------

    def AsyncResult(self, task_id: JobId | str) -> results.AsyncResult:  # Celery's name
        return results.AsyncResult(task_id, self)

    def send_task(
        self, name: str, args: Any = None, kwargs: Mapping[str, Any] | None = None, **options: Any
    ) -> results.AsyncResult:
        """Enqueue a task by name (it must be registered on this app)."""
        return self._task(name).apply_async(args, kwargs, **options)

    def _task(self, name: str) -> Task:
        self._definition(name)  # raises UnknownJobError, naming the registered ones
        task = self.tasks.get(name)
        if task is None:
            raise TypeError(
                f"job {name!r} was declared with @app.job, not @app.task; enqueue it with "
                "app.enqueue() (a Celery-style call needs a task)"
            )
        return task

    def close(self) -> None:
        """Stop the synchronous bridge, if it was used (also done at exit)."""
        self.bridge.close()


class Conf:
    """``app.conf``: the Celery settings that map onto asyncjobs. ``beat_schedule`` declares
    schedules; ``timezone`` is their time zone; ``task_default_queue`` the tasks' queue;
    ``worker_concurrency`` and ``result_expires`` set ``concurrency`` and ``retention_s``."""

    def __init__(self, celery: Celery) -> None:
        object.__setattr__(self, "_celery", celery)

    def update(self, values: Mapping[str, Any] | None = None, **more: Any) -> None:
        for key, value in {**(values or {}), **more}.items():
            setattr(self, key, value)

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __setitem__(self, key: str, value: Any) -> None:
        setattr(self, key, value)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)

    def __setattr__(self, key: str, value: Any) -> None:
        celery: Celery = self.__dict__["_celery"]
        refuse("app.conf", [key], _CONF_REFUSED, CONF_KNOWN)
        if key == "beat_schedule":
            value = BeatSchedule(celery, value)  # replaces what was declared before
        elif key == "timezone":
            celery.timezone = str(value)
            for name, entry in list(celery.beat.items()):  # their crontabs are in it
                redeclare(celery, name, entry)
        elif key == "task_default_queue":
            users = [t.name for t in celery.tasks.values() if t.default_queued]
            if users and str(value) != celery.default_queue:
                raise CeleryOptionError(
                    "app.conf", key,
                    f"it is read when a task is declared, and {len(users)} already are on "
                    f"{celery.default_queue!r} ({', '.join(users[:3])}); set it before the "
                    "tasks are declared, or give each task queue=",
                )  # fmt: skip
            celery.default_queue = str(value)
        elif key == "worker_concurrency":
            celery.configure(concurrency=value)
        elif key == "result_expires":
            seconds = value.total_seconds() if isinstance(value, timedelta) else value
            celery.configure(retention_s=float(seconds))
        elif key in ("task_serializer", "result_serializer", "accept_content"):
            values = [value] if isinstance(value, str) else list(value)
            if values != ["json"]:
                raise CeleryOptionError("app.conf", key, "payloads are always JSON: use 'json'")
        elif key == "enable_utc" and value is not True:
            raise CeleryOptionError("app.conf", key, "times are UTC; set timezone= for crontabs")
        object.__setattr__(self, key, value)


# Settings whose only accepted value is the asyncjobs one are checked above; the others are
# refused with what to use instead.
_CONF_REFUSED = {k: v for k, v in APP_OPTIONS.items() if k not in CONF_KNOWN}


def _load(path: str) -> Any:
    """``"module"`` or ``"module:attribute"``."""
    import importlib

    module_name, _, attribute = path.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def _import_related(packages: Any, related_name: str) -> None:
    """Import ``<package>.<related_name>`` of each package that has one."""
    import importlib
    import importlib.util

    if callable(packages):
        packages = packages()
    if packages is None:
        from django.conf import settings  # Celery's default: the Django apps

        packages = settings.INSTALLED_APPS
    for package in packages:
        name = f"{package}.{related_name}"
        try:
            found = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            found = None
        if found is not None:
            importlib.import_module(name)
