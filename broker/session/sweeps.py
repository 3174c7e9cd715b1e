"""Running a periodic sweep for the life of the broker (expired sessions, approvals, caps)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from broker.db.shielded import finish_step

logger = logging.getLogger(__name__)


async def sweep_forever(sweep: Callable[[], Awaitable[object]], every_s: float, what: str) -> None:
    """Run ``sweep`` every ``every_s`` seconds until cancelled.

    A failed sweep is logged and the next one tries again: a database that is briefly away
    must not end the sweeper for the rest of the process's life.
    """
    while True:
        await asyncio.sleep(every_s)
        try:
            # Cancelled (the broker stopping), a sweep under way still commits or rolls back.
            await finish_step(sweep())
        except Exception:
            logger.exception("%s sweep failed; retrying in %.0f s", what, every_s)
