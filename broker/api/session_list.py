"""``GET /api/v1/sessions`` (``monitor:read``): what is live now, and what ran before.

Filters: ``state`` (comma-separated), ``model``, ``tool`` (sessions that called it),
``created_after`` / ``created_before`` (ISO 8601). Newest first, ``limit`` rows a page (1-200,
default 50); ``next_cursor`` (opaque) asks for the next page and is stable while new sessions
arrive. Each row carries the session's token ``usage`` so far (:mod:`broker.record.usage`).
A tenant's key lists its tenant's sessions only; a cross-tenant key, every tenant's (each row
names its ``tenant``).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from broker import app_state
from broker.api._auth import api_principal
from broker.api._times import iso
from broker.api.schemas import SessionPage, respond
from broker.auth.principals import Scope
from broker.db.models import SessionState, utcnow
from broker.db.session_list import Cursor, SessionFilter, SessionSummary, list_sessions
from broker.db.times import as_utc
from broker.errors import BadRequestError
from broker.record.usage import Usage

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 200
_PARAMS: Final = frozenset(
    {"state", "model", "tool", "created_after", "created_before", "limit", "cursor"}
)


def _bad(param: str, detail: str) -> BadRequestError:
    return BadRequestError("invalid_query", detail, param=param)


def _time(query: Any, name: str) -> datetime | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
        # Normalised to UTC: SQLite stores naive UTC and drops an offset without converting
        # it. A time at the edge of the calendar overflows doing so (year 1 at +14:00).
        return as_utc(value).astimezone(UTC)
    except (ValueError, OverflowError):
        raise _bad(name, f"{name} must be an ISO 8601 time between years 1 and 9999") from None


def encode_cursor(cursor: Cursor) -> str:
    raw = json.dumps([iso(cursor.created_at), cursor.session_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        created_at, session_id = json.loads(raw)
        if "\x00" in str(session_id):
            raise ValueError("NUL")  # PostgreSQL's text cannot hold it: no session has it
        # Normalised to UTC as _time does: a forged time at the calendar's edge overflows
        # here (400), not in the database's driver (500).
        return Cursor(as_utc(datetime.fromisoformat(created_at)).astimezone(UTC), str(session_id))
    except (binascii.Error, ValueError, TypeError, OverflowError):
        raise _bad("cursor", "cursor is not one this API returned") from None


def parse_query(query: Any) -> tuple[SessionFilter, Cursor | None, int]:
    unknown = sorted(set(query) - _PARAMS)
    if unknown:
        raise _bad(unknown[0], f"unknown parameter; use: {', '.join(sorted(_PARAMS))}")
    states = frozenset(s for s in query.get("state", "").split(",") if s)
    known_states = {str(s) for s in SessionState}
    if not states <= known_states:
        raise _bad("state", f"state must be among: {', '.join(sorted(known_states))}")
    try:
        limit = int(query.get("limit", DEFAULT_LIMIT))
    except ValueError:
        raise _bad("limit", "limit must be an integer") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise _bad("limit", f"limit must be between 1 and {MAX_LIMIT}")
    cursor = decode_cursor(query["cursor"]) if "cursor" in query else None
    where = SessionFilter(
        states=states,
        model=query.get("model"),
        tool=query.get("tool"),
        created_after=_time(query, "created_after"),
        created_before=_time(query, "created_before"),
    )
    return where, cursor, limit


def summary_json(summary: SessionSummary, now: datetime) -> dict[str, Any]:
    row = summary.row
    created = as_utc(row.created_at)
    return {
        "id": row.id,
        "tenant": row.tenant_id,
        "state": row.state,
        "model": row.model,
        "connection_type": row.connection_type,
        "sip_line": row.sip_line,
        "caller": row.caller,
        "sideband": {"enabled": row.sideband_enabled, "state": row.sideband_state},
        "call_id": row.call_id,
        "end_reason": row.end_reason,
        "created_at": iso(row.created_at),
        "live_at": iso(row.live_at),
        "ended_at": iso(row.ended_at),
        "age_s": round((now - created).total_seconds(), 1),
        "tool_calls": {**summary.tool_calls, "total": sum(summary.tool_calls.values())},
        "last_event_at": iso(summary.last_event_at),
        "errors": summary.errors,
        # The event log's size: what it stored, and the coalescible events its caps dropped.
        "events": {"stored": row.events_stored, "dropped": row.events_dropped},
        "usage": Usage.from_columns(row).as_json(),
    }


async def list_sessions_route(request: web.Request) -> web.Response:
    principal = await api_principal(request)
    principal.require(Scope.MONITOR_READ)
    where, cursor, limit = parse_query(request.query)
    where = replace(where, tenant_id=principal.tenant_id)
    async with request.app[app_state.SESSIONMAKER]() as s:
        page, more = await list_sessions(s, where, cursor, limit)
    now = utcnow()
    next_cursor = (
        encode_cursor(Cursor(page[-1].row.created_at, page[-1].row.id)) if more and page else None
    )
    # Validated on the way out: a field the document does not declare is a bug found here.
    listed = {"sessions": [summary_json(p, now) for p in page], "next_cursor": next_cursor}
    return respond(SessionPage.model_validate(listed))
