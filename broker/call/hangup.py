"""Hanging up a call at the provider: the one place that knows which failures to retry."""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from broker.call.ownership import may_act_now
from sideband import (
    CallNotFoundError,
    Provider,
    ProviderError,
    ProviderTimeoutError,
    ProviderUnreachableError,
)

logger = logging.getLogger(__name__)

HANGUP_ATTEMPTS: Final = 3
HANGUP_RETRY_DELAY: Final = 0.5


async def hang_up(provider: Provider, call_id: str, *, attempts: int = HANGUP_ATTEMPTS) -> bool:
    """Hang up ``call_id``; whether the call is gone (a 404 counts as gone).

    Timeouts, unreachable providers and 5xx answers are retried up to ``attempts`` times,
    with a growing pause; a 4xx other than 404 is not. Failures are logged, never raised.
    An instance that no longer owns the call (:func:`~broker.call.ownership.may_act_now`)
    does not hang it up (``False``), nor does a provider without the ``hangup`` capability.
    """
    if not provider.capabilities.hangup:
        logger.warning(
            "hangup not sent: provider %s cannot end calls call_id=%s", provider.name, call_id
        )
        return False
    if not await may_act_now():
        logger.warning("hangup not sent: this broker no longer owns call_id=%s", call_id)
        return False
    for attempt in range(1, attempts + 1):
        try:
            await provider.hangup(call_id)
        except CallNotFoundError:
            logger.info("hangup: call already gone call_id=%s", call_id)
            return True
        except (ProviderError, ProviderTimeoutError, ProviderUnreachableError) as exc:
            transient = not isinstance(exc, ProviderError) or exc.status >= 500
            if not transient or attempt == attempts:
                logger.error("hangup failed call_id=%s attempt=%d: %s", call_id, attempt, exc)
                return False
            logger.warning(
                "hangup retry call_id=%s attempt=%d/%d: %s", call_id, attempt, attempts, exc
            )
            await asyncio.sleep(HANGUP_RETRY_DELAY * attempt)
        else:
            logger.info("call hung up call_id=%s", call_id)
            return True
    return False
