"""What the broker's session endpoints answer, as frozen dataclasses.

Each keeps the JSON it came from in ``raw``: fields a newer broker adds are there before
this package knows them, and a backend can pass a create answer on to its page unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


def _time(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _dict(value: Any) -> dict[str, Any]:
    return dict(value) if isinstance(value, dict) else {}


@dataclass(frozen=True)
class ClientSecret:
    """The browser's credential for one session: a short-lived JWT and its expiry."""

    value: str = field(repr=False)
    expires_at: int
    """Unix seconds."""


@dataclass(frozen=True)
class CreatedSession:
    """``POST /api/v1/sessions``'s answer. Hand :attr:`raw` to the page as it is."""

    id: str
    state: str
    model: str
    tools: list[str]
    sideband: bool
    input_transcription: dict[str, Any] | None
    client_secret: ClientSecret
    offer_url: str | None
    bridge_url: str | None
    end_url: str | None
    """Absolute URLs, from brokers that announce them (``None`` from those that do not)."""
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CreatedSession:
        secret = data["client_secret"]
        return cls(
            id=data["id"],
            state=data["state"],
            model=data["model"],
            tools=list(data.get("tools", [])),
            sideband=bool(data.get("sideband", True)),
            input_transcription=data.get("input_transcription"),
            client_secret=ClientSecret(value=secret["value"], expires_at=secret["expires_at"]),
            offer_url=_str(data.get("offer_url")),
            bridge_url=_str(data.get("bridge_url")),
            end_url=_str(data.get("end_url")),
            raw=data,
        )


@dataclass(frozen=True)
class Sideband:
    """Whether the broker watches the call, and its sideband's state."""

    enabled: bool
    state: str | None

    @classmethod
    def from_json(cls, data: Any) -> Sideband:
        data = _dict(data)
        return cls(enabled=bool(data.get("enabled")), state=_str(data.get("state")))


@dataclass(frozen=True)
class ToolCallRecord:
    """One tool call of a session, as the detail lists it."""

    call_id: str
    tool: str
    arguments: Any
    status: str
    decision: str | None
    path: str | None
    output: Any
    error: str | None
    created_at: datetime | None
    finished_at: datetime | None
    injected_at: datetime | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ToolCallRecord:
        return cls(
            call_id=data["call_id"],
            tool=data["tool"],
            arguments=data.get("arguments"),
            status=data["status"],
            decision=_str(data.get("decision")),
            path=_str(data.get("path")),
            output=data.get("output"),
            error=_str(data.get("error")),
            created_at=_time(data.get("created_at")),
            finished_at=_time(data.get("finished_at")),
            injected_at=_time(data.get("injected_at")),
        )


@dataclass(frozen=True)
class Session:
    """``GET /api/v1/sessions/{id}``: the session, its tool calls and its transcript."""

    id: str
    state: str
    model: str
    voice: str | None
    tools: list[str]
    call_id: str | None
    sideband: Sideband
    metadata: dict[str, Any]
    end_reason: str | None
    limits: dict[str, Any]
    input_transcription: dict[str, Any] | None
    created_at: datetime | None
    live_at: datetime | None
    ended_at: datetime | None
    usage: dict[str, Any]
    """Token usage so far (the README's "Usage" shape)."""
    tool_calls: list[ToolCallRecord]
    transcript: list[dict[str, Any]]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Session:
        return cls(
            id=data["id"],
            state=data["state"],
            model=data["model"],
            voice=_str(data.get("voice")),
            tools=list(data.get("tools", [])),
            call_id=_str(data.get("call_id")),
            sideband=Sideband.from_json(data.get("sideband")),
            metadata=_dict(data.get("metadata")),
            end_reason=_str(data.get("end_reason")),
            limits=_dict(data.get("limits")),
            input_transcription=data.get("input_transcription"),
            created_at=_time(data.get("created_at")),
            live_at=_time(data.get("live_at")),
            ended_at=_time(data.get("ended_at")),
            usage=_dict(data.get("usage")),
            tool_calls=[ToolCallRecord.from_json(c) for c in data.get("tool_calls", [])],
            transcript=[line for line in data.get("transcript", []) if isinstance(line, dict)],
            raw=data,
        )


@dataclass(frozen=True)
class SessionSummary:
    """One row of ``GET /api/v1/sessions``."""

    id: str
    state: str
    model: str
    sideband: Sideband
    call_id: str | None
    end_reason: str | None
    created_at: datetime | None
    live_at: datetime | None
    ended_at: datetime | None
    age_s: float
    tool_calls: dict[str, int]
    """Counts by status, and ``total``."""
    last_event_at: datetime | None
    errors: int
    usage: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionSummary:
        return cls(
            id=data["id"],
            state=data["state"],
            model=data["model"],
            sideband=Sideband.from_json(data.get("sideband")),
            call_id=_str(data.get("call_id")),
            end_reason=_str(data.get("end_reason")),
            created_at=_time(data.get("created_at")),
            live_at=_time(data.get("live_at")),
            ended_at=_time(data.get("ended_at")),
            age_s=float(data.get("age_s", 0.0)),
            tool_calls={k: int(v) for k, v in _dict(data.get("tool_calls")).items()},
            last_event_at=_time(data.get("last_event_at")),
            errors=int(data.get("errors", 0)),
            usage=_dict(data.get("usage")),
            raw=data,
        )


@dataclass(frozen=True)
class SessionReconfigured:
    """``POST /api/v1/sessions/{id}/config``'s answer: the live call took the new config."""

    id: str
    tools: list[str]
    """The session's tool set now (the new one, or the unchanged one if only instructions)."""
    instructions_changed: bool
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionReconfigured:
        return cls(
            id=data["id"],
            tools=list(data.get("tools", [])),
            instructions_changed=bool(data.get("instructions_changed")),
            raw=data,
        )


@dataclass(frozen=True)
class SessionPage:
    """One page of the session list, newest first; ``next_cursor`` asks for the next one."""

    sessions: list[SessionSummary]
    next_cursor: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionPage:
        return cls(
            sessions=[SessionSummary.from_json(row) for row in data.get("sessions", [])],
            next_cursor=_str(data.get("next_cursor")),
        )
