"""The API's response bodies as pydantic models: the source of the OpenAPI document's schemas.

Every model forbids extra fields, so its JSON schema says ``additionalProperties: false``: a
field a handler starts sending without declaring it here makes the schema-driven tests
(``tests/integration/test_openapi.py``) fail instead of the document drifting from what is
served. Request bodies are the models the handlers already validate with (``read_json``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, RootModel

from broker.db.models import SessionState, SidebandState, ToolCallStatus, ToolPath
from broker.session.limits import PageItems, PageResponses, TamperPolicy


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(_Out):
    """RFC 9457 problem details; ``code`` is the stable, machine-readable error code."""

    # Extensions ride along with some codes (``errors``, ``param``, ``retry_after``, …).
    model_config = ConfigDict(extra="allow")

    type: str = Field(description="``urn:broker:error:<code>``")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    code: str


class ClientSecret(_Out):
    value: str = Field(description="The browser's bearer token for the offer, bridge and end.")
    expires_at: int = Field(description="Unix time (seconds) after which no offer takes it.")


class SessionCreated(_Out):
    """``201`` of ``POST /api/v1/sessions``."""

    id: str
    state: SessionState
    model: str
    tools: list[str]
    sideband: bool
    input_transcription: dict[str, Any] | None
    client_secret: ClientSecret
    # Absolute URLs for the page (from BROKER_PUBLIC_URL): it is on another origin.
    offer_url: str
    bridge_url: str = Field(description="Append the tool's name.")
    end_url: str


class ServerToolOut(_Out):
    """One of a trusted session's ``server_tools``, as given at creation."""

    name: str
    description: str = ""
    parameters: dict[str, Any]
    timeout: float | None = None


class TrustedSessionCreated(_Out):
    """``201`` of ``POST /api/v1/sessions`` for ``"connection_type": "trusted_server"``."""

    id: str
    state: SessionState
    connection_type: Literal["trusted_server"]
    service_id: str
    model: str
    tools: list[str]
    server_tools: list[ServerToolOut]
    input_transcription: dict[str, Any] | None
    connect_token: str = Field(
        description="Single use, for `connect_url` (`Authorization: Bearer`); never a browser's."
    )
    connect_expires_at: int = Field(
        description="Unix time (seconds) after which it connects nothing."
    )
    connect_url: str = Field(description="The session's WebSocket (`ws:`/`wss:`) for the backend.")


class SessionCreatedReply(RootModel[SessionCreated | TrustedSessionCreated]):
    """``201`` of ``POST /api/v1/sessions``: a browser session's, or a trusted session's."""


class SidebandInfo(_Out):
    enabled: bool
    state: SidebandState


class SessionLimitsOut(_Out):
    max_duration_s: int
    idle_timeout_s: int
    max_tool_calls: int
    max_concurrent_tools: int
    max_argument_bytes: int
    on_tamper: TamperPolicy
    page_items: PageItems
    page_responses: PageResponses


class InputTokenDetails(_Out):
    text_tokens: int
    audio_tokens: int
    cached_tokens: int


class OutputTokenDetails(_Out):
    text_tokens: int
    audio_tokens: int


class TranscriptionTokenDetails(_Out):
    text_tokens: int
    audio_tokens: int


class TranscriptionUsage(_Out):
    transcriptions: int
    total_tokens: int
    input_tokens: int
    output_tokens: int
    input_token_details: TranscriptionTokenDetails
    seconds: float


class UsageOut(_Out):
    """Token usage the provider reported, summed (the provider's shape, plus ``responses``)."""

    responses: int
    total_tokens: int
    input_tokens: int
    output_tokens: int
    input_token_details: InputTokenDetails
    output_token_details: OutputTokenDetails
    input_transcription: TranscriptionUsage


class ToolCallRecord(_Out):
    call_id: str
    tool: str
    arguments: str = Field(
        description="The arguments as the model sent them (JSON text); each field the tool's"
        ' config names in `redact` is `{"redacted": "hmac-sha256:<hex>"}` instead.'
    )
    status: ToolCallStatus
    decision: str | None
    path: ToolPath | None
    output: str | None = Field(
        description="What the model was told (JSON or text); redacted as `arguments` are."
    )
    error: str | None
    created_at: str | None
    finished_at: str | None
    injected_at: str | None


class TranscriptTurn(_Out):
    type: Literal["turn"]
    role: Literal["user", "assistant"]
    text: str
    partial: bool | None = None
    transcription: Literal["failed"] | None = None


class TranscriptToolCall(_Out):
    type: Literal["tool_call"]
    call_id: str | None
    name: str | None
    arguments: str | None
    output: str | None


class SessionDetail(_Out):
    """``200`` of ``GET /api/v1/sessions/{session_id}``."""

    id: str
    tenant: str
    state: SessionState
    model: str
    voice: str
    tools: list[str]
    connection_type: Literal["webrtc", "trusted_server", "sip"] = Field(
        description="``trusted_server``: a backend's session, no browser; ``sip``: a phone call."
    )
    service_id: str | None = Field(description="A trusted session's service.")
    sip_line: str | None = Field(description="A phone call's line (the lines file's name).")
    caller: str | None = Field(
        description="A phone call's caller number, as stored (a keyed hash if its line redacts"
        " the caller)."
    )
    server_tools: list[ServerToolOut] | None = Field(
        description="A trusted session's own tools, run by its backend."
    )
    call_id: str | None
    sideband: SidebandInfo
    metadata: dict[str, Any]
    end_reason: str | None
    limits: SessionLimitsOut
    input_transcription: dict[str, Any] | None
    created_at: str | None
    live_at: str | None
    ended_at: str | None
    erased_at: str | None = Field(
        description="When its content (events, transcript, tool arguments and outputs,"
        " instructions, metadata, audit bodies) was erased; ``null``: not erased."
    )
    usage: UsageOut
    tool_calls: list[ToolCallRecord]
    transcript: list[TranscriptTurn | TranscriptToolCall]
    audit_url: str = Field(
        description="The session's audit records (``GET /api/v1/audit``, ``audit:read``)."
    )


class EventCounts(_Out):
    stored: int
    dropped: int


class SessionSummaryOut(_Out):
    id: str
    tenant: str
    state: SessionState
    model: str
    connection_type: Literal["webrtc", "trusted_server", "sip"]
    sip_line: str | None = Field(description="A phone call's line.")
    caller: str | None = Field(description="A phone call's caller, as stored.")
    sideband: SidebandInfo
    call_id: str | None
    end_reason: str | None
    created_at: str | None
    live_at: str | None
    ended_at: str | None
    age_s: float
    tool_calls: dict[str, int] = Field(description="Counts by status, and ``total``.")
    last_event_at: str | None
    errors: int
    events: EventCounts
    usage: UsageOut


class SessionPage(_Out):
    """``200`` of ``GET /api/v1/sessions``."""

    sessions: list[SessionSummaryOut]
    next_cursor: str | None


class BridgeResult(_Out):
    call_id: str
    status: ToolCallStatus
    output: str | None
    handled_by: ToolPath | None


class Ended(_Out):
    id: str
    ended: bool


class HungUp(_Out):
    id: str
    hung_up: bool


class Transferred(_Out):
    """A phone call transferred (``POST /api/v1/sessions/{id}/transfer``).

    The provider took the refer, and the session ended as ``transferred``.
    """

    id: str
    transferred: bool
    target_uri: str


class InstructionsUpdated(_Out):
    id: str
    updated: bool


class SessionReconfigured(_Out):
    """A live call's new config took (``POST /api/v1/sessions/{id}/config``)."""

    id: str
    updated: bool
    tools: list[str]
    """The session's tool set now."""
    instructions_changed: bool


class _KeyFields(_Out):
    """What every answer about an API key says of it: never the key, never its hash."""

    id: str
    name: str
    scopes: list[str]
    tools: list[str] = Field(
        description="The tools it may put in a session's allowlist (``*``: any; ``[]``: none)."
    )
    created_at: str | None
    revoked_at: str | None
    tenant: str | None = Field(
        description="Its tenant; ``null``: a cross-tenant key (sees every tenant)."
    )


class KeyRecord(_KeyFields):
    """An API key's public record: never the key, never its hash."""

    usage: UsageOut | None = Field(default=None, description="Only with ``?include=usage``.")


class KeyList(_Out):
    keys: list[KeyRecord]


class KeyCreated(_KeyFields):
    key: str = Field(description="The key itself: shown this once, stored only as a hash.")


class TenantOut(_Out):
    """A team sharing the broker (``POST /api/v1/tenants``, ``GET /api/v1/tenants``)."""

    id: str
    name: str
    created_at: str | None


class TenantList(_Out):
    tenants: list[TenantOut]


class ToolSwitch(_Out):
    name: str
    disabled: bool
    disabled_at: str | None = None
    disabled_by: str | None = None
    reason: str | None = None


class ToolList(_Out):
    tools: list[ToolSwitch]


class AuditRecordOut(_Out):
    """One chained audit record, as ``broker audit export`` writes it (one JSON line)."""

    seq: int
    at: str = Field(description="UTC, microseconds, fixed width: ``%Y-%m-%dT%H:%M:%S.%fZ``.")
    session_id: str | None
    kind: str
    actor: str = Field(description="``key:<id>``, ``page``, ``sideband`` or ``broker``.")
    tool: str | None
    decision: str | None
    body: dict[str, Any] | None = Field(description="``null`` once erased (``audit.erased``).")
    body_sha256: str
    prev_hash: str
    hash: str = Field(description="sha256(prev_hash ‖ canonical header), hex.")
    key_id: str
    signature: str = Field(description="Ed25519 over the hash's 32 bytes, hex.")


class AuditPage(_Out):
    """``200`` of ``GET /api/v1/audit``."""

    records: list[AuditRecordOut]
    next_cursor: str | None


class AuditKeyOut(_Out):
    key_id: str
    public_key: str = Field(description="The Ed25519 public key, PEM (SubjectPublicKeyInfo).")
    added_at: str | None
    current: bool = Field(description="Whether this broker instance signs with it now.")


class AuditKeyList(_Out):
    """``200`` of ``GET /api/v1/audit/keys``."""

    keys: list[AuditKeyOut]


class AuditCheckpoint(_Out):
    """``200`` of ``GET /api/v1/audit/head``: the chain's head, for ``verify --expect-head``."""

    type: Literal["audit.checkpoint"]
    seq: int
    hash: str
    key_id: str
    signature: str = Field(description="The head record's signature (Ed25519 over its hash).")
    at: str = Field(description="When this checkpoint was taken.")


class Health(_Out):
    status: Literal["ok"]
    provider: str


def respond(
    body: BaseModel, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``body`` as JSON, as ``web.json_response`` writes it; fields left unset stay out."""
    return web.json_response(
        body.model_dump(mode="json", exclude_unset=True), status=status, headers=headers
    )
