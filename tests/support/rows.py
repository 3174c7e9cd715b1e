"""Database rows for tests that drive the dispatcher or the budget without the HTTP API."""

from __future__ import annotations

from typing import Any

from broker.db.models import SessionRow


def session_row(session_id: str, tools: list[str], **fields: Any) -> SessionRow:
    """A session row with small limits and no sideband; ``fields`` override any column."""
    values: dict[str, Any] = {
        "id": session_id,
        "owner_key_id": "key",
        "provider": "emulator",
        "model": "m",
        "instructions": "",
        "voice": "v",
        "tools": tools,
        "sideband_enabled": False,
        "sideband_state": "disabled",
        "metadata_": {},
        "max_duration_s": 60,
        "idle_timeout_s": 60,
        "max_tool_calls": 10,
        "max_concurrent_tools": 4,
        "max_argument_bytes": 1024,
        "tamper_policy": "revert",
        **fields,
    }
    return SessionRow(**values)
