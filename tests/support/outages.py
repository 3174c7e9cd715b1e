"""Sideband outages and provider variants for the tests that drop, refuse or re-attach.

One place for the emulator switches and per-call helpers the reconnect, planted-call and
provider-variant tests share.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import aiohttp

from tests.support.broker_server import RunningBroker
from tests.support.servers import RunningEmulator, request_json

OUTAGE_FAULT: Final = {"sideband_attach_error": {"status": 503, "count": 1000}}
"""Every (re-)attach fails (the call goes on) until the test turns it off."""

ALL_PROVIDER_SWITCHES: Final[dict[str, Any]] = {
    "sideband_misses_page_session_updates": True,
    "sideband_misses_page_items": True,
    "provider_item_ids": True,
    "missing_item_error_code": "invalid_value",
    "keep_instructions_on_empty": True,
    "single_sideband": True,
    "hangup_answers_after_close": True,
    "single_active_response": True,
}
"""Every provider behaviour the emulator can switch (docs/protocol.md §0), each the other way."""


async def drop(http: aiohttp.ClientSession, emulator: RunningEmulator, call_id: str) -> None:
    """Abort the call's sidebands (the broker sees 1006 and re-attaches)."""
    status, body = await request_json(
        http, emulator, "POST", f"/_emulator/calls/{call_id}/drop-sidebands", {"mode": "abort"}
    )
    assert status == 200 and body["dropped"], body


async def clear_faults(http: aiohttp.ClientSession, emulator: RunningEmulator) -> None:
    """Back to the emulator's initial switches (every provider switch off, too)."""
    status, body = await request_json(http, emulator, "DELETE", "/_emulator/faults")
    assert status == 200, body


async def call_of(broker: RunningBroker, session: dict[str, Any]) -> str:
    """The provider call id of a session that made its offer."""
    call_id: str = (await broker.get_session(session["id"]))["call_id"]
    return call_id


async def wait_row(
    broker: RunningBroker, session_id: str, call_id: str, *, injected: bool = True
) -> dict[str, Any]:
    """The call's row once settled, and delivered (or not yet, with ``injected=False``)."""
    async with asyncio.timeout(15):
        while True:
            rows = (await broker.get_session(session_id))["tool_calls"]
            match = [r for r in rows if r["call_id"] == call_id]
            if (
                match
                and match[0]["status"] not in ("pending", "running")
                and (match[0]["injected_at"] is not None) == injected
            ):
                row: dict[str, Any] = match[0]
                return row
            await asyncio.sleep(0.05)
