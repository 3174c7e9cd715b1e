"""SQLAlchemy 2.0 typed models. Every schema change is an Alembic revision in ``migrations/``."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class SessionState(enum.StrEnum):
    """``created → offered → live (→ degraded) → ended | failed``.

    ``offered``: the broker accepted the browser's offer and is (or was) creating the call.
    ``live``: the call exists at the provider and the broker controls it (sideband attached or
    reconnecting, or a bridge-only session whose call was created).
    ``degraded``: the call goes on but its sideband could not be attached (or re-attached)
    within its bound: only the browser bridge runs tools now, and no tamper check watches.
    """

    CREATED = "created"
    OFFERED = "offered"
    LIVE = "live"
    DEGRADED = "degraded"
    ENDED = "ended"
    FAILED = "failed"


CALL_RUNNING_STATES = (SessionState.LIVE, SessionState.DEGRADED)
"""The provider call exists and has not been seen to end."""
TERMINAL_STATES = (SessionState.ENDED, SessionState.FAILED)
"""A session never leaves these: the one transition into them is its end."""


class SidebandState(enum.StrEnum):
    DISABLED = "disabled"
    """Bridge-only session."""
    PENDING = "pending"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"
    FAILED = "failed"


class ToolCallStatus(enum.StrEnum):
    """``pending → running → succeeded | failed``; ``denied`` and ``cancelled`` never ran.

    The last step, ``→ injected``, is ``ToolCall.injected_at``: set once the output is at the
    provider, so the outcome stays readable in ``status``. Each step is written before the
    side effect that follows it (running before the tool runs, the outcome and the output's
    item id before it is sent), which is what makes a crash at any point recoverable.
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DENIED = "denied"
    CANCELLED = "cancelled"
    HELD = "held"
    """An approval-gated call waiting for an operator (``approval = "required"``): the model
    already has a pending output; approval moves it on to ``running``, a denial or an expiry
    to ``denied``."""

    @property
    def settled(self) -> bool:
        return self not in (ToolCallStatus.PENDING, ToolCallStatus.RUNNING, ToolCallStatus.HELD)


class ToolPath(enum.StrEnum):
    SIDEBAND = "sideband"
    BRIDGE = "bridge"


def _tz() -> DateTime:
    return DateTime(timezone=True)


def _usage_count() -> Mapped[int]:
    # BigInteger: an API key's sum over many sessions is taken with SUM() over these.
    return mapped_column(BigInteger, default=0, server_default="0")


def _counter() -> Mapped[int]:
    """A per-session counter the event log increments (starts at 0 for existing rows)."""
    return mapped_column(BigInteger, default=0, server_default="0")


class Base(AsyncAttrs, DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON, datetime: _tz()}


DEFAULT_TENANT: Final = "default"
"""The tenant of single-team use: every key and session before tenants existed is its."""
ALL_TOOLS: Final = "*"
"""A tool grant that allows every tool in the registry (the development key's, and keys made
before grants existed)."""


class Tenant(Base):
    """A team sharing the broker: its keys see only its own sessions, within its caps."""

    __tablename__ = "tenants"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    retention_days: Mapped[int | None]
    """Ended sessions' content is erased after this many days (``None``: the broker's
    ``BROKER_RETENTION_DAYS``)."""
    quotas: Mapped[dict[str, Any] | None]
    """Spend caps over all the tenant's keys (``None``: none); see :mod:`broker.auth.quotas`."""


class ApiKey(Base):
    """An app backend's credential; only the SHA-256 of the key is stored."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]
    tenant_id: Mapped[str | None] = mapped_column(
        String(40), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT
    )
    """Its tenant; ``None``: a cross-tenant key (made so explicitly, by a cross-tenant key)."""
    tool_grants: Mapped[list[str]] = mapped_column(
        JSON, default=list, server_default=f'["{ALL_TOOLS}"]'
    )
    """The tools it may put in a session's allowlist (:data:`ALL_TOOLS`: any). New keys get
    none unless given; keys made before grants existed keep every tool."""
    quotas: Mapped[dict[str, Any] | None]
    """Spend caps of this key alone (``None``: none); see :mod:`broker.auth.quotas`."""


class ConnectionType(enum.StrEnum):
    """How the session's audio reaches the provider."""

    WEBRTC = "webrtc"
    """A browser's WebRTC call; the broker watches it over the sideband."""
    TRUSTED_SERVER = "trusted_server"
    """An app backend's WebSocket through the broker to a provider WebSocket session (no
    browser): the one kind whose media crosses the broker."""
    SIP = "sip"
    """A phone call the provider answered on its SIP trunk (``realtime.call.incoming``): no
    browser; the caller is as untrusted as a page and the sideband is the only tool path."""


class SessionRow(Base):
    """One brokered realtime session (and, once offered, its provider call)."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner_key_id: Mapped[str] = mapped_column(String(40))
    tenant_id: Mapped[str] = mapped_column(
        String(40), default=DEFAULT_TENANT, server_default=DEFAULT_TENANT
    )
    """The owner key's tenant when the session was made: what every read is scoped by."""
    state: Mapped[str] = mapped_column(String(16), default=SessionState.CREATED)
    provider: Mapped[str] = mapped_column(String(40))
    model: Mapped[str] = mapped_column(String(100))
    instructions: Mapped[str] = mapped_column(Text)
    voice: Mapped[str] = mapped_column(String(40))
    tools: Mapped[list[str]]
    sideband_enabled: Mapped[bool]
    sideband_state: Mapped[str] = mapped_column(String(16))
    call_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata")
    end_reason: Mapped[str | None] = mapped_column(String(200))
    max_duration_s: Mapped[int]
    idle_timeout_s: Mapped[int]
    max_tool_calls: Mapped[int]
    max_concurrent_tools: Mapped[int]
    max_argument_bytes: Mapped[int]
    tamper_policy: Mapped[str] = mapped_column(String(16))
    page_items: Mapped[str] = mapped_column(String(16), default="refuse", server_default="refuse")
    """What becomes of system/assistant messages the page adds (:class:`PageItemsPolicy`)."""
    page_responses: Mapped[str] = mapped_column(String(16), default="allow", server_default="allow")
    """What becomes of responses the page starts (:class:`PageResponsesPolicy`)."""
    input_transcription: Mapped[dict[str, Any] | None]
    """The call's ``audio.input.transcription`` (``{model, language?, prompt?}``); ``NULL``:
    not transcribed (:mod:`broker.session.transcription`)."""
    trace_parent: Mapped[str | None] = mapped_column(String(55))
    """The W3C ``traceparent`` of the span that created the session, when its creator's
    request carried a trace and the broker traced it: the call's spans link to it
    (:mod:`broker.tracing`). An id, never a secret."""
    offer_jti: Mapped[str | None] = mapped_column(String(64))
    """The ``jti`` of the client secret that made the offer: it stays valid for this
    session's bridge while the call is live, and for nothing else."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    offered_at: Mapped[datetime | None]
    live_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    notify_ended: Mapped[bool] = mapped_column(default=False, server_default=false())
    """Announce the session's end with a ``session.ended`` webhook: webhooks were configured
    when it was created. The end's transaction queues it (:mod:`broker.webhooks.sender`)."""
    # Token usage summed over the call's response.done events (broker.record.usage): folded in by
    # the transaction that stores those events in the event log.
    usage_responses: Mapped[int] = _usage_count()
    usage_input_tokens: Mapped[int] = _usage_count()
    usage_output_tokens: Mapped[int] = _usage_count()
    usage_total_tokens: Mapped[int] = _usage_count()
    usage_input_text_tokens: Mapped[int] = _usage_count()
    usage_input_audio_tokens: Mapped[int] = _usage_count()
    usage_input_cached_tokens: Mapped[int] = _usage_count()
    usage_output_text_tokens: Mapped[int] = _usage_count()
    usage_output_audio_tokens: Mapped[int] = _usage_count()
    # Input transcription's usage, summed over its completed events (same fold).
    usage_transcriptions: Mapped[int] = _usage_count()
    usage_transcription_input_tokens: Mapped[int] = _usage_count()
    usage_transcription_output_tokens: Mapped[int] = _usage_count()
    usage_transcription_total_tokens: Mapped[int] = _usage_count()
    usage_transcription_input_text_tokens: Mapped[int] = _usage_count()
    usage_transcription_input_audio_tokens: Mapped[int] = _usage_count()
    usage_transcription_ms: Mapped[int] = _usage_count()
    # The event log's counters (broker.record.event_log, broker.record.event_classes): folded
    # in by the transaction that stores the events, so the session list never scans
    # session_events.
    events_stored: Mapped[int] = _counter()
    """Events in this session's log."""
    events_coalescible: Mapped[int] = _counter()
    """Coalescible events stored (capped by ``BROKER_EVENT_LOG_MAX_COALESCIBLE``)."""
    events_coalescible_bytes: Mapped[int] = _counter()
    """Their redacted payloads' size as compact JSON (capped too)."""
    events_dropped: Mapped[int] = _counter()
    """Coalescible events not stored because a cap was reached."""
    events_errors: Mapped[int] = _counter()
    """Provider ``error`` events stored (always kept)."""
    last_event_at: Mapped[datetime | None]
    """When the newest stored event was recorded."""
    erased_at: Mapped[datetime | None]
    """When its content (events, transcript, tool arguments and outputs, audit bodies) was
    erased, by retention or ``DELETE /api/v1/sessions/{id}``; the row stays, as a tombstone."""
    connection_type: Mapped[str] = mapped_column(
        String(16), default=ConnectionType.WEBRTC, server_default=ConnectionType.WEBRTC.value
    )
    service_id: Mapped[str | None] = mapped_column(String(128))
    """A trusted session's backend service (for logs and the ops view)."""
    server_tools: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    """A trusted session's own tools (``{name, description, parameters}``), run by its backend
    over its WebSocket; ``None`` for browser sessions."""
    sip_line: Mapped[str | None] = mapped_column(String(64))
    """A phone call's configured line (picked by the dialled number)."""
    caller: Mapped[str | None] = mapped_column(String(128))
    """A phone call's caller (the ``From`` number, redacted if the line says so)."""
    sip_headers: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)
    """A phone call's SIP headers as delivered (``[{name, value}]``, redacted as configured):
    the caller's own, untrusted."""

    __table_args__ = (
        Index("ix_sessions_state_created_at", "state", "created_at"),
        Index("ix_sessions_state_sideband", "state", "sideband_enabled"),
        # Usage per API key sums the key's sessions.
        Index("ix_sessions_owner_key_id", "owner_key_id"),
        # Every tenant's reads, and its quotas (sessions and tokens since a day's start).
        Index("ix_sessions_tenant_created_at", "tenant_id", "created_at"),
    )


class UsedClientSecret(Base):
    """A client secret spent on an offer; a second use is a replay (``token_replayed``)."""

    __tablename__ = "used_client_secrets"

    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    used_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    """After this the token is refused as expired anyway; the row may be pruned."""


class ToolCall(Base):
    """One function call of one session; ``(session_id, call_id)`` is unique, so it runs once."""

    __tablename__ = "tool_calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    call_id: Mapped[str] = mapped_column(String(128))
    tool: Mapped[str] = mapped_column(String(100))
    arguments: Mapped[str] = mapped_column(Text)
    """As shown: a tool's ``redact`` fields are keyed hashes (:mod:`broker.tools.redaction`)."""
    arguments_sealed: Mapped[str | None] = mapped_column(Text)
    """The raw arguments, sealed, for a tool with ``redact`` fields; opened only to run it."""
    decision: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=ToolCallStatus.PENDING)
    path: Mapped[str | None] = mapped_column(String(16))
    """Which path executed (or decided) the call: ``sideband`` or ``bridge``."""
    seen_by: Mapped[str] = mapped_column(String(16))
    """Which path reported the call first."""
    output: Mapped[str | None] = mapped_column(Text)
    """As shown (redacted like ``arguments``)."""
    output_sealed: Mapped[str | None] = mapped_column(Text)
    """The raw output, sealed (a redacting tool's): what is sent to the model, again after a
    restart."""
    error: Mapped[str | None] = mapped_column(Text)
    response_id: Mapped[str | None] = mapped_column(String(128))
    item_id: Mapped[str | None] = mapped_column(String(128))
    """The provider's ``function_call`` item, to ask after a crash whether it finished."""
    output_item_id: Mapped[str | None] = mapped_column(String(64))
    """The id our ``function_call_output`` item is created with, chosen when the outcome is
    recorded: after a crash the provider is asked whether it has it before sending again."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    injected_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("session_id", "call_id", name="uq_tool_calls_session_call"),
        Index("ix_tool_calls_session_status", "session_id", "status"),
    )


class ApprovalStatus(enum.StrEnum):
    """``pending → approved | denied | expired``; only ``pending`` changes."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    EXPIRED = "expired"


class Approval(Base):
    """An operator's decision on one approval-gated tool call (``approval = "required"``)."""

    __tablename__ = "approvals"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(40))
    call_id: Mapped[str] = mapped_column(String(128))
    tool: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(16), default=ApprovalStatus.PENDING)
    requested_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    decided_at: Mapped[datetime | None]
    decided_by: Mapped[str | None] = mapped_column(String(40))
    """The operator's API key id (``None``: undecided, or expired)."""
    reason: Mapped[str | None] = mapped_column(String(500))

    __table_args__ = (
        UniqueConstraint("session_id", "call_id", name="uq_approvals_session_call"),
        Index("ix_approvals_status_expires_at", "status", "expires_at"),
        Index("ix_approvals_tenant_requested_at", "tenant_id", "requested_at"),
    )


class ToolCallback(Base):
    """Where a long-running (``http-async``) tool's backend posts its result, once.

    ``id`` is the unguessable part of the signed callback URL; the waiting instance polls the
    row, so the callback may land on any instance.
    """

    __tablename__ = "tool_callbacks"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    call_id: Mapped[str] = mapped_column(String(128))
    tool: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    received_at: Mapped[datetime | None]
    result: Mapped[str | None] = mapped_column(Text)
    result_status: Mapped[str | None] = mapped_column(String(16))

    __table_args__ = (Index("ix_tool_callbacks_session_call", "session_id", "call_id"),)


class SipDelivery(Base):
    """One ``realtime.call.incoming`` delivery taken.

    ``webhook-id`` is unique: a repeat, to this instance or another, is answered without
    acting twice.
    """

    __tablename__ = "sip_deliveries"

    webhook_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    call_id: Mapped[str] = mapped_column(String(128))
    line: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    """``accept``, ``reject`` or ``refer`` (what the line said), or ``unknown`` (no line)."""
    session_id: Mapped[str | None] = mapped_column(String(40))

    __table_args__ = (Index("ix_sip_deliveries_received_at", "received_at"),)


class SessionEvent(Base):
    """One event of a session's sideband traffic (payload redacted), in order."""

    __tablename__ = "session_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    seq: Mapped[int]
    direction: Mapped[str] = mapped_column(String(8))
    """``in`` (provider → broker), ``out`` (broker → provider) or ``broker`` (a decision)."""
    type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]]
    at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (UniqueConstraint("session_id", "seq", name="uq_session_events_session_seq"),)


class DisabledTool(Base):
    """A tool an operator switched off: every new call to it is denied, in every session."""

    __tablename__ = "disabled_tools"

    tool: Mapped[str] = mapped_column(String(100), primary_key=True)
    disabled_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_by: Mapped[str] = mapped_column(String(40))
    """The API key id of the operator."""
    reason: Mapped[str | None] = mapped_column(String(500))


class WebhookStatus(enum.StrEnum):
    """``pending → delivered | failed``; a pending row may be retried many times."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    """Out of attempts, or refused for good (a 4xx other than 408 and 429)."""


class WebhookDelivery(Base):
    """One webhook event to deliver: a row of the outbox.

    Queued in the transaction that made the event happen, posted by
    :class:`broker.webhooks.sender.WebhookSender` until delivered or failed. ``(session_id, type)``
    is unique: a session's end is announced once.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    """Sent as ``Webhook-Id`` and the payload's ``id``: the same on every attempt, so a
    receiver can drop a repeat."""
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16), default=WebhookStatus.PENDING)
    attempts: Mapped[int] = mapped_column(default=0)
    """Attempts started (counted when claimed, so a crash mid-attempt still counts)."""
    next_attempt_at: Mapped[datetime]
    """When the row may be claimed next; while an attempt runs, the end of its lease."""
    payload: Mapped[str | None] = mapped_column(Text)
    """The JSON body, rendered at the first attempt and sent byte for byte on every retry."""
    last_status: Mapped[int | None]
    """The receiver's HTTP status on the last attempt (``None``: no answer)."""
    last_error: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("session_id", "type", name="uq_webhook_deliveries_session_type"),
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
    )


class BrokerInstance(Base):
    """One running broker process sharing the database, kept alive by its heartbeat.

    Times are seconds of the **database's** clock (:func:`broker.db.dialect.db_now`), never a
    host's: every instance compares them with the same clock.
    """

    __tablename__ = "broker_instances"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    started_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    """Past this without a heartbeat the instance counts as gone."""
    draining: Mapped[bool] = mapped_column(Boolean, default=False)
    """Stopping: hands its calls over and takes none."""
    shared_signing_key: Mapped[bool] = mapped_column(Boolean, default=False)
    """Its client-secret signing key was configured, not a per-host generated file."""
    key_fingerprint: Mapped[str] = mapped_column(String(64), default="")
    """A one-way digest of its signing and admin keys: instances that disagree refuse to
    start together (a client secret minted by one must verify on every other)."""
    version: Mapped[str] = mapped_column(String(40), default="")


class CallLease(Base):
    """Which instance owns a running call, until when, under which fencing token.

    ``token`` grows by one at every change of owner: a write or a provider action an owner
    makes about the call first checks that the row still names it with its token and has not
    expired (:mod:`broker.db.fence`), so an owner that lost the lease (paused, partitioned)
    can no longer act. ``successor_id`` and ``successor_ready`` carry a make-before-break
    handoff: the owner asks (``handoff``), a successor claims it and attaches its sideband
    (``successor_ready``), then the owner lets go in one conditional update.
    """

    __tablename__ = "call_leases"

    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    owner_id: Mapped[str] = mapped_column(String(64))
    token: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[float] = mapped_column(Float)
    handoff: Mapped[bool] = mapped_column(Boolean, default=False)
    successor_id: Mapped[str | None] = mapped_column(String(64))
    successor_ready: Mapped[bool] = mapped_column(Boolean, default=False)

    __table_args__ = (Index("ix_call_leases_owner", "owner_id"),)


class CallCommandStatus(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"


class CallCommand(Base):
    """An action on a call, asked of the instance that owns it (hangup, instructions).

    The row is the source of truth; a ``NOTIFY`` only wakes the owner (and then the asker)
    sooner than their polls would.
    """

    __tablename__ = "call_commands"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("sessions.id", ondelete="CASCADE"))
    owner_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=CallCommandStatus.PENDING)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_call_commands_owner_status", "owner_id", "status"),)


class RateBucket(Base):
    """A token bucket every broker instance on a PostgreSQL database spends from.

    ``key`` is the limiter's name and the limited thing (``create:<key_id>``,
    ``offer:<session_id>``). ``tokens`` never goes below zero; it is the level at
    ``updated_at``, seconds of the **database's** clock (``clock_timestamp()``), and refills
    from there when next read (:mod:`broker.db.queries.rate_buckets`). SQLite keeps its
    buckets in memory (one process) and leaves this table empty.
    """

    __tablename__ = "rate_buckets"

    key: Mapped[str] = mapped_column(String(120), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class AuditPending(Base):
    """An audit record written with the action it records, not yet chained.

    Inserted in the action's own transaction (no lock, no serialization point); the chainer
    (:class:`broker.audit.trail.AuditTrail`, one per instance) gives it its ``seq``, links,
    signs and moves it to ``audit_records``. ``body`` is already redacted canonical JSON.
    """

    __tablename__ = "audit_pending"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[str] = mapped_column(String(32))
    session_id: Mapped[str | None] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(120))
    tool: Mapped[str | None] = mapped_column(String(100))
    decision: Mapped[str | None] = mapped_column(String(16))
    body: Mapped[str] = mapped_column(Text)


class AuditRecord(Base):
    """One record of the signed audit chain (:mod:`broker.audit.records`).

    Never updated but for an erasure (``body`` set to ``NULL``, announced by a later
    ``audit.erased`` record); never deleted. ``session_id`` is no foreign key: the trail
    outlives what it describes.
    """

    __tablename__ = "audit_records"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(32))
    """UTC, microseconds, fixed width (``2026-12-05T00:10:08.123456Z``): text order is time
    order."""
    session_id: Mapped[str | None] = mapped_column(String(40))
    kind: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(120))
    tool: Mapped[str | None] = mapped_column(String(100))
    decision: Mapped[str | None] = mapped_column(String(16))
    body: Mapped[str | None] = mapped_column(Text)
    """Canonical JSON (RFC 8785); ``NULL`` once erased."""
    body_sha256: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(32))
    signature: Mapped[str] = mapped_column(String(128))
    erased_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_audit_records_session_seq", "session_id", "seq"),
        Index("ix_audit_records_kind_seq", "kind", "seq"),
        Index("ix_audit_records_at", "at"),
    )


class AuditHead(Base):
    """The chain's head: one row (``id`` 1), locked by whoever chains next."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class AuditKey(Base):
    """A public key that signed (or signs) audit records: published for good."""

    __tablename__ = "audit_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    public_key: Mapped[str] = mapped_column(Text)
    """PEM (SubjectPublicKeyInfo)."""
    added_at: Mapped[datetime] = mapped_column(default=utcnow)
