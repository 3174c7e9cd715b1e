"""Identifier factories shaped like the provider's (docs/protocol.md §1.1, §3).

The real service treats ids as opaque; the emulator keeps the observed prefixes so code
that logs or pattern-matches them sees familiar shapes.
"""

from __future__ import annotations

import secrets
import string
import uuid

_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def _hex(nbytes: int) -> str:
    return secrets.token_hex(nbytes)


def new_call_id(flavor: str = "openai") -> str:
    """Return a call id for the provider ``flavor`` plays.

    OpenAI: ``rtc_u2_<21 base62>``; Azure: ``rtc_<32 hex>`` (both as recorded real traffic
    shows them, docs/protocol.md §0).
    """
    if flavor == "azure":
        return f"rtc_{uuid.uuid4().hex}"
    return "rtc_u2_" + "".join(secrets.choice(_BASE62) for _ in range(21))


def new_event_id() -> str:
    return f"event_{_hex(10)}"


def new_item_id() -> str:
    return f"item_{_hex(10)}"


def new_response_id() -> str:
    return f"resp_{_hex(10)}"


def new_function_call_id() -> str:
    return f"call_{_hex(8)}"


def new_session_id() -> str:
    return f"sess_{_hex(10)}"


def new_conversation_id() -> str:
    return f"conv_{_hex(10)}"


def new_connection_id(source: str) -> str:
    """Return an emulator-local id for one client connection (data channel or sideband)."""
    prefix = "dc" if source == "datachannel" else "sb"
    return f"{prefix}_{_hex(6)}"
