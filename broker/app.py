"""The application factory: routes, middleware, typed state and resource lifetimes."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import secrets
from collections.abc import AsyncIterator
from http.cookiejar import CookieJar, DefaultCookiePolicy

import aiohttp
import httpx
from aiohttp import web

from broker import app_state, tracing
from broker.api._bodies import MAX_REQUEST_BYTES
from broker.api.cors import cors_middleware
from broker.api.demo import setup_demo
from broker.api.request_context import log_context_middleware
from broker.api.routes import setup_routes
from broker.audit.redaction import FieldRedactor
from broker.audit.signing import load_or_create_signer
from broker.audit.trail import AuditTrail
from broker.auth.browser_limits import BrowserLimits
from broker.auth.shared_ratelimit import RateLimits
from broker.auth.stream_slots import StreamSlots
from broker.call.ownership import (
    CHANNEL_EVENTS,
    CHANNEL_WAKE,
    CallOwnership,
    key_fingerprint,
)
from broker.call.supervisor import SidebandSupervisor
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.notices import Notices
from broker.db.write_gate import WriteGate
from broker.errors import problem_middleware
from broker.metrics import BrokerMetrics
from broker.overload import OverloadGuard, OverloadLimits
from broker.record.event_log import EventCaps, EventLog
from broker.record.event_writer import grown_elsewhere
from broker.record.redaction import ToolFields
from broker.session.approvals import ApprovalService
from broker.session.quota_watch import QuotaWatch
from broker.session.reaper import SessionReaper
from broker.session.retention import RetentionSweeper
from broker.session.service import SessionService
from broker.settings import Settings
from broker.sip.service import sip_ctx
from broker.tools.async_executor import CallbackStore
from broker.tools.breaker import CircuitBreakers
from broker.tools.dispatch import ToolDispatcher
from broker.tools.registry import load_registry
from broker.webhooks.sender import WebhookConfig, WebhookSender
from sideband import (
    ApiKeyCredential,
    AzureOpenAIProvider,
    CredentialSource,
    OpenAICompatibleProvider,
    Provider,
    TokenCommand,
)

logger = logging.getLogger(__name__)

try:
    BROKER_VERSION = importlib.metadata.version("sideband-broker")
except importlib.metadata.PackageNotFoundError:  # a checkout that was never installed
    BROKER_VERSION = "0"


def create_app(settings: Settings) -> web.Application:
    """Build the broker. Resources open in ``cleanup_ctx`` order and close in reverse."""
    # CORS sits outside the problem middleware so that rendered errors get its headers too.
    # client_max_size backs up the per-route limits for any read that bypasses read_body.
    app = web.Application(
        middlewares=[log_context_middleware, cors_middleware, problem_middleware],
        client_max_size=MAX_REQUEST_BYTES,
    )
    app[app_state.SETTINGS] = settings
    # Metrics hold no resource, so they need no cleanup_ctx; created first, every context
    # below may count.
    app[app_state.METRICS] = BrokerMetrics(
        tenant_labels=settings.metrics_tenant_labels, max_tenants=settings.metrics_max_tenants
    )
    app[app_state.SHUTTING_DOWN] = asyncio.Event()
    app[app_state.STREAM_SLOTS] = StreamSlots(settings.event_streams_per_key)
    app.on_shutdown.append(_shutting_down)
    # First in, last out: spans of everything below are flushed at the very end.
    app.cleanup_ctx.append(tracing_ctx)
    # Order matters: the supervisor (services_ctx) uses the DB, the provider and the tools,
    # so it is registered last and therefore stopped first.
    app.cleanup_ctx.append(db_ctx)
    # The chainer needs only the database; it stops after everything that records has.
    app.cleanup_ctx.append(audit_ctx)
    # Webhooks need only the database; registered next to it, the sender stops after the
    # supervisor has drained (an end recorded meanwhile may still go out, or waits, queued).
    app.cleanup_ctx.append(webhooks_ctx)
    app.cleanup_ctx.append(provider_ctx)
    app.cleanup_ctx.append(tools_ctx)
    app.cleanup_ctx.append(services_ctx)
    # Stopped before the supervisor: calls still being answered end first.
    app.cleanup_ctx.append(sip_ctx)
    setup_routes(app)
    if settings.demo:
        setup_demo(app)
    return app


async def _shutting_down(app: web.Application) -> None:
    app[app_state.SHUTTING_DOWN].set()
    if app_state.SESSIONS in app:
        # Trusted sessions' backends hold sockets open: their sessions end now.
        await app[app_state.SESSIONS].trusted.close()
    if app_state.EVENT_LOG in app:
        # Event streams sleep until their session's log changes: wake them to see the flag.
        app[app_state.EVENT_LOG].wakeups.notify_all()


async def tracing_ctx(app: web.Application) -> AsyncIterator[None]:
    """With ``BROKER_OTEL``, the OpenTelemetry SDK as the standard ``OTEL_*`` variables say.

    Without it the broker's spans go to the global provider: nowhere, unless an application
    embedding the broker set one (broker/tracing.py).
    """
    if not app[app_state.SETTINGS].otel:
        yield
        return
    provider = tracing.start_sdk()
    try:
        yield
    finally:
        # The SDK's shutdown blocks while it exports what is batched.
        await asyncio.to_thread(tracing.stop_sdk, provider)


async def db_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[app_state.SETTINGS]
    # A paused instance's locks go soon after its leases run out (a third of a lease, and
    # never under 2 s: a busy event loop may pause between a transaction's statements).
    engine = create_engine(
        settings.database_url, idle_transaction_timeout_s=max(2.0, settings.lease_ttl_s / 3)
    )
    app[app_state.ENGINE] = engine
    sessionmaker = make_sessionmaker(engine)
    event_log = EventLog(
        EventCaps(
            coalescible_events=settings.event_log_max_coalescible,
            coalescible_bytes=settings.event_log_max_coalescible_bytes,
        ),
        app[app_state.METRICS],
        max_pending=settings.event_log_max_pending,
    )
    # Bound to the sessionmaker: every event-log writer holds it, so each finds the caps and
    # the wake-ups of this app without being handed them; the hot writers find the gate.
    event_log.bind(sessionmaker)
    WriteGate(enabled=engine.dialect.name == "sqlite").bind(sessionmaker)
    app[app_state.SESSIONMAKER] = sessionmaker
    app[app_state.EVENT_LOG] = event_log
    # Known only with the engine: on PostgreSQL the buckets are rows every instance shares.
    app[app_state.RATE_LIMITS] = RateLimits.for_engine(engine)
    app[app_state.BROWSER_LIMITS] = BrowserLimits(settings, app[app_state.RATE_LIMITS])
    app[app_state.METRICS].track_event_log(
        lambda: event_log.pending_events, lambda: event_log.lag_s
    )
    yield
    await event_log.close()
    await engine.dispose()


async def audit_ctx(app: web.Application) -> AsyncIterator[None]:
    """The audit trail's chainer and checkpoint publisher (:mod:`broker.audit.trail`)."""
    settings = app[app_state.SETTINGS]
    signer = load_or_create_signer(
        settings.audit_signing_key.reveal() if settings.audit_signing_key is not None else None,
        settings.audit_signing_key_file,
    )
    trail = AuditTrail(
        app[app_state.SESSIONMAKER],
        signer,
        checkpoint_file=settings.audit_checkpoint_file,
        checkpoint_interval_s=settings.audit_checkpoint_interval_s,
    )
    await trail.start()
    app[app_state.AUDIT] = trail
    app[app_state.REDACTOR] = FieldRedactor(settings.redaction_secret)
    app[app_state.METRICS].track_audit(lambda: trail.chained, lambda: trail.pending)
    chaining = asyncio.create_task(trail.run(), name="audit-chainer")
    logger.info("audit trail signing key_id=%s", signer.key_id)
    try:
        yield
    finally:
        chaining.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await chaining
        await trail.close()


async def webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """The ``session.ended`` sender, when a webhook URL is configured (else nothing)."""
    config = WebhookConfig.from_settings(app[app_state.SETTINGS])
    if config is None:
        yield
        return
    # Its own client: no cookies kept between deliveries, no proxy from the environment.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False) as http:
        sender = WebhookSender(
            app[app_state.SESSIONMAKER],
            http,
            config,
            on_attempt=app[app_state.METRICS].webhook_attempt,
            audit_head=app[app_state.AUDIT].current_head,
        )
        app[app_state.WEBHOOKS] = sender
        sender.start()
        try:
            yield
        finally:
            await sender.close()


async def provider_ctx(app: web.Application) -> AsyncIterator[None]:
    """The provider HTTP client, and the built-in emulator when no provider key is set."""
    settings = app[app_state.SETTINGS]
    # No connection limit: every live sideband holds one connection for its whole call, and
    # aiohttp's default pool (100) would make the 101st attach wait for a free slot forever.
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    app[app_state.PROVIDER_HTTP] = http
    runner: web.AppRunner | None = None
    try:
        provider: Provider
        if settings.uses_builtin_provider:
            runner, provider = await start_builtin_provider(settings, http)
            app[app_state.EMULATOR_RUNNER] = runner
        elif settings.provider == "azure":
            assert settings.provider_base_url
            provider = AzureOpenAIProvider(
                settings.provider_base_url,
                _azure_credential(settings),
                http,
                timeout=settings.provider_timeout,
                webrtc_filter=settings.webrtc_filter,
            )
            logger.info(
                "provider %s at %s webrtc_filter=%s credential=%s",
                provider.name,
                provider.base_url,
                "on" if settings.webrtc_filter else "off",
                "token command" if settings.azure_token_command else "api-key",
            )
        else:
            assert settings.provider_base_url and settings.provider_api_key
            provider = OpenAICompatibleProvider(
                settings.provider_base_url,
                settings.provider_api_key.reveal(),
                http,
                timeout=settings.provider_timeout,
            )
            logger.info("provider %s at %s", provider.name, provider.base_url)
        app[app_state.PROVIDER] = provider
        yield
    finally:
        if runner is not None:
            await runner.cleanup()
        await http.close()


def _azure_credential(settings: Settings) -> CredentialSource:
    """The resource key, or the Entra token command (run per request and per dial)."""
    argv = settings.azure_token_argv
    if argv is not None:
        return TokenCommand(argv, timeout=settings.provider_timeout)
    assert settings.provider_api_key is not None
    return ApiKeyCredential(settings.provider_api_key.reveal())


async def start_builtin_provider(
    settings: Settings, http: aiohttp.ClientSession
) -> tuple[web.AppRunner, Provider]:
    """Serve the emulator on loopback and a provider client for it; the caller cleans it up.

    The emulator plays the configured provider: with ``BROKER_PROVIDER=azure`` its Azure
    flavour, reached through the Azure provider (two-step offer, ``api-key``, the filter),
    so the whole stack can be tried without an Azure resource.

    Where ``broker serve`` imports ``emulator``, and only when it runs one: a broker with a
    provider key never loads it, nor the media stack it needs (aiortc, av, numpy).
    """
    from emulator import EmulatorSettings
    from emulator import create_app as create_emulator_app

    # A random key per start: the emulator is only reachable through this broker's own
    # provider client, never configured by hand.
    key = "sk-emulator-" + secrets.token_urlsafe(24)
    azure = settings.provider == "azure"
    emulator = EmulatorSettings(api_key=key, flavor="azure" if azure else "openai")
    runner = web.AppRunner(create_emulator_app(emulator))
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", settings.emulator_port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    port = runner.addresses[0][1]
    provider: Provider
    if azure:
        provider = AzureOpenAIProvider(
            f"http://127.0.0.1:{port}/openai/v1",
            ApiKeyCredential(key),
            http,
            timeout=settings.provider_timeout,
            webrtc_filter=settings.webrtc_filter,
            name="emulator-azure",
        )
    else:
        provider = OpenAICompatibleProvider(
            f"http://127.0.0.1:{port}/v1",
            key,
            http,
            timeout=settings.provider_timeout,
            name="emulator",
        )
    logger.info(
        "no provider key configured: built-in emulator (%s) serving at %s",
        emulator.flavor,
        provider.base_url,
    )
    return runner, provider


class NoCookies(CookieJar):
    """A cookie jar that refuses every cookie."""

    def __init__(self) -> None:
        super().__init__(policy=DefaultCookiePolicy(allowed_domains=[]))


async def tools_ctx(app: web.Application) -> AsyncIterator[None]:
    # Tool backends are not trusted with state: no cookie is ever kept (one backend could
    # otherwise plant cookies sent to others), and no proxy or netrc comes from the
    # environment.
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(30.0, connect=5.0),
        cookies=NoCookies(),
        trust_env=False,
    ) as http:
        app[app_state.TOOL_HTTP] = http
        # http_async tools' backends call back to BROKER_PUBLIC_URL (none set: no callbacks).
        callbacks = CallbackStore(app[app_state.SESSIONMAKER], app[app_state.SETTINGS].public_url)
        registry = load_registry(
            app[app_state.SETTINGS].tools_config,
            http,
            callbacks=callbacks,
            out_of_band_responses=app[app_state.PROVIDER].capabilities.out_of_band_responses,
        )
        app[app_state.TOOLS] = registry
        app[app_state.METRICS].set_tools(registry)
        # Before any session's log records a call: the tools' redacted fields are hashed in
        # every event stored (broker.record.redaction).
        app[app_state.EVENT_LOG].tool_fields = ToolFields(
            app[app_state.REDACTOR],
            {name: spec.redact for name, spec in registry.items() if spec.redact},
        )
        settings = app[app_state.SETTINGS]
        metrics = app[app_state.METRICS]
        breakers = CircuitBreakers(
            settings.tool_breaker_failures,
            settings.tool_breaker_cooldown_s,
            on_change=lambda tool, _old, new: metrics.circuit_changed(tool, new.value),
        )
        app[app_state.DISPATCHER] = ToolDispatcher(
            app[app_state.SESSIONMAKER],
            registry,
            breakers,
            # Denied calls never ran: counted, not timed.
            on_finished=lambda tool, status, seconds, tenant: metrics.tool_finished(
                tool, status, None if status == "denied" else seconds, tenant
            ),
            # audit_ctx (registered before) made it: redacted fields' keyed hashes and seals.
            redactor=app[app_state.REDACTOR],
        )
        logger.info("tools loaded: %s", ", ".join(sorted(registry)) or "(none)")
        yield
        await app[app_state.DISPATCHER].drain()


async def services_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[app_state.SETTINGS]
    supervisor = SidebandSupervisor(
        app[app_state.SESSIONMAKER],
        app[app_state.PROVIDER],
        app[app_state.PROVIDER_HTTP],
        app[app_state.DISPATCHER],
        attach_timeout=settings.sideband_attach_timeout,
        reconnect_timeout=settings.sideband_reconnect_timeout,
        metrics=app[app_state.METRICS],
        probe_interval=settings.session_probe_interval_s,
    )
    app[app_state.SUPERVISOR] = supervisor
    ownership = CallOwnership(
        app[app_state.SESSIONMAKER],
        instance_id=settings.instance_id,
        ttl_s=settings.lease_ttl_s,
        # SQLite is one process: its calls are this one's from the start.
        single_process=app[app_state.ENGINE].dialect.name == "sqlite",
        shared_signing_key=settings.signing_key_configured,
        key_fingerprint=key_fingerprint(
            settings.signing_key.reveal(),
            settings.admin_key.reveal() if settings.admin_key is not None else None,
        ),
        version=BROKER_VERSION,
    )
    # Refuses to start beside other instances with keys they do not share.
    await ownership.register()
    supervisor.handoff_pending = ownership.handing_over
    app[app_state.OWNERSHIP] = ownership
    app[app_state.SESSIONS] = SessionService(
        settings,
        app[app_state.SESSIONMAKER],
        app[app_state.PROVIDER],
        app[app_state.TOOLS],
        app[app_state.DISPATCHER],
        supervisor,
        app[app_state.METRICS],
        ownership,
        rate_limits=app[app_state.RATE_LIMITS],
    )
    approvals = ApprovalService(
        app[app_state.SESSIONMAKER],
        app[app_state.DISPATCHER],
        supervisor,
        app[app_state.SESSIONS].call_actions,
        app[app_state.PROVIDER],
    )
    app[app_state.APPROVALS] = approvals
    app[app_state.METRICS].track_live_sessions(lambda: supervisor.live_count)
    overload = OverloadGuard(
        OverloadLimits(
            max_live_calls=settings.max_live_calls,
            max_loop_lag_s=settings.overload_loop_lag_s,
            retry_after_s=settings.overload_retry_after_s,
            max_event_log_lag_s=settings.overload_event_log_lag_s,
        ),
        lambda: supervisor.live_count,
        app[app_state.EVENT_LOG],
        app[app_state.METRICS],
    )
    app[app_state.OVERLOAD] = overload
    watching_load = asyncio.create_task(overload.run(), name="overload-guard")
    wakeups = app[app_state.EVENT_LOG].wakeups

    def grown(payload: str) -> None:
        for session_id in grown_elsewhere(payload):
            wakeups.notify(session_id)

    notices = Notices(
        settings.database_url, {CHANNEL_WAKE: ownership.notice, CHANNEL_EVENTS: grown}
    )
    listening = asyncio.create_task(notices.run(), name="database-notices")
    # Calls an earlier process controlled (a crash, a deploy), and calls whose owner died,
    # are taken up by the ownership task, from its first tick on.
    owning = asyncio.create_task(ownership.run(), name="call-ownership")
    reaper = SessionReaper(
        app[app_state.SESSIONMAKER],
        app[app_state.METRICS],
        # A trusted session's connect token may outlive a browser's client secret.
        client_secret_ttl_s=max(settings.client_secret_ttl, settings.trusted_token_ttl_s),
        # An offer is its provider requests (each bounded by the timeout; two, and a token
        # command's run, when the provider mints a client secret first) plus two transactions.
        offer_bound_s=(5 if app[app_state.PROVIDER].capabilities.offer_needs_client_secret else 3)
        * settings.provider_timeout,
    )
    app[app_state.REAPER] = reaper
    sweeping = asyncio.create_task(reaper.run(), name="session-reaper")
    quota_watch = QuotaWatch(app[app_state.SESSIONMAKER], app[app_state.SESSIONS].hang_up)
    app[app_state.QUOTA_WATCH] = quota_watch
    watching_quotas = asyncio.create_task(quota_watch.run(), name="quota-watch")
    retention = RetentionSweeper(
        app[app_state.SESSIONMAKER], app[app_state.AUDIT], settings.retention_days
    )
    app[app_state.RETENTION] = retention
    # Runs with no period set too: a tenant may set one of its own.
    erasing = asyncio.create_task(retention.run(), name="retention-sweeper")
    expiring = asyncio.create_task(approvals.run(), name="approval-sweeper")
    try:
        yield
    finally:
        for task in (expiring, erasing, sweeping, watching_quotas, watching_load, owning):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    # Make-before-break: other instances take over this one's calls before it lets go;
    # whatever is not taken within the grace is drained and released for any to take.
    handed = await ownership.hand_off_all(settings.shutdown_grace_s)
    if handed:
        logger.info("handed %d call(s) over to other instances", handed)
    await supervisor.close(grace=settings.shutdown_grace_s)
    await app[app_state.SESSIONS].drain()
    await ownership.release_all()
    listening.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await listening
