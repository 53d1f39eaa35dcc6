"""Pool settings and the worker environment: explicit limits, and no secrets (DESIGN §7)."""

from __future__ import annotations

import pytest

from asyncjobs import App, ConfigurationError, Settings
from asyncjobs.errors import JobDefinitionError
from asyncjobs.pool.config import pool_config
from asyncjobs.pool.sandbox import ENV_FIXED, clean_environment


def test_the_clean_environment_keeps_only_allowlisted_names_and_pins_thread_counts() -> None:
    source = {
        "PATH": "/usr/bin", "LANG": "C.UTF-8", "ASYNCJOBS_DSN": "postgresql://u:pw@db/x",
        "DATABASE_URL": "postgresql://u:pw@db/x", "AWS_SECRET_ACCESS_KEY": "k", "HOME": "/root",
        "MODEL_DIR": "/models", "OPENBLAS_NUM_THREADS": "64",
    }  # fmt: skip
    env = clean_environment(source, ["MODEL_DIR"])
    assert env == {"PATH": "/usr/bin", "LANG": "C.UTF-8", "MODEL_DIR": "/models", **ENV_FIXED}
    assert env["OPENBLAS_NUM_THREADS"] == "1"


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"workers_min": 5, "workers_max": 2}, "larger than workers_max"),
        ({"workers_max": 0}, "between 1"),
        ({"worker_env": ("ASYNCJOBS_DSN",)}, "never reach pool workers"),
        ({"worker_env": ("NOT A NAME",)}, "environment variable names"),
        ({"max_worker_uss_bytes": 1000}, r"0 \(no limit\) or at least"),
        ({"worker_address_space_bytes": -1}, r"0 \(no limit\) or at least"),
        ({"plugins": ("not a module",)}, "dotted module names"),
        ({"worker_open_files": 3}, "between 16"),
    ],
)
def test_bad_pool_settings_are_refused_with_a_sentence(
    changes: dict[str, object], words: str
) -> None:
    with pytest.raises(ConfigurationError, match=words):
        Settings(**changes)  # type: ignore[arg-type]


def test_pool_settings_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {"ASYNCJOBS_PLUGINS": "a.b, c", "ASYNCJOBS_WORKERS_MAX": "8", "ASYNCJOBS_WORKER_ENV": "X,Y"}
    )
    assert settings.plugins == ("a.b", "c")
    assert settings.workers_max == 8 and settings.worker_env == ("X", "Y")


def test_no_pool_without_isolated_jobs() -> None:
    app = App(dsn="memory://")

    @app.job()
    async def io_bound() -> None:
        pass

    assert pool_config(app.settings, app.registry, app.preloads) is None


def test_an_unknown_worker_user_is_a_configuration_error() -> None:
    app = App(dsn="memory://", worker_user="no-such-user-here")
    app.job(isolated=True)(_cpu)
    with pytest.raises(ConfigurationError, match="no such user"):
        pool_config(app.settings, app.registry, app.preloads)


def test_the_pool_config_names_each_isolated_job_by_module_and_qualname() -> None:
    app = App(dsn="memory://", workers_min=0, workers_max=3)
    app.job(isolated=True)(_cpu)
    config = pool_config(app.settings, app.registry, app.preloads, environ={"DSN": "x"})
    assert config is not None
    assert config.jobs == {"_cpu": f"{__name__}:_cpu"}
    assert (config.min_workers, config.max_workers) == (0, 3)
    assert "DSN" not in config.env


def test_a_preload_hook_must_be_a_module_level_function() -> None:
    app = App(dsn="memory://")
    with pytest.raises(ConfigurationError, match="module-level"):
        app.preload(lambda: None)


def test_an_isolated_job_in_main_is_refused_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = App(dsn="memory://")
    app.job(isolated=True)(_cpu)
    monkeypatch.setattr(_cpu, "__module__", "__main__")
    import sys

    monkeypatch.setattr(sys.modules["__main__"], "__spec__", None)
    with pytest.raises(JobDefinitionError, match="Move it into a module"):
        pool_config(app.settings, app.registry, app.preloads)


def _cpu(x: int) -> int:
    return x
