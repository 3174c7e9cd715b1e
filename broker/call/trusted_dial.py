"""Opening a trusted session's provider WebSocket session and handing it its config.

Only ``broker/call`` drives a call's socket (tests/support/import_rules.py); the session layer
(:mod:`broker.session.trusted`) holds the opened socket as an opaque :data:`ProviderSocket`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Mapping
from typing import Any, Final, TypeAlias

from sideband import Direction, ProviderError, SidebandConnection

HANDSHAKE_TIMEOUT_S: Final = 10.0
"""How long the provider's WebSocket session has to answer the broker's config."""

ProviderSocket: TypeAlias = SidebandConnection
Preamble: TypeAlias = list[tuple[Direction, dict[str, Any]]]
"""The frames exchanged before the controller runs: recorded and replayed to the backend."""


async def configure(connection: ProviderSocket, config: Mapping[str, Any]) -> Preamble:
    """Send the server-owned config on a new provider session; the frames until its answer.

    Raises:
        TimeoutError: no ``session.updated`` within :data:`HANDSHAKE_TIMEOUT_S`.
        ProviderError: the provider refused the config (an ``error`` event) or closed.
    """
    update: dict[str, Any] = {
        "type": "session.update",
        "event_id": "event_broker_" + secrets.token_hex(8),
        "session": dict(config),
    }
    await connection.send(update)
    preamble: Preamble = [("out", update)]
    async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
        async for frame in connection.frames():
            preamble.append(("in", frame))
            if frame.get("type") == "session.updated":
                return preamble
            if frame.get("type") == "error":
                error = frame.get("error")
                code = error.get("code") if isinstance(error, dict) else None
                raise ProviderError(400, code if isinstance(code, str) else None, "session_update")
    raise ProviderError(502, None, "session_update")
