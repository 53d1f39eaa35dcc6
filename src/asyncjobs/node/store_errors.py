"""How the node's services report a failed store call.

The database being unreachable is expected now and then and says why in a word, so it is a
warning with that reason. Any other store error is a failing statement, which would fail the
same way again: it is logged as an error with its traceback.
"""

from __future__ import annotations

import logging

from ..errors import StoreError, StoreUnavailableError

log = logging.getLogger("asyncjobs.node")


def log_store_error(exc: StoreError, what: str, *args: object) -> None:
    """Log ``what % args`` (say, "cannot claim jobs"), followed by why if the database is
    unreachable, or with the traceback otherwise."""
    if isinstance(exc, StoreUnavailableError):
        log.warning(what + ": %s", *args, exc.why, stacklevel=2)
    else:
        log.error(what, *args, exc_info=exc, stacklevel=2)
