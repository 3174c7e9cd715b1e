"""Prometheus metrics: one :class:`BrokerMetrics` per app, with its own registry.

Callers never build label values: each method takes a typed value (an enum, a tool name, a
provider exception) and maps it onto a small, fixed label set, so no label can grow without
bound and no free text (which could carry a secret or a user's words) reaches a label. A tool
name outside the registry is reported as ``other``; a session's end is counted by its
:class:`~broker.session.end_reason.EndReason` (both tamper ends as ``tamper``).

There is no module-level registry: several apps run in one test process, and each must count
only its own traffic. ``GET /metrics`` (``monitor:read``) serves :meth:`BrokerMetrics.render`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from broker.session.end_reason import EndReason
from broker.tenant_metrics import DEFAULT_MAX_TENANTS, TenantMetrics
from broker.version import VERSION
from sideband import ProviderError, ProviderTimeoutError, ProviderUnreachableError

NAMESPACE: Final = "broker"
OTHER: Final = "other"
"""The label value for anything outside a label's known set."""

OFFER_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Seconds; the provider's ``/calls`` usually answers in well under a second, and the
default ``BROKER_PROVIDER_TIMEOUT`` is 10 s."""
TOOL_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Seconds; up to the registry's longest allowed tool timeout (300 s)."""


class OfferOutcome(enum.StrEnum):
    """How an offer ended (label ``outcome`` of ``broker_offers_total``)."""

    ANSWERED = "answered"
    REFUSED = "refused"
    """The broker refused it before the provider: bad token, bad SDP, wrong state."""
    PROVIDER_ERROR = "provider_error"
    PROVIDER_TIMEOUT = "provider_timeout"
    PROVIDER_UNREACHABLE = "provider_unreachable"
    ERROR = "error"
    """Anything unexpected (a database failure, the broker stopping)."""


class ProviderOperation(enum.StrEnum):
    """The provider request that failed (label ``operation``)."""

    CREATE_CALL = "create_call"
    CLIENT_SECRET = "client_secret"
    """Azure's first offer step: minting the ephemeral key the call is created with."""
    HANGUP = "hangup"
    SIDEBAND_ATTACH = "sideband_attach"
    OTHER = OTHER


class SidebandKind(enum.StrEnum):
    """How a sideband attached (the controller's ``AttachKind``)."""

    ATTACH = "attach"
    """The first sideband of a new call."""
    RECONNECT = "reconnect"
    """Again, after this process lost it."""
    RESUME = "resume"
    """The first sideband of a restarted broker to a call it controlled before."""


class SidebandFailure(enum.StrEnum):
    """Why a sideband failed (label ``reason`` of ``broker_sideband_failures_total``)."""

    ATTACH_TIMEOUT = "attach_timeout"
    CALL_NOT_FOUND = "call_not_found"
    PROVIDER_ERROR = "provider_error"
    LOST = "lost"
    OTHER = OTHER


class EventCap(enum.StrEnum):
    """The cap a dropped coalescible event hit (``cap`` of ``broker_events_dropped_total``)."""

    EVENTS = "events"
    """The session already stores its most coalescible events (a count)."""
    BYTES = "bytes"
    """Storing it would pass the session's size budget for coalescible events."""
    OVERLOAD = "overload"
    """The event-log writer's queue is full: coalescible events are shed until it drains."""


CIRCUIT_READINGS: Final = {"closed": 0, "half_open": 1, "open": 2}
"""``broker_tool_circuit_state`` for each circuit breaker state (``BreakerState`` values)."""


class TamperKind(enum.StrEnum):
    """What a tamper event was (label ``kind`` of ``broker_tamper_events_total``)."""

    SESSION_CONFIG = "session_config"
    """The call's session drifted from the broker's config (a browser ``session.update``)."""
    FORGED_OUTPUT = "forged_output"
    """A ``function_call_output`` the broker did not send (the browser forged one)."""
    TAINTED_RESPONSE = "tainted_response"
    """A response that read a forged output or a page item (cancelled)."""
    PAGE_ITEM = "page_item"
    """An item only the model may add (a function call; system/assistant under ``refuse``)
    that the page added (deleted)."""
    UNPROVEN_CALL = "unproven_call"
    """A finished function call a resync could not prove the model made (not run)."""
    PAGE_RESPONSE = "page_response"
    """A response the page started, under ``page_responses: cancel`` (cancelled)."""
    OVERSIZED_FRAME = "oversized_frame"
    """A sideband frame over its size limit (the socket closed with 1009)."""
    OTHER = OTHER


_TAMPER_KINDS: Final = frozenset(kind.value for kind in TamperKind)

WEBHOOK_OUTCOMES: Final = ("delivered", "retry", "failed")
"""``outcome`` of ``broker_webhook_attempts_total`` (``broker.webhooks.sender.AttemptOutcome``)."""

TOKEN_LABELS: Final = (
    ("input", "text"),
    ("input", "audio"),
    ("input", "cached"),
    ("output", "text"),
    ("output", "audio"),
)
"""``(direction, modality)`` of ``broker_tokens_total``; ``cached`` input tokens are also
counted in their modality, as the provider reports them."""
TRANSCRIPTION_TOKEN_LABELS: Final = (
    ("input", "text"),
    ("input", "audio"),
    ("output", "text"),
)
"""``(direction, modality)`` of ``broker_transcription_tokens_total`` (its output is text)."""


QUOTA_CAPS: Final = tuple(
    f"{scope}.max_{limit}"
    for scope in ("key", "tenant")
    for limit in ("live_calls", "sessions_per_day", "tokens_per_day", "tokens_per_month")
)
"""The ``cap`` labels of ``broker_quota_refusals_total`` (:mod:`broker.auth.quotas`)."""
TOOL_OUTCOMES: Final = frozenset({"succeeded", "failed", "denied", "cancelled"})
"""The settled statuses of a tool call (``ToolCallStatus``), the ``outcome`` label's values."""


def end_reason_label(reason: str | None) -> EndReason:
    """The ``reason`` label of a session's stored ``end_reason`` (``other`` for unknown text)."""
    return EndReason.of(reason).label


def _status_label(status: int) -> str:
    # A status is a three-digit HTTP code; anything else would be a malformed answer.
    return str(status) if 100 <= status <= 599 else OTHER


def _count_tokens(
    counter: Counter, known: tuple[tuple[str, str], ...], tokens: dict[tuple[str, str], int]
) -> None:
    # Usage is provider input: keys outside ``known`` and negative counts are ignored.
    for key, count in tokens.items():
        if key in known and count > 0:
            counter.labels(*key).inc(count)


class _Scraped:
    """A registry as ``/metrics`` shows it: without the ``_created`` series.

    prometheus_client adds a ``<name>_created`` timestamp to every counter and histogram (one
    per label set) in the text format, which Prometheus stores as one more series each and no
    query here uses. Its switch for that is process-wide (``disable_created_metrics``), so the
    samples are dropped here, per registry, as the rest of this module keeps state per app.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            # ``collect`` builds new Metric objects on each call: trimming them is safe.
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


class _AuditReadings:
    """The audit chainer's numbers, read at each scrape from the chainer's own counts.

    A collector rather than a ``Counter``: the chainer (``broker.audit.trail``) keeps its
    count as a plain attribute (the benchmark reads it too), and a counter here would be a
    second copy to keep in step.
    """

    def __init__(self) -> None:
        self.chained: Callable[[], float] = lambda: 0.0
        self.pending: Callable[[], float] = lambda: 0.0

    def describe(self) -> Iterator[Metric]:
        return self._families(0.0, 0.0)

    def collect(self) -> Iterator[Metric]:
        return self._families(self.chained(), self.pending())

    @staticmethod
    def _families(chained: float, pending: float) -> Iterator[Metric]:
        yield CounterMetricFamily(
            f"{NAMESPACE}_audit_records_chained",
            "Audit records this instance chained and signed (moved from the outbox).",
            value=chained,
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_audit_pending",
            "Audit records waiting in the outbox to be chained, as the chainer last counted.",
            value=pending,
        )


class BrokerMetrics:
    """Every metric the broker exports, registered in a registry of its own.

    Methods are cheap and synchronous, and a value outside a label's known set becomes
    ``other`` rather than an error: instrumentation must not be able to fail a request.
    """

    def __init__(
        self, *, tenant_labels: bool = True, max_tenants: int = DEFAULT_MAX_TENANTS
    ) -> None:
        """Register every metric in a registry of this instance's own.

        ``tenant_labels`` and ``max_tenants``: the ``broker_tenant_*`` series
        (``BROKER_METRICS_TENANT_LABELS``, ``BROKER_METRICS_MAX_TENANTS``).
        """
        self._registry = CollectorRegistry(auto_describe=True)
        self._tools: frozenset[str] = frozenset()
        registry = self._registry
        # The standard process_*, python_gc_* and python_info series, as a default registry
        # has them: the collectors are stateless readers, so every app's registry shares them.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        Info(
            "build",
            "The broker's version (always 1; the version is the label).",
            namespace=NAMESPACE,
            registry=registry,
        ).info({"version": VERSION})
        self._offers = Counter(
            "offers_total",
            "Realtime offers by outcome.",
            ["outcome"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._offer_seconds = Histogram(
            "offer_seconds",
            "Offer round-trip through the broker, for offers that reached the provider.",
            namespace=NAMESPACE,
            registry=registry,
            buckets=OFFER_BUCKETS,
        )
        self._provider_errors = Counter(
            "provider_errors_total",
            "Failed provider requests by operation and HTTP status (or timeout, unreachable).",
            ["operation", "status"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._sessions_created = Counter(
            "sessions_created_total",
            "Sessions created.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self._sessions_ended = Counter(
            "sessions_ended_total",
            "Sessions that ended or failed, by reason.",
            ["reason"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._sideband_connects = Counter(
            "sideband_connects_total",
            "Sideband WebSockets attached, first time or after a loss.",
            ["kind"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._sideband_failures = Counter(
            "sideband_failures_total",
            "Sidebands that could not attach or were lost, by reason.",
            ["reason"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._sessions_degraded = Counter(
            "sessions_degraded_total",
            "Live sessions left without a sideband (the bridge runs their tools).",
            namespace=NAMESPACE,
            registry=registry,
        )
        self._live_sessions = Gauge(
            "live_sessions",
            "Calls this process is supervising now.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self._tool_calls = Counter(
            "tool_calls_total",
            "Settled tool calls by tool and outcome.",
            ["tool", "outcome"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._tool_seconds = Histogram(
            "tool_seconds",
            "Time a tool ran, for calls that ran.",
            ["tool"],
            namespace=NAMESPACE,
            registry=registry,
            buckets=TOOL_BUCKETS,
        )
        self._tool_circuit = Gauge(
            "tool_circuit_state",
            "Each tool's circuit breaker: 0 closed, 1 half-open, 2 open.",
            ["tool"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._dispatch_seconds = Histogram(
            "dispatch_seconds",
            "From a function call seen on the sideband to its output sent to the provider.",
            ["tool"],
            namespace=NAMESPACE,
            registry=registry,
            buckets=TOOL_BUCKETS,
        )
        self._tamper_events = Counter(
            "tamper_events_total",
            "Forged or unexpected client events seen on a call, by kind.",
            ["kind"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._tokens = Counter(
            "tokens_total",
            "Tokens the provider reported in response.done usage, by direction and modality.",
            ["direction", "modality"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._webhook_attempts = Counter(
            "webhook_attempts_total",
            "Webhook delivery attempts by outcome: delivered, retry (backing off), failed"
            " (given up).",
            ["outcome"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._session_probes = Counter(
            "session_probes_total",
            "Probes of the provider's session config (session.update with only its type).",
            namespace=NAMESPACE,
            registry=registry,
        )
        self._answers_held = Counter(
            "offer_answers_total",
            "SDP answers of calls with a sideband, by whether the sideband attached first"
            " (attached) or the answer went out first (late: the first attach resyncs).",
            ["sideband"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._responses = Counter(
            "responses_total",
            "Model responses completed (response.done) on supervised calls.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self._transcriptions = Counter(
            "transcriptions_total",
            "User turns transcribed (conversation.item.input_audio_transcription.completed)"
            " on supervised calls.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self._transcription_tokens = Counter(
            "transcription_tokens_total",
            "Tokens input transcription reported in its usage, by direction and modality.",
            ["direction", "modality"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._transcription_seconds = Counter(
            "transcription_audio_seconds_total",
            "Seconds of audio input transcription reported in its usage (models that bill"
            " time, such as whisper-1).",
            namespace=NAMESPACE,
            registry=registry,
        )
        self._events_dropped = Counter(
            "events_dropped_total",
            "Coalescible events (deltas and other high-rate traffic) not stored in a session's"
            " event log because the session reached its cap.",
            ["cap"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._events_folded = Counter(
            "events_folded_total",
            "Provider deltas counted and not stored: their done event carries the content.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self._event_log_pending = Gauge(
            "event_log_pending_events",
            "Events recorded and not yet stored by the event-log writer (every session's).",
            namespace=NAMESPACE,
            registry=registry,
        )
        self._event_log_lag = Gauge(
            "event_log_lag_seconds",
            "How long the oldest event not yet stored has waited for the event-log writer.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self._loop_lag = Gauge(
            "event_loop_lag_seconds",
            "How late the event loop ran its timers, on average over the last second.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self._overloaded = Gauge(
            "overloaded",
            "1 while the process refuses new sessions and offers (overload), else 0.",
            namespace=NAMESPACE,
            registry=registry,
        )
        self._overload_refusals = Counter(
            "overload_refusals_total",
            "Session creations and offers refused with 503 overloaded, by what was over.",
            ["reason"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._quota_refusals = Counter(
            "quota_refusals_total",
            "Sessions refused with 429 quota_exceeded, by the cap (key. or tenant., the limit).",
            ["cap"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._audit = _AuditReadings()
        registry.register(self._audit)
        # Known label values start at zero, so a rate() over them works from the first event.
        for cap in EventCap:
            self._events_dropped.labels(cap.value)
        for tamper in TamperKind:
            self._tamper_events.labels(tamper.value)
        for outcome in WEBHOOK_OUTCOMES:
            self._webhook_attempts.labels(outcome)
        for direction, modality in TOKEN_LABELS:
            self._tokens.labels(direction, modality)
        for direction, modality in TRANSCRIPTION_TOKEN_LABELS:
            self._transcription_tokens.labels(direction, modality)
        for outcome in OfferOutcome:
            self._offers.labels(outcome.value)
        for label in dict.fromkeys(reason.label for reason in EndReason):
            self._sessions_ended.labels(label.value)
        for kind in SidebandKind:
            self._sideband_connects.labels(kind.value)
        for quota_cap in QUOTA_CAPS:
            self._quota_refusals.labels(quota_cap)
        for failure in SidebandFailure:
            self._sideband_failures.labels(failure.value)
        self.trusted = TrustedMetrics(registry)
        """The trusted sessions' relay (the one place media crosses the broker)."""
        self.tenants = TenantMetrics(
            registry, NAMESPACE, enabled=tenant_labels, max_tenants=max_tenants
        )
        """Sessions, quota refusals and tool calls by tenant (a capped label; see its module)."""

    @property
    def registry(self) -> CollectorRegistry:
        """This app's registry (tests may read samples from it directly)."""
        return self._registry

    def set_tools(self, names: Iterable[str]) -> None:
        """Declare the tool registry's names: the only values the ``tool`` label takes."""
        self._tools = frozenset(names)
        for tool in sorted(self._tools):
            self._tool_circuit.labels(tool).set(CIRCUIT_READINGS["closed"])
            for outcome in sorted(TOOL_OUTCOMES):
                self._tool_calls.labels(tool, outcome)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition of every metric, and its content type."""
        return generate_latest(_Scraped(self._registry)), CONTENT_TYPE_LATEST

    # ---- offers and the provider ----------------------------------------------------------

    def offer_finished(self, outcome: OfferOutcome, seconds: float) -> None:
        """Count one offer; time it unless the broker refused it before the provider."""
        self._offers.labels(outcome.value).inc()
        if outcome is not OfferOutcome.REFUSED:
            self._offer_seconds.observe(seconds)

    def provider_error(self, operation: ProviderOperation, status: int | str) -> None:
        """Count one failed provider request.

        Args:
            operation: which request failed.
            status: the provider's HTTP status, or ``"timeout"`` / ``"unreachable"``.
        """
        if isinstance(status, int):
            label = _status_label(status)
        else:
            label = status if status in ("timeout", "unreachable") else OTHER
        self._provider_errors.labels(operation.value, label).inc()

    def provider_failed(
        self, exc: ProviderError | ProviderTimeoutError | ProviderUnreachableError
    ) -> None:
        """Count the failed provider request ``exc`` reports (its operation and status)."""
        try:
            operation = ProviderOperation(exc.operation)
        except ValueError:
            operation = ProviderOperation.OTHER
        if isinstance(exc, ProviderTimeoutError):
            self.provider_error(operation, "timeout")
        elif isinstance(exc, ProviderUnreachableError):
            self.provider_error(operation, "unreachable")
        else:
            self.provider_error(operation, exc.status)

    # ---- sessions ---------------------------------------------------------------------------

    def session_created(self, tenant_id: str) -> None:
        """Count a session written (by the API or a phone line), in all and by its tenant."""
        self._sessions_created.inc()
        self.tenants.session_created(tenant_id)

    def session_ended(self, reason: EndReason) -> None:
        """Count a session reaching ``ended`` or ``failed``, by why."""
        self._sessions_ended.labels(reason.label.value).inc()

    def track_live_sessions(self, count: Callable[[], int]) -> None:
        """Read ``live_sessions`` from ``count`` at each scrape (e.g. the supervisor's)."""
        self._live_sessions.set_function(count)

    # ---- sidebands --------------------------------------------------------------------------

    def sideband_connected(self, kind: SidebandKind) -> None:
        self._sideband_connects.labels(kind.value).inc()

    def sideband_failed(self, reason: SidebandFailure) -> None:
        self._sideband_failures.labels(reason.value).inc()

    def session_degraded(self) -> None:
        """Count a live session that lost its sideband and fell back to the bridge."""
        self._sessions_degraded.inc()

    def session_probed(self) -> None:
        """Count one probe of the provider's session config."""
        self._session_probes.inc()

    def answer_held(self, attached_first: bool) -> None:
        """Count one SDP answer by whether its sideband attached before it went out."""
        self._answers_held.labels("attached" if attached_first else "late").inc()

    # ---- tools ------------------------------------------------------------------------------

    def _tool(self, name: str) -> str:
        return name if name in self._tools else OTHER

    def tool_finished(
        self, tool: str, outcome: str, seconds: float | None = None, tenant: str | None = None
    ) -> None:
        """Count one settled tool call.

        Args:
            tool: the tool's name (outside the registry: counted as ``other``).
            outcome: its settled status: ``succeeded``, ``failed``, ``denied``, ``cancelled``.
            seconds: how long it ran; ``None`` for a call that never ran (denied).
            tenant: its session's tenant; ``None`` (not known): not counted by tenant.
        """
        label = self._tool(tool)
        outcome_label = outcome if outcome in TOOL_OUTCOMES else OTHER
        self._tool_calls.labels(label, outcome_label).inc()
        if tenant is not None:
            self.tenants.tool_finished(tenant, outcome_label)
        if seconds is not None:
            self._tool_seconds.labels(label).observe(seconds)

    def circuit_changed(self, tool: str, state: str) -> None:
        """Record that ``tool``'s circuit breaker moved to ``state``.

        Args:
            tool: the tool's name (outside the registry: reported as ``other``).
            state: ``closed``, ``half_open`` or ``open`` (a ``BreakerState``).

        Raises:
            KeyError: another state (a programming error, never input).
        """
        self._tool_circuit.labels(self._tool(tool)).set(CIRCUIT_READINGS[state])

    def dispatch_finished(self, tool: str, seconds: float) -> None:
        """Time one function call from the sideband seeing it to its output going out."""
        self._dispatch_seconds.labels(self._tool(tool)).observe(seconds)

    # ---- tamper and usage -------------------------------------------------------------------

    def tamper_seen(self, kind: str) -> None:
        """Count one tamper detection; ``kind`` is a ``sideband.Tamper`` kind."""
        label = kind if kind in _TAMPER_KINDS else OTHER
        self._tamper_events.labels(label).inc()

    def usage_reported(self, tokens: dict[tuple[str, str], int]) -> None:
        """Count one ``response.done`` and its token usage.

        Args:
            tokens: counts keyed by ``(direction, modality)`` from :data:`TOKEN_LABELS`;
                other keys and negative counts are ignored (usage is provider input).
        """
        self._responses.inc()
        _count_tokens(self._tokens, TOKEN_LABELS, tokens)

    def transcription_reported(self, tokens: dict[tuple[str, str], int], ms: int) -> None:
        """Count one input transcription and its usage.

        Args:
            tokens: counts keyed by ``(direction, modality)`` from
                :data:`TRANSCRIPTION_TOKEN_LABELS`; other keys and negative counts are ignored.
            ms: milliseconds of audio it reported (models that bill time).
        """
        self._transcriptions.inc()
        _count_tokens(self._transcription_tokens, TRANSCRIPTION_TOKEN_LABELS, tokens)
        if ms > 0:
            self._transcription_seconds.inc(ms / 1000)

    def event_dropped(self, cap: EventCap) -> None:
        """Count one coalescible event the event log dropped at ``cap``."""
        self._events_dropped.labels(cap.value).inc()

    def event_folded(self) -> None:
        """Count one provider delta folded into its done event (not stored)."""
        self._events_folded.inc()

    def track_event_log(self, pending: Callable[[], float], lag: Callable[[], float]) -> None:
        """Read the event-log writer's queue depth and lag at each scrape."""
        self._event_log_pending.set_function(pending)
        self._event_log_lag.set_function(lag)

    def track_overload(
        self, overloaded: Callable[[], float], loop_lag: Callable[[], float]
    ) -> None:
        """Read the overload signal and the event loop's lag at each scrape."""
        self._overloaded.set_function(overloaded)
        self._loop_lag.set_function(loop_lag)

    def overload_refused(self, reason: str) -> None:
        """Count one session creation or offer refused with 503 ``overloaded``."""
        self._overload_refusals.labels(reason).inc()

    def quota_refused(self, cap: str, tenant_id: str) -> None:
        """Count one session refused with 429 ``quota_exceeded``, in all and by its tenant.

        ``cap``: ``key.max_…`` or ``tenant.max_…``.
        """
        self._quota_refusals.labels(cap if cap in QUOTA_CAPS else OTHER).inc()
        self.tenants.quota_refused(tenant_id)

    def track_audit(self, chained: Callable[[], float], pending: Callable[[], float]) -> None:
        """Read the audit chainer's count of records chained and of records pending."""
        self._audit.chained = chained
        self._audit.pending = pending

    def webhook_attempt(self, outcome: str) -> None:
        """Count one webhook delivery attempt (``delivered``, ``retry`` or ``failed``)."""
        self._webhook_attempts.labels(outcome if outcome in WEBHOOK_OUTCOMES else OTHER).inc()


class RelayDirection(enum.StrEnum):
    """Which way a trusted session's relay carried a frame (label ``direction``)."""

    TO_PROVIDER = "to_provider"
    """From the backend, forwarded on the provider's WebSocket."""
    TO_BACKEND = "to_backend"
    """From the provider (or the broker: ``broker.tool_call``), sent to the backend."""


class TrustedMetrics:
    """The trusted sessions' relay: frames, bytes and audio through the broker.

    And how many backends are connected. Audio is counted as the PCM bytes the base64
    carries (``input_audio_buffer.append`` to the provider, ``response.output_audio.delta``
    to the backend).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._frames = Counter(
            "trusted_relay_frames_total",
            "Frames relayed for trusted server sessions, by direction.",
            ["direction"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._bytes = Counter(
            "trusted_relay_bytes_total",
            "Bytes (JSON text) relayed for trusted server sessions, by direction.",
            ["direction"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._audio = Counter(
            "trusted_relay_audio_bytes_total",
            "Audio (PCM bytes, decoded size) relayed for trusted server sessions, by direction.",
            ["direction"],
            namespace=NAMESPACE,
            registry=registry,
        )
        self._connected = Gauge(
            "trusted_sessions_connected",
            "Trusted server sessions whose backend is connected to this instance now.",
            namespace=NAMESPACE,
            registry=registry,
        )
        for direction in RelayDirection:
            self._frames.labels(direction.value)
            self._bytes.labels(direction.value)
            self._audio.labels(direction.value)

    def relayed(self, direction: RelayDirection, size: int, audio_bytes: int = 0) -> None:
        """One frame of ``size`` bytes relayed, carrying ``audio_bytes`` of audio."""
        self._frames.labels(direction.value).inc()
        self._bytes.labels(direction.value).inc(size)
        if audio_bytes:
            self._audio.labels(direction.value).inc(audio_bytes)

    def connected(self, delta: int) -> None:
        """A backend connected (``1``) or went (``-1``)."""
        self._connected.inc(delta)
