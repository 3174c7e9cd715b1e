"""Throwaway PostgreSQL databases for the tests.

Two uses:

* :func:`fresh_pg_database`: a new database, migrated from scratch, for the tests that are
  about PostgreSQL (``pg_url``, the ``postgres`` parameter of the two-database tests).
* :class:`PgTemplate`: when ``BROKER_TEST_DATABASE_URL`` names a PostgreSQL server, the whole
  suite's broker database (``db_url``) is PostgreSQL. The run migrates one template database
  (``broker_tmpl_<hex>``) once; each test gets its own clone of it (``CREATE DATABASE …
  TEMPLATE``, a file copy: far faster than migrating), dropped after the test; the template is
  dropped at the end of the run.

Without the variable the server is the one on 127.0.0.1:5432 (user ``postgres``, trust auth);
with it, the server, user and password are the variable's, and its database is the one the
admin connection opens to create and drop the others (``postgres`` in the usual URL).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar

import pytest
from sqlalchemy.engine import URL, make_url

from broker.db.migrate import upgrade_database

if TYPE_CHECKING:
    import asyncpg

TEST_DATABASE_ENV: Final = "BROKER_TEST_DATABASE_URL"
"""Set to a ``postgresql+asyncpg://…`` URL: the suite's broker database is PostgreSQL."""
DEFAULT_SERVER: Final = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT_S: Final = 5

T = TypeVar("T")


def server_from_env() -> URL | None:
    """The server ``BROKER_TEST_DATABASE_URL`` names, or ``None`` when it is unset.

    Raises:
        pytest.fail.Exception: it is set but is not a PostgreSQL URL.
    """
    value = os.environ.get(TEST_DATABASE_ENV, "").strip()
    if not value:
        return None
    try:
        url = make_url(value)
    except Exception as exc:  # noqa: BLE001 - any unparsable value gets the same message
        pytest.fail(f"{TEST_DATABASE_ENV} is not a database URL: {exc}")
    if url.get_backend_name() != "postgresql":
        pytest.fail(
            f"{TEST_DATABASE_ENV} must be a postgresql+asyncpg:// URL, not {url.drivername}://"
            " (SQLite is the default without it)"
        )
    return url


class PgServer:
    """A PostgreSQL server the tests may create and drop databases on."""

    def __init__(self, url: URL, *, required: bool) -> None:
        """``url``: any database on the server (the admin connection opens it);
        ``required``: unreachable is a failure (the variable asked for it) rather than
        :func:`tests.conftest.skip_or_fail`'s skip."""
        self._url = url
        self._required = required

    @classmethod
    def for_tests(cls) -> PgServer:
        """The variable's server, else the default one on 127.0.0.1:5432."""
        url = server_from_env()
        if url is None:
            return cls(make_url(DEFAULT_SERVER), required=False)
        return cls(url, required=True)

    def url_of(self, database: str) -> str:
        """The broker's URL for ``database`` on this server (always the asyncpg driver)."""
        return self._url.set(drivername="postgresql+asyncpg", database=database).render_as_string(
            hide_password=False
        )

    def _unavailable(self, reason: str) -> NoReturn:
        from tests.conftest import skip_or_fail  # the one place that knows about CI

        if self._required:
            pytest.fail(f"{reason} ({TEST_DATABASE_ENV} is set: PostgreSQL must be there)")
        skip_or_fail(reason)
        raise AssertionError("unreachable")  # skip_or_fail always raises

    @asynccontextmanager
    async def admin(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection to the URL's own database, for CREATE and DROP DATABASE."""
        try:
            import asyncpg
        except ImportError:
            self._unavailable("asyncpg is not installed (the postgres extra)")
        dsn = self._url.set(drivername="postgresql").render_as_string(hide_password=False)
        where = self._url.render_as_string(hide_password=True)
        try:
            connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            self._unavailable(f"PostgreSQL is not reachable at {where}: {exc}")
        try:
            yield connection
        finally:
            await connection.close()

    async def create(self, name: str, template: str | None = None) -> None:
        clause = f' TEMPLATE "{template}"' if template is not None else ""
        async with self.admin() as admin:
            await admin.execute(f'CREATE DATABASE "{name}"{clause}')

    async def drop(self, name: str) -> None:
        # FORCE: a broker process a test killed may leave a connection behind.
        async with self.admin() as admin:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _in_thread(function: Callable[..., T], *args: Any) -> T:
    """Call ``function`` in a worker thread and wait for it.

    For the synchronous fixtures, which may be set up from inside a running event loop (an
    async fixture's ``request.getfixturevalue``): there ``asyncio.run``, Alembic's included,
    would refuse to start. A thread has no loop of its own.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="pg-test-db") as pool:
        return pool.submit(function, *args).result()


def _blocking(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to the end on a loop of its own, in a worker thread."""
    return _in_thread(asyncio.run, coro)


@asynccontextmanager
async def fresh_pg_database() -> AsyncIterator[str]:
    """Yield the URL of a new, migrated database; it is dropped afterwards.

    Skips on a machine without PostgreSQL or asyncpg, and fails instead when ``CI=true`` or
    ``BROKER_TEST_DATABASE_URL`` is set.
    """
    server = PgServer.for_tests()
    name = f"broker_test_{secrets.token_hex(6)}"
    await server.create(name)
    try:
        await asyncio.to_thread(upgrade_database, server.url_of(name))
        yield server.url_of(name)
    finally:
        await server.drop(name)


class PgTemplate:
    """The run's migrated template database, and the per-test clones made from it."""

    def __init__(self, server: PgServer) -> None:
        self.server = server
        self.name = f"broker_tmpl_{secrets.token_hex(6)}"

    def create(self) -> None:
        """Create and migrate the template (synchronous: for a session fixture)."""
        _blocking(self.server.create(self.name))
        try:
            # Alembic's engine is disposed when it returns: no connection stays on the
            # template to block the clones.
            _in_thread(upgrade_database, self.server.url_of(self.name))
        except BaseException:
            self.drop()
            raise

    def drop(self) -> None:
        _blocking(self.server.drop(self.name))

    @contextmanager
    def clone(self) -> Iterator[str]:
        """Yield the URL of a new copy of the template; it is dropped afterwards."""
        name = f"broker_test_{secrets.token_hex(6)}"
        _blocking(self.server.create(name, template=self.name))
        try:
            yield self.server.url_of(name)
        finally:
            _blocking(self.server.drop(name))


@contextmanager
def pg_template() -> Iterator[PgTemplate | None]:
    """The run's template when ``BROKER_TEST_DATABASE_URL`` is set, else ``None``."""
    url = server_from_env()
    if url is None:
        yield None
        return
    template = PgTemplate(PgServer(url, required=True))
    template.create()
    try:
        yield template
    finally:
        template.drop()
