"""asyncpg connections for PostgresStore: codecs, the hot-path lanes, and error translation.

Driver errors are translated here, at the store boundary: a connection failure becomes
``StoreUnavailableError`` naming the host, a missing schema ``SchemaNotReadyError``, any other
statement error ``StoreError``; the store raises them ``from`` the cause.
"""

from __future__ import annotations

import asyncio
import functools
import operator
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import asyncpg
from asyncpg.pool import PoolConnectionProxy

from ..errors import SchemaNotReadyError, StoreError, StoreUnavailableError, ValueRejectedError

Conn = asyncpg.Connection | PoolConnectionProxy

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)

# SQLSTATE classes of a statement refused for a value it carries: data exception (a NUL in
# text, a bad number; asyncpg's own encoding errors come as 22000 too) and program limit
# exceeded (a value too large for an index). Sending the same values again fails again.
REFUSED_VALUE_CLASSES = frozenset({"22", "54"})

# Payloads arrive already encoded (serialization.py measured and checked them); the binary
# jsonb format is a version byte followed by the JSON text. Built from C callables, not
# Python functions: asyncpg calls them once per value, 20,000 times in an enqueue_many.
_jsonb_encode = functools.partial(operator.add, b"\x01")
_jsonb_decode = operator.itemgetter(slice(1, None))


async def init_connection(con: asyncpg.Connection) -> None:
    """Set up a new connection: jsonb passes through as bytes, encoded and decoded by us."""
    await con.set_type_codec(
        "jsonb", schema="pg_catalog", format="binary", encoder=_jsonb_encode, decoder=_jsonb_decode
    )


async def no_reset(con: asyncpg.Connection) -> None:
    """The pool's reset on release: nothing.

    asyncpg's default sends "pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL" on every
    release, a round trip per query. Our pooled connections never change session state outside
    managed transactions (asyncpg still rolls those back), so there is nothing to reset.
    """
    return None


class Lane:
    """A connection kept for one kind of hot-path statement (enqueue, claim, complete).

    Each of those has at most one statement in flight per process, and asyncpg's pool costs
    about as much per acquire/release as the statement itself on a small machine. A second
    concurrent user of the same lane simply takes a pooled connection.
    """

    def __init__(
        self, connect: Callable[[], Awaitable[asyncpg.Connection]], pool: Callable[[], asyncpg.Pool]
    ) -> None:
        self._connect = connect
        self._pool = pool
        self._con: asyncpg.Connection | None = None
        self._busy = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Conn]:
        if self._busy:
            async with self._pool().acquire() as pooled:
                yield pooled
            return
        self._busy = True
        try:
            con = self._con
            if con is None or con.is_closed():
                con = self._con = await connect_uncancelled(self._connect)
            try:
                yield con
            except asyncpg.PostgresError:
                raise  # the statement failed; the connection is fine
            except BaseException:
                # Broken, or interrupted mid-statement: never reuse it.
                self._con = None
                con.terminate()
                raise
        finally:
            self._busy = False

    def close(self) -> None:
        con, self._con = self._con, None
        if con is not None:
            con.terminate()


async def connect_uncancelled(
    connect: Callable[[], Awaitable[asyncpg.Connection]],
) -> asyncpg.Connection:
    """``connect()``, never cancelled halfway: cancelling asyncpg mid-handshake leaks the
    socket and leaves a future whose error nobody retrieves ("Future exception was never
    retrieved ... unexpected connection_lost() call", asyncpg issues #464 and #1211), which a
    node stopping at the moment its lane reconnects used to print. A cancelled caller leaves
    the handshake to finish in the background, and the connection is closed then."""
    task = asyncio.ensure_future(connect())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_discard_connection)
        raise


def _discard_connection(task: asyncio.Future[asyncpg.Connection]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().terminate()


def translate_error(
    exc: BaseException, *, target: str, schema: str, connect_timeout_s: float
) -> BaseException:
    """The asyncjobs error for a driver error (or the error itself if it is not one)."""
    if isinstance(exc, StoreError | anyio.get_cancelled_exc_class()):
        return exc
    if isinstance(exc, socket.gaierror):
        return StoreUnavailableError(target, f"the host name does not resolve ({exc})")
    if isinstance(exc, ConnectionRefusedError):
        return StoreUnavailableError(target, "connection refused (no server listening)")
    if isinstance(exc, TimeoutError):
        return StoreUnavailableError(target, f"no answer within {connect_timeout_s:g} s")
    if isinstance(
        exc, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    ):
        return StoreUnavailableError(target, f"the server refused the login ({exc})")
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return StoreUnavailableError(target, f"the database does not exist ({exc})")
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedObjectError):
        return SchemaNotReadyError(f"{target} schema {schema}", str(exc))
    if isinstance(exc, CONNECTION_ERRORS):
        return StoreUnavailableError(target, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, asyncpg.InternalClientError):
        # asyncpg's view of a connection went out of step with the wire, as when the server
        # drops it mid-statement during a restart (asyncpg issues #784, #1069). Like any
        # connection lost mid-statement, whether it took effect is unknown, which every caller
        # already handles; the remedy is a retry on a fresh connection.
        return StoreUnavailableError(target, f"the connection broke mid-statement ({exc})")
    if isinstance(exc, asyncpg.PostgresError):
        code = getattr(exc, "sqlstate", None) or ""
        if code[:2] in REFUSED_VALUE_CLASSES:
            return ValueRejectedError(f"{type(exc).__name__}: {exc}", code)
        return StoreError(f"Postgres rejected a statement: {type(exc).__name__}: {exc}")
    return exc
