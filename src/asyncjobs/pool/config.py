"""What the pool is told: built from the settings and the app's isolated jobs and preloads."""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError, JobDefinitionError
from ..jobs import JobDef
from ..settings import Settings
from .sandbox import WorkerLimits, clean_environment


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Everything the pool needs to start its zygote and size its workers."""

    jobs: dict[str, str]  # job name -> "module:qualname" the zygote imports
    preloads: list[str]  # "module:qualname" of each preload hook, in declaration order
    teardowns: list[str]  # "module:qualname" of each after_isolated_job hook, in order
    min_workers: int
    max_workers: int
    idle_timeout_s: float
    max_jobs: int
    max_uss_bytes: int | None
    start_timeout_s: float
    max_payload: int
    limits: WorkerLimits
    env: dict[str, str] = field(repr=False)


def pool_config(
    settings: Settings,
    registry: Mapping[str, JobDef[Any, Any]],
    preloads: list[Callable[[], Any]],
    environ: Mapping[str, str] | None = None,
    *,
    teardowns: Sequence[Callable[[], Any]] = (),
) -> PoolConfig | None:
    """The pool for these isolated jobs, or None when the app declares none."""
    isolated = {name: d for name, d in registry.items() if d.isolated}
    if not isolated:
        return None
    jobs = {name: _target(name, d.fn) for name, d in isolated.items()}
    hooks = [_target(f"preload hook {_name(h)}", h) for h in preloads]
    after = [_target(f"after_isolated_job hook {_name(h)}", h) for h in teardowns]
    uid = gid = None
    if settings.worker_user:
        try:
            entry = pwd.getpwnam(settings.worker_user)
        except KeyError:
            raise ConfigurationError(
                "worker_user", settings.worker_user, "no such user on this machine"
            ) from None
        uid, gid = entry.pw_uid, entry.pw_gid
    limits = WorkerLimits(
        address_space_bytes=settings.worker_address_space_bytes or None,
        cpu_seconds=settings.worker_cpu_seconds or None,
        open_files=settings.worker_open_files,
        processes=settings.worker_processes or None,
        uid=uid,
        gid=gid,
    )
    return PoolConfig(
        jobs=jobs,
        preloads=hooks,
        teardowns=after,
        min_workers=settings.workers_min,
        max_workers=settings.workers_max,
        idle_timeout_s=settings.worker_idle_timeout_s,
        max_jobs=settings.max_jobs_per_worker,
        max_uss_bytes=settings.max_worker_uss_bytes or None,
        start_timeout_s=settings.zygote_start_timeout_s,
        max_payload=settings.max_payload_bytes,
        limits=limits,
        env=clean_environment(os.environ if environ is None else environ, settings.worker_env),
    )


def _name(hook: Callable[..., Any]) -> str:
    return repr(getattr(hook, "__name__", hook))


def _target(what: str, fn: Callable[..., Any]) -> str:
    module = getattr(fn, "__module__", None)
    if module == "__main__":
        main = getattr(sys.modules.get("__main__"), "__spec__", None)
        if main is not None and main.name:
            module = main.name  # run with `python -m pkg.mod`: importable under its real name
        else:
            raise JobDefinitionError(
                what,
                "it is defined in the script being run (__main__), which the pool's zygote "
                "cannot import. Move it into a module and import that module from the script",
            )
    return f"{module}:{fn.__qualname__}"
