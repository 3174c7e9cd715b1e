"""The audit trail's read API (``audit:read``; ``admin`` implies it).

- ``GET /api/v1/audit``: records, oldest first, filtered by ``session_id``, ``tool``, ``kind``
  (repeatable or comma-separated), ``actor``, ``decision``, ``since`` / ``until`` (RFC 3339;
  ``since`` inclusive, ``until`` exclusive); ``limit`` records a page (1-500, default 100) and
  an opaque ``cursor`` (``next_cursor`` of the previous page: the last ``seq`` it held, so a
  page never repeats or skips a record however many are chained meanwhile);
- ``GET /api/v1/audit/keys``: every public key the chain was ever signed with, and which one
  this instance signs with now;
- ``GET /api/v1/audit/head``: the chain's signed head as a checkpoint (``verify
  --expect-head`` takes it); ``404 audit_empty`` while nothing is chained.

Tenants: a tenant's key reads only its tenant's sessions' records and the session-less
records its own keys made; a cross-tenant key reads every record. The keys and the head stay
global (they are the chain's, whose every record a verifier needs, and carry no session's
content): the head names the newest record's ``seq`` and hash, nothing of what it says.

The records and the head are read once what is pending is chained
(:meth:`AuditTrail.chain_pending`), so the records of an action that already returned are
there. The keys are public by nature but sit behind the same
scope: who may read the trail decides whom the broker tells which keys sign it, and a
reviewer who verifies should pin keys taken from elsewhere anyway (``docs/audit.md``).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web

from broker import app_state
from broker.api._auth import api_principal
from broker.api._times import iso
from broker.api.public_urls import public_base_url
from broker.api.schemas import AuditCheckpoint, AuditKeyList, AuditPage, respond
from broker.audit.records import AuditKind, at_text
from broker.auth.principals import Scope
from broker.db.queries.audit import AuditFilter, audit_keys, audit_records
from broker.errors import BadRequestError, NotFoundError

DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 500
MAX_TEXT: Final = 200
"""The longest filter value taken (ids, tool names and actors are far shorter)."""
CURSOR_PREFIX: Final = "seq:"
AUDIT_PATH: Final = "/api/v1/audit"
_PARAMS: Final = frozenset(
    {"session_id", "tool", "kind", "actor", "decision", "since", "until", "limit", "cursor"}
)
_DIGITS: Final = re.compile(r"[0-9]{1,18}\Z")
"""ASCII digits only: ``str.isdigit`` takes ``²``, which ``int`` refuses."""
_KINDS: Final = frozenset(str(kind) for kind in AuditKind)
# RFC 3339's date-time: a zone is required (a time without one names no instant).
_RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})\Z"
)


def _bad(param: str, detail: str) -> BadRequestError:
    return BadRequestError("invalid_query", detail, param=param)


def _text(query: Any, name: str) -> str | None:
    values = query.getall(name, [])
    if not values:
        return None
    if len(values) > 1:
        raise _bad(name, f"{name} may be given once")
    value = str(values[0])
    # PostgreSQL's text cannot hold U+0000: no record has it, and the driver would fail.
    if not value or len(value) > MAX_TEXT or "\x00" in value:
        raise _bad(name, f"{name} must be 1 to {MAX_TEXT} characters")
    return value


def _time(query: Any, name: str) -> str | None:
    raw = _text(query, name)
    if raw is None:
        return None
    if not _RFC3339.match(raw):
        raise _bad(name, f"{name} must be an RFC 3339 time with its zone")
    raw = raw.upper()  # RFC 3339 allows a lowercase "t" and "z"
    # Records are timed to the microsecond, which is all fromisoformat takes: a finer time
    # is rounded up, so a record just before it is neither at or after it (since) nor
    # missing before it (until).
    head, dot, rest = raw.partition(".")
    finer = False
    if dot:
        digits = len(rest) - len(rest.lstrip("0123456789"))  # ASCII: the pattern said so
        finer = rest[6:digits].strip("0") != ""
        raw = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        when = datetime.fromisoformat(raw)
        if finer:
            when += timedelta(microseconds=1)
        # The records' `at` is UTC text of fixed width: compared as text, it orders as time.
        return at_text(when.astimezone(UTC))
    except (ValueError, OverflowError):
        raise _bad(name, f"{name} must be an RFC 3339 time between years 1 and 9999") from None


def _kinds(query: Any) -> tuple[str, ...]:
    kinds = [k for value in query.getall("kind", []) for k in str(value).split(",") if k]
    unknown = [k for k in kinds if k not in _KINDS]
    if unknown:
        # The known kinds, not the unknown ones: input is not echoed.
        raise _bad("kind", f"kind must be among: {', '.join(sorted(_KINDS))}")
    return tuple(dict.fromkeys(kinds))


def session_audit_url(request: web.Request, session_id: str) -> str:
    """The session detail's ``audit_url``: absolute, from ``BROKER_PUBLIC_URL``."""
    return f"{public_base_url(request)}{AUDIT_PATH}?session_id={quote(session_id, safe='')}"


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"{CURSOR_PREFIX}{seq}".encode()).decode().rstrip("=")


def decode_cursor(text: str) -> int:
    """The ``seq`` a cursor names; raises ``400 invalid_query`` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, ValueError):
        raise _bad("cursor", "cursor is not one this API returned") from None
    number = raw.removeprefix(CURSOR_PREFIX)
    if not raw.startswith(CURSOR_PREFIX) or not _DIGITS.match(number):
        raise _bad("cursor", "cursor is not one this API returned")
    return int(number)


def parse_query(query: Any) -> tuple[AuditFilter, int, int]:
    """The filter, the ``seq`` to read after, and the page's size."""
    unknown = sorted(set(query) - _PARAMS)
    if unknown:
        raise _bad(unknown[0], f"unknown parameter; use: {', '.join(sorted(_PARAMS))}")
    limit_text = _text(query, "limit")
    limit = DEFAULT_LIMIT
    if limit_text is not None:
        if not _DIGITS.match(limit_text):
            raise _bad("limit", "limit must be an integer")
        limit = int(limit_text)
    if not 1 <= limit <= MAX_LIMIT:
        raise _bad("limit", f"limit must be between 1 and {MAX_LIMIT}")
    cursor = _text(query, "cursor")
    after = decode_cursor(cursor) if cursor is not None else 0
    where = AuditFilter(
        session_id=_text(query, "session_id"),
        tool=_text(query, "tool"),
        kinds=_kinds(query),
        actor=_text(query, "actor"),
        decision=_text(query, "decision"),
        since=_time(query, "since"),
        until=_time(query, "until"),
    )
    return where, after, limit


async def list_audit(request: web.Request) -> web.Response:
    principal = await api_principal(request)
    principal.require(Scope.AUDIT_READ)
    where, after, limit = parse_query(request.query)
    # A tenant's key reads its own tenant's records (AuditFilter.tenant_id); a cross-tenant
    # key, all of them.
    where = replace(where, tenant_id=principal.tenant_id)
    await request.app[app_state.AUDIT].chain_pending()
    async with request.app[app_state.SESSIONMAKER]() as s:
        # One more than the page: whether there is a next page, without a count.
        records = await audit_records(s, where, after_seq=after, limit=limit + 1)
    page, more = records[:limit], len(records) > limit
    next_cursor = encode_cursor(page[-1].seq) if more else None
    listed = {"records": [r.to_json() for r in page], "next_cursor": next_cursor}
    return respond(AuditPage.model_validate(listed))


def _key_json(row: Any, current: str) -> dict[str, Any]:
    return {
        "key_id": row.key_id,
        "public_key": row.public_key,
        "added_at": iso(row.added_at),
        "current": row.key_id == current,
    }


async def list_audit_keys(request: web.Request) -> web.Response:
    (await api_principal(request)).require(Scope.AUDIT_READ)
    current = request.app[app_state.AUDIT].signer.key_id
    async with request.app[app_state.SESSIONMAKER]() as s:
        rows: Sequence[Any] = await audit_keys(s)
    return respond(AuditKeyList.model_validate({"keys": [_key_json(r, current) for r in rows]}))


async def audit_head(request: web.Request) -> web.Response:
    (await api_principal(request)).require(Scope.AUDIT_READ)
    checkpoint = await request.app[app_state.AUDIT].current_head()
    if checkpoint is None:
        # Not a null body: a checkpoint is something to pin, and there is nothing to pin yet.
        raise NotFoundError("audit_empty", "nothing has been chained yet")
    return respond(AuditCheckpoint.model_validate(checkpoint.to_json()))
