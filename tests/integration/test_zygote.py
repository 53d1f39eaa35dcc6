"""The zygote when its node goes away: it exits quietly, whatever it was doing (DESIGN §7).

The zygote is a real process started by a real ``ProcessPool``, built the way a node builds
it (``pool_config`` over a test app's isolated jobs). Its stderr is the test's own fd 2, which
``capfd`` captures.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from asyncjobs import PoolError, Settings
from asyncjobs.pool.config import pool_config
from asyncjobs.pool.pool import ProcessPool
from tests import pool_jobs
from tests.helpers import wait_until


async def test_a_zygote_whose_node_closes_the_control_socket_mid_spawn_exits_quietly(
    memory_settings: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    app = pool_jobs.build_app(memory_settings.replace(workers_min=0))
    config = pool_config(app.settings, app.registry, app.preloads)
    assert config is not None
    pool = ProcessPool(config)
    await pool.start()
    zygote: Any = pool._zygote
    acquiring = asyncio.get_running_loop().create_task(pool.acquire())
    try:
        # Stopped, the zygote cannot answer the spawn before the node's end is closed: once it
        # runs again, it reads the request, forks, and finds nobody to send the worker to.
        os.kill(zygote.pid, signal.SIGSTOP)
        await wait_until(lambda: pool._spawning, what="the spawn request to be sent")
        closing = asyncio.get_running_loop().create_task(pool.close())
        await wait_until(lambda: pool._control is None, what="the node's end to be closed")
        os.kill(zygote.pid, signal.SIGCONT)
        await closing
        with pytest.raises(PoolError, match="closed"):  # the caller is told, not left waiting
            await asyncio.wait_for(acquiring, 10)
    finally:
        acquiring.cancel()
        if zygote.poll() is None:
            os.kill(zygote.pid, signal.SIGKILL)
            zygote.wait()
    err = capfd.readouterr().err
    assert zygote.returncode == 0, (zygote.returncode, err)  # not killed by close() either
    assert "Traceback" not in err, err
    assert len(err.splitlines()) <= 1, err
