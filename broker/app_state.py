"""Every piece of shared app state, behind a typed key (no string keys, no module globals)."""

from __future__ import annotations

import asyncio

import aiohttp
import httpx
from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from broker.audit.redaction import FieldRedactor
from broker.audit.trail import AuditTrail
from broker.auth.browser_limits import BrowserLimits
from broker.auth.shared_ratelimit import RateLimits
from broker.auth.stream_slots import StreamSlots
from broker.call.ownership import CallOwnership
from broker.call.supervisor import SidebandSupervisor
from broker.metrics import BrokerMetrics
from broker.overload import OverloadGuard
from broker.record.event_log import EventLog
from broker.session.approvals import ApprovalService
from broker.session.quota_watch import QuotaWatch
from broker.session.reaper import SessionReaper
from broker.session.retention import RetentionSweeper
from broker.session.service import SessionService
from broker.settings import Settings
from broker.sip.calls import SipCalls
from broker.tools.dispatch import ToolDispatcher
from broker.tools.registry import ToolRegistry
from broker.webhooks.sender import WebhookSender
from sideband import Provider

SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", BrokerMetrics)
ENGINE = web.AppKey("engine", AsyncEngine)
SESSIONMAKER = web.AppKey("sessionmaker", async_sessionmaker[AsyncSession])
EVENT_LOG = web.AppKey("event_log", EventLog)
"""The event log's caps and wake-ups, bound to ``SESSIONMAKER`` (every writer finds it)."""
STREAM_SLOTS = web.AppKey("stream_slots", StreamSlots)
"""Open event streams per API key (``BROKER_EVENT_STREAMS_PER_KEY``)."""
RATE_LIMITS = web.AppKey("rate_limits", RateLimits)
"""Makes the rate limiters: shared through the database on PostgreSQL, in memory on SQLite."""
BROWSER_LIMITS = web.AppKey("browser_limits", BrowserLimits)
"""Per-session rate limits of the offer, bridge and end routes (``BROKER_BRIDGE_*``,
``BROKER_OFFER_*``)."""
PROVIDER_HTTP = web.AppKey("provider_http", aiohttp.ClientSession)
PROVIDER: web.AppKey[Provider] = web.AppKey("provider")
"""OpenAI's, Azure's or the built-in emulator's; what each allows is its ``capabilities``."""
TOOL_HTTP = web.AppKey("tool_http", httpx.AsyncClient)
TOOLS = web.AppKey("tools", ToolRegistry)
DISPATCHER = web.AppKey("dispatcher", ToolDispatcher)
SUPERVISOR = web.AppKey("supervisor", SidebandSupervisor)
OWNERSHIP = web.AppKey("ownership", CallOwnership)
"""This instance's leases on running calls (several instances on one database)."""
SESSIONS = web.AppKey("sessions", SessionService)
EMULATOR_RUNNER = web.AppKey("emulator_runner", web.AppRunner)
WEBHOOKS = web.AppKey("webhooks", WebhookSender)
"""The ``session.ended`` sender, present only when ``BROKER_WEBHOOK_URL`` is set."""
SHUTTING_DOWN = web.AppKey("shutting_down", asyncio.Event)
"""Set on shutdown, before aiohttp waits for handlers: long-lived streams end on it."""
"""The built-in provider's runner, present only when no provider key is configured."""
OVERLOAD = web.AppKey("overload", OverloadGuard)
"""The overload signal: new sessions and offers are refused while it holds."""
REAPER = web.AppKey("reaper", SessionReaper)
QUOTA_WATCH = web.AppKey("quota_watch", QuotaWatch)
"""Ends live calls past a hard spend cap (tests sweep it directly)."""
"""Ends stranded sessions (``created`` past their secret, ``offered`` past any offer)."""
RETENTION = web.AppKey("retention", RetentionSweeper)
"""Erases ended sessions' content past their tenant's retention period."""
AUDIT = web.AppKey("audit", AuditTrail)
"""This instance's audit chainer, signing key and checkpoint publisher."""
REDACTOR = web.AppKey("redactor", FieldRedactor)
APPROVALS = web.AppKey("approvals", ApprovalService)
"""Operators' decisions on approval-gated tool calls, and their expiry sweep."""
"""Keyed hashes and sealing of the fields tools name in ``redact``."""
SIP = web.AppKey("sip", SipCalls)
"""Phone calls (:mod:`broker.sip.calls`); absent when they are off."""
