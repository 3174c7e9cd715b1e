"""``LISTEN`` on PostgreSQL: instances wake each other instead of waiting for their polls.

A notice is only a nudge: the rows stay the truth, and everything a notice says is also found
by the periodic reads, so a lost notice (a dropped listening connection) costs latency, never
correctness. SQLite is one process: nothing to listen to.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from sqlalchemy.engine import make_url

logger = logging.getLogger(__name__)

RECONNECT_S: Final = 1.0


class Notices:
    """One listening connection for every channel in ``handlers`` (channel → callback)."""

    def __init__(self, database_url: str, handlers: Mapping[str, Callable[[str], None]]) -> None:
        url = make_url(database_url)
        self.enabled = url.get_backend_name() == "postgresql"
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._handlers = dict(handlers)
        self.listening = asyncio.Event()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after a lost connection."""
        if not self.enabled:
            return
        import asyncpg  # type: ignore[import-untyped]  # the postgres extra; PostgreSQL only

        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                for channel in self._handlers:
                    await conn.add_listener(channel, self._deliver)
                self.listening.set()
                await lost.wait()
                logger.warning("lost the database notice connection; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Never the DSN: it may hold a password.
                logger.warning("database notices unavailable: %s", type(exc).__name__)
            finally:
                self.listening.clear()
                if conn is not None and not conn.is_closed():
                    await conn.close()
            await asyncio.sleep(RECONNECT_S)

    def _deliver(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        handler = self._handlers.get(channel)
        if handler is None:
            return
        try:
            handler(payload)
        except Exception:
            logger.exception("notice handler failed channel=%s", channel)
