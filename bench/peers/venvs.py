"""The peers' virtual environments: ``bench/.peers/<peer>/``, one per peer, pinned.

Each is made with this Python's ``venv`` (so on the same interpreter as ``.venv``) and filled
by pip from ``REQUIREMENTS``: the newest releases that install on Python 3.11 here, with the
libraries their speed depends on (the Postgres and Redis clients, hiredis, uvloop). A venv is
reused while its recorded requirements match; otherwise it is made again. A peer that cannot
be installed raises ``PeerUnavailable`` with pip's last words, and the run goes on without it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import BENCH_DIR

PEERS_DIR = BENCH_DIR / ".peers"
STAMP = "bench-requirements.txt"
INSTALL_TIMEOUT_S = 600.0

REQUIREMENTS: dict[str, list[str]] = {
    "procrastinate": [
        "procrastinate==3.10.0",
        "psycopg[binary,pool]==3.3.9",
        "psycopg-pool==3.3.3",
        "uvloop==0.23.0",
    ],
    "arq": [
        "arq==0.28.0",
        "redis==5.3.1",  # the newest that arq 0.28 accepts
        "hiredis==3.5.0",
        "uvloop==0.23.0",
    ],
    "celery": [
        "celery[redis]==5.7.0",
        "kombu==5.7.0",
        "billiard==4.3.2",
        "redis==8.1.0",
    ],
}


class PeerUnavailable(Exception):
    """A peer's venv could not be made; the message says why."""


def python(peer: str) -> Path:
    return PEERS_DIR / peer / "bin" / "python"


def ensure(peer: str) -> Path:
    """The Python of ``peer``'s venv, made (or made again) if its requirements changed."""
    home = PEERS_DIR / peer
    wanted = "\n".join(REQUIREMENTS[peer]) + "\n"
    stamp = home / STAMP
    if python(peer).exists() and stamp.exists() and stamp.read_text() == wanted:
        return python(peer)
    print(f"    making {home} ({', '.join(REQUIREMENTS[peer])})", flush=True)
    shutil.rmtree(home, ignore_errors=True)
    PEERS_DIR.mkdir(exist_ok=True)
    _run([sys.executable, "-m", "venv", str(home)], f"python -m venv {home}")
    requirements = home / "requirements.txt"
    requirements.write_text(wanted)
    _run(
        [
            str(python(peer)),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(requirements),
        ],
        f"pip install of {peer}",
    )
    stamp.write_text(wanted)  # last: a venv half made is made again next time
    return python(peer)


def _run(args: list[str], what: str) -> None:
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise PeerUnavailable(f"{what} took over {INSTALL_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise PeerUnavailable(f"{what} could not start: {exc}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        errors = [ln for ln in lines if ln.startswith("ERROR")]  # pip's own warnings are noise
        tail = " | ".join((errors or lines)[-3:])
        raise PeerUnavailable(f"{what} failed (exit {done.returncode}): {tail}")
