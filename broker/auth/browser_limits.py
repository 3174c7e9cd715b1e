"""Rate limits on the browser routes: the offer, the bridge and the end, per session.

A page holds a client secret, not an API key, and one page flooding the bridge took the
broker's ``/healthz`` p50 to 317-849 ms (issue 14, item 11). Each route gets a token bucket
per session (:class:`~broker.auth.ratelimit.RateLimiter`): in memory on SQLite, one process;
on PostgreSQL a row every broker instance spends from (:mod:`broker.auth.shared_ratelimit`),
since a page's requests may reach any of them.

The bucket's key is the session id of a *verified* client secret: its signature binds the
``sub`` claim, so only sessions this broker minted a secret for can own a bucket, and no
made-up string from a URL or header can grow the table (the limiter's LRU cap bounds it
anyway). A session has one client secret, so per session is also per secret; keying on the
session rather than the ``jti`` keeps every secret of a session in the same bucket. Handlers
check right after the token (which needs no I/O) and before reading the body or asking the
database about the session, so a refused request costs an HMAC and nothing else on SQLite,
and on PostgreSQL one statement on its bucket's row.
"""

from __future__ import annotations

import enum
import logging
from typing import Final

from broker.auth.principals import BrowserPrincipal
from broker.auth.ratelimit import RateLimiter, TokenBucketLimiter
from broker.auth.shared_ratelimit import RateLimits
from broker.errors import RateLimitedError
from broker.settings import Settings

logger = logging.getLogger(__name__)

REFUSAL_LOGS_PER_MINUTE: Final = 1
"""Warnings per session and route about refusals: a flood must not become a log flood."""


class BrowserRoute(enum.StrEnum):
    """A rate-limited browser route (each has its own bucket per session)."""

    OFFER = "offer"
    BRIDGE = "bridge"
    END = "end"


class BrowserLimits:
    """The buckets of the browser routes; one per app (``keys.BROWSER_LIMITS``).

    Args:
        settings: ``bridge_rate``/``bridge_burst`` for the bridge, ``offer_rate``/
            ``offer_burst`` for the offer and (a bucket of its own) the end route.
        limits: where the buckets are kept (default: in memory).
    """

    def __init__(self, settings: Settings, limits: RateLimits | None = None) -> None:
        limits = limits or RateLimits()
        self._limiters: dict[BrowserRoute, RateLimiter] = {
            BrowserRoute.OFFER: limits.limiter(
                BrowserRoute.OFFER, settings.offer_rate, settings.offer_burst
            ),
            BrowserRoute.BRIDGE: limits.limiter(
                BrowserRoute.BRIDGE, settings.bridge_rate, settings.bridge_burst
            ),
            BrowserRoute.END: limits.limiter(
                BrowserRoute.END, settings.offer_rate, settings.offer_burst
            ),
        }
        # Itself a token bucket, per process even when the limits are shared: it only keeps
        # this process's log down to one warning a minute per session and route.
        self._refusal_logs = TokenBucketLimiter(REFUSAL_LOGS_PER_MINUTE, 1)

    async def check(self, route: BrowserRoute, browser: BrowserPrincipal) -> None:
        """Spend one of the session's tokens for ``route`` (no I/O unless shared).

        Raises:
            RateLimitedError: ``rate_limited`` (429, ``Retry-After`` in whole seconds): the
                session made too many ``route`` requests just now; nothing is spent.
        """
        retry_after = await self._limiters[route].take(browser.session_id)
        if retry_after is None:
            return
        if self._refusal_logs.take(f"{route}:{browser.session_id}") is None:
            logger.warning(
                "browser route rate limited route=%s session_id=%s", route, browser.session_id
            )
        raise RateLimitedError(
            "rate_limited",
            f"this session is making {route} requests too fast; retry later",
            retry_after=retry_after,
        )
