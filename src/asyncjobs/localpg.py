"""Find a Postgres to use, or start a private one, for `make run` and test suites.

Order: an explicit DSN; the server on 127.0.0.1:5432; a private cluster created with the
machine's ``initdb``/``pg_ctl`` in a folder you choose. When the process runs as root, the
cluster runs as an unprivileged user (``postgres`` if it exists, else ``nobody``), because
Postgres refuses to run as root. Nothing here touches a server it did not start.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import asyncpg

DEFAULT_LOCAL_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
START_TIMEOUT_S = 60


class LocalPostgresError(RuntimeError):
    """No Postgres could be found or started; the message says how to get one."""


def find_binary(name: str) -> str | None:
    """``name`` on PATH, else in the newest /usr/lib/postgresql/*/bin (Debian, Ubuntu)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob.glob(f"/usr/lib/postgresql/*/bin/{name}"),
        key=lambda p: [int(x) for x in p.split("/")[4].split(".") if x.isdigit()],
    )
    return candidates[-1] if candidates else None


def binaries_available() -> bool:
    return find_binary("initdb") is not None and find_binary("pg_ctl") is not None


async def reachable(dsn: str, timeout: float = 2.0) -> bool:
    """True if a connection to ``dsn`` succeeds within ``timeout`` seconds."""
    try:
        con = await asyncpg.connect(dsn, timeout=timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await con.close()
    return True


@dataclass
class LocalCluster:
    """A private cluster in ``path``. Reused if already initialised; started on demand."""

    path: Path
    fsync: bool = True  # test clusters turn it off: they are thrown away anyway

    @property
    def data_dir(self) -> Path:
        return self.path / "data"

    @property
    def port_file(self) -> Path:
        return self.path / "port"

    @property
    def port(self) -> int:
        return int(self.port_file.read_text())

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> str:
        """Initialise if needed, start if not running, and return the DSN."""
        initdb, pg_ctl = find_binary("initdb"), find_binary("pg_ctl")
        if not initdb or not pg_ctl:
            raise LocalPostgresError(
                "cannot start a private Postgres: initdb and pg_ctl are not installed. Install "
                "the PostgreSQL server package (e.g. `apt install postgresql`), or point "
                "ASYNCJOBS_DSN (ASYNCJOBS_TEST_DSN for the tests) at a running server"
            )
        self.path.mkdir(parents=True, exist_ok=True)
        owner = _unprivileged_user()
        if owner is not None:
            _check_reachable(self.path, owner)
        if not (self.data_dir / "PG_VERSION").exists():
            if self.data_dir.exists():
                shutil.rmtree(self.data_dir)  # a half-made cluster from an interrupted run
            self.data_dir.mkdir(mode=0o700)
            _chown(self.path, owner)
            _chown(self.data_dir, owner)
            self._run(
                [
                    initdb,
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ],
                owner,
            )
        if not self._running(pg_ctl, owner):
            port = _free_port()
            self.port_file.write_text(str(port))
            options = (
                f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories="
                f"{self.data_dir} -c max_connections=200"
                + (
                    ""
                    if self.fsync
                    else " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                )
            )
            log_file = self.path / "postgres.log"
            if owner is not None:
                log_file.touch()
                _chown(log_file, owner)
            self._run(
                [
                    pg_ctl,
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(log_file),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "start",
                ],
                owner,
            )
        return self.dsn

    def restart(self, mode: str = "fast") -> None:
        """Restart the server (same port and options): every connection is dropped. ``mode`` is
        pg_ctl's shutdown mode: ``fast``, or ``immediate`` for a crash-like stop."""
        pg_ctl = find_binary("pg_ctl")
        if not pg_ctl:
            raise LocalPostgresError("cannot restart the private Postgres: pg_ctl is missing")
        # -l as for start: without it the new server inherits pg_ctl's output pipes, and
        # reading them would wait as long as the server lives.
        self._run(
            [pg_ctl, "-D", str(self.data_dir), "-l", str(self.path / "postgres.log"), "-m", mode,
             "-w", "-t", str(START_TIMEOUT_S), "restart"],
            _unprivileged_user(),
        )  # fmt: skip

    def stop(self) -> None:
        pg_ctl = find_binary("pg_ctl")
        if pg_ctl and (self.data_dir / "postmaster.pid").exists():
            self._run(
                [pg_ctl, "-D", str(self.data_dir), "-m", "fast", "-w", "stop"],
                _unprivileged_user(),
                check=False,
            )

    def _running(self, pg_ctl: str, owner: pwd.struct_passwd | None) -> bool:
        if not self.port_file.exists():
            return False
        result = self._run([pg_ctl, "-D", str(self.data_dir), "status"], owner, check=False)
        return result.returncode == 0

    def _run(
        self, cmd: list[str], owner: pwd.struct_passwd | None, *, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            user=owner.pw_uid if owner else None,
            group=owner.pw_gid if owner else None,
            cwd=self.path,
            check=False,
        )
        if check and result.returncode != 0:
            raise LocalPostgresError(
                f"{Path(cmd[0]).name} failed (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-2000:]}"
            )
        return result


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user to run Postgres as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise LocalPostgresError(
        "running as root, and neither a 'postgres' nor a 'nobody' user exists to run a private "
        "Postgres as; create one, or point ASYNCJOBS_DSN at a running server"
    )


def _check_reachable(path: Path, owner: pwd.struct_passwd) -> None:
    """Refuse early, with the folder named, when ``owner`` cannot reach ``path``."""
    target = path.resolve()
    for folder in [*reversed(target.parents), target]:
        if not folder.exists():
            break
        st = folder.stat()
        if st.st_uid == owner.pw_uid:
            continue
        if not st.st_mode & 0o001 and not (st.st_gid == owner.pw_gid and st.st_mode & 0o010):
            raise LocalPostgresError(
                f"cannot start a private Postgres in {path}: it runs as user {owner.pw_name} "
                f"(Postgres refuses root), who cannot enter {folder} (mode "
                f"{st.st_mode & 0o777:o}). Use a folder every user can reach, such as one "
                "under /tmp or the project directory"
            )


def _chown(path: Path, owner: pwd.struct_passwd | None) -> None:
    if owner is not None:
        os.chown(path, owner.pw_uid, owner.pw_gid)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
