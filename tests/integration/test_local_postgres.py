"""`make run` and the tests find a Postgres, or start a private one, or fall back to memory."""

from __future__ import annotations

import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest

from asyncjobs.localpg import (
    LocalCluster,
    LocalPostgresError,
    _check_reachable,
)
from plugins_example import demo


@pytest.fixture
def cluster_dir(private_cluster_dir: Path) -> Path:
    return private_cluster_dir


def test_a_folder_the_cluster_user_cannot_reach_is_refused_naming_it() -> None:
    # As root, the cluster runs as another user; "nobody" stands in for it here, so the check
    # runs whoever runs the tests.
    base = Path(tempfile.mkdtemp(prefix="asyncjobs-reach-"))
    try:
        base.chmod(0o755)
        private = base / "private"
        private.mkdir(mode=0o700)
        with pytest.raises(LocalPostgresError, match=r"cannot enter .*/private \(mode 700\)"):
            _check_reachable(private / "pg", pwd.getpwnam("nobody"))
        private.chmod(0o755)
        _check_reachable(private / "pg", pwd.getpwnam("nobody"))  # reachable now: no error
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_private_cluster_starts_is_reused_and_stops(cluster_dir: Path) -> None:
    cluster = LocalCluster(cluster_dir, fsync=False)
    try:
        dsn = cluster.start()
        con = await asyncpg.connect(dsn)
        try:
            await con.execute("CREATE TABLE kept (x int)")
        finally:
            await con.close()
        assert cluster.start() == dsn  # already running: the same server
        cluster.stop()
        again = cluster.start()  # initialised already: started, not re-created
        con = await asyncpg.connect(again)
        try:
            assert await con.fetchval("SELECT count(*) FROM kept") == 0
        finally:
            await con.close()
    finally:
        cluster.stop()


async def test_demo_starts_a_private_cluster_when_no_server_answers(
    monkeypatch: pytest.MonkeyPatch, cluster_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def nothing_answers(dsn: str, timeout: float = 2.0) -> bool:
        return False

    monkeypatch.delenv("ASYNCJOBS_DSN", raising=False)
    monkeypatch.setattr(demo, "reachable", nothing_answers)
    monkeypatch.setattr(demo, "PRIVATE_CLUSTER", cluster_dir)
    dsn = await demo.choose_dsn()
    assert dsn.startswith("postgresql://postgres@127.0.0.1:")
    assert "starting a private one" in capsys.readouterr().out
    con = await asyncpg.connect(dsn)
    await con.close()


async def test_demo_falls_back_to_memory_with_a_warning_without_postgres_binaries(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def nothing_answers(dsn: str, timeout: float = 2.0) -> bool:
        return False

    monkeypatch.delenv("ASYNCJOBS_DSN", raising=False)
    monkeypatch.setattr(demo, "reachable", nothing_answers)
    monkeypatch.setattr(demo, "binaries_available", lambda: False)
    assert await demo.choose_dsn() == "memory://"
    assert "NOTHING PERSISTS" in capsys.readouterr().err


def test_every_command_has_help() -> None:
    for command in ([], ["node"], ["enqueue"], ["migrate"]):
        result = subprocess.run(
            [sys.executable, "-m", "asyncjobs.cli", *command, "--help"],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "usage: asyncjobs" in result.stdout
