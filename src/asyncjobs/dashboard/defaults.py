"""Where the dashboard listens, and where its token comes from, unless told otherwise (shared
by the command, the server and the token check)."""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"  # only this machine, unless --host says otherwise
DEFAULT_PORT = 8700
TOKEN_ENV = "ASYNCJOBS_DASHBOARD_TOKEN"
