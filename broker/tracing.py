"""OpenTelemetry tracing when the ``otel`` extra is installed; without it, every call is a no-op.

The one module that imports ``opentelemetry`` (``tests/unit/test_import_rules.py``), and only
under the guard below: the broker must start and run without the packages.

One trace per call, so that a slow tool call can be followed from the offer to the tool
backend::

    broker.offer                      the browser's offer (session id, provider, call id)
    └── broker.call                   the call's sideband task, as long as it lives
        ├── broker.sideband.attach    each attach (first, re-attach), with its attempts
        └── broker.tool_call          each call run on the sideband
            └── (tool backend)        an HTTP tool's request carries ``traceparent``

A call the broker takes up again after a restart or a handoff starts its own trace at
``broker.call`` (``broker.resumed``).

An app backend that creates the session inside a trace of its own sends W3C ``traceparent``
(and ``tracestate``) with ``POST /api/v1/sessions``: its ``broker.session.create`` span is a
child of it, and that span's context is kept on the session (``sessions.trace_parent``) for
the call's ``broker.offer`` and ``broker.call`` to carry a *link* to. A link, not a parent: the
call may live hours after the app's request has ended, and its trace is the call's, sampled
on its own. Only a request made with an API key is read that way; the browser's offer is
untrusted and may neither choose the trace nor force its sampling. The row keeps the
``traceparent`` (55 characters, no ``tracestate``), so a call taken up after a restart or by
another instance is linked too; it is stored only when the create span is recorded: with
tracing off, nothing is kept.

A tool call that arrives on the bridge (an HTTP request of the page's) starts its own trace,
linked to the call's span when this process runs the call (to the offer's for a bridge-only
call). ``broker.webhook.deliver`` (one per attempt) is a root: a delivery is sent from the
outbox, possibly by another process, long after the call.

Span attributes are ids, names and outcomes only: never a secret, a tool's arguments or its
output.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import (
        Link,
        SpanContext,
        SpanKind,
        Status,
        StatusCode,
        TraceFlags,
    )
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the otel extra is not installed: tracing is off, at no cost
    trace = None  # type: ignore[assignment]

from broker.settings import SettingsError

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, TracerProvider

logger = logging.getLogger(__name__)

AVAILABLE: Final = trace is not None
"""Whether the OpenTelemetry API is installed (the ``otel`` extra)."""
TRACER_NAME: Final = "broker"
SERVICE_NAME: Final = "sideband-broker"
"""The ``service.name`` when neither ``OTEL_SERVICE_NAME`` nor ``OTEL_RESOURCE_ATTRIBUTES``
names one."""

TRACE_PARENT_LENGTH: Final = 55
"""A stored ``traceparent``'s length: ``00-<32 hex>-<16 hex>-<2 hex>``."""
_TRACE_PARENT: Final = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_TRACE_CONTEXT_HEADERS: Final = ("traceparent", "tracestate")

AttributeValue = str | int | float | bool
Kind = Literal["internal", "client", "server"]


class TracingUnavailableError(SettingsError):
    """``BROKER_OTEL`` is on but what it needs is not installed: refused at start-up."""


class SpanHandle(Protocol):
    """What the broker does with its current span (a no-op one when tracing is off)."""

    def set(self, key: str, value: AttributeValue | None) -> None: ...

    def fail(self, code: str) -> None: ...

    def ended_as(self, outcome: str) -> None:
        """Set ``broker.outcome``: the exception that follows is this end, not an error."""

    def context(self) -> SpanContext | None: ...

    def trace_parent(self) -> str | None:
        """This span as a W3C ``traceparent``, for a later span of another trace to link to.

        Only if it is recorded and continues a caller's trace (``remote_parent``).
        """

    def link(self, trace_parent: str | None) -> None:
        """Link this span to a stored ``traceparent`` (nothing if ``None`` or malformed)."""


class _NoSpan:
    def set(self, key: str, value: AttributeValue | None) -> None:
        pass

    def fail(self, code: str) -> None:
        pass

    def ended_as(self, outcome: str) -> None:
        pass

    def context(self) -> SpanContext | None:
        return None

    def trace_parent(self) -> str | None:
        return None

    def link(self, trace_parent: str | None) -> None:
        pass


_NO_SPAN: Final = _NoSpan()


class _Span:
    def __init__(self, span: Span, *, joined: bool = False) -> None:
        self._span = span
        self.failed = False
        self.settled = False
        self._joined = joined

    def set(self, key: str, value: AttributeValue | None) -> None:
        if value is not None:
            self._span.set_attribute(key, value)

    def fail(self, code: str) -> None:
        # The stable code only: an exception's message may quote a URL or a value.
        self.failed = True
        self._span.set_attribute("broker.error", code)
        self._span.set_status(Status(StatusCode.ERROR, code))

    def ended_as(self, outcome: str) -> None:
        self.settled = True
        self._span.set_attribute("broker.outcome", outcome)

    def context(self) -> SpanContext | None:
        return self._span.get_span_context()

    def trace_parent(self) -> str | None:
        # Not a span that is not recorded (tracing off, or not sampled): nothing would be
        # exported for a link to find. Nor one of the broker's own root: a link to it would
        # lead to no caller's trace.
        if not (self._joined and self._span.is_recording()):
            return None
        found = self._span.get_span_context()
        if not found.is_valid:
            return None
        return f"00-{found.trace_id:032x}-{found.span_id:016x}-{int(found.trace_flags):02x}"

    def link(self, trace_parent: str | None) -> None:
        found = linked_context(trace_parent)
        if found is not None:
            self._span.add_link(found)


_provider: TracerProvider | None = None
"""The provider the broker's spans go to; ``None``: the global one (the API's no-op unless the
application embedding the broker set one)."""


def use_provider(provider: TracerProvider | None) -> None:
    """Send the broker's spans to ``provider`` (``None``: back to the global provider).

    The broker's own (``BROKER_OTEL``) and a test's in-memory one are set here rather than as
    the global provider, which a process may set only once.
    """
    global _provider
    _provider = provider


def _code_of(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code else type(exc).__name__


@contextmanager
def span(
    name: str,
    attributes: Mapping[str, AttributeValue | None] | None = None,
    *,
    kind: Kind = "internal",
    links: tuple[SpanContext | None, ...] = (),
    remote_parent: Mapping[str, str] | None = None,
) -> Iterator[SpanHandle]:
    """A span current for the block; an exception leaving it marks it failed with its code.

    A cancellation is recorded as ``broker.outcome = cancelled``, not as an error: a shutdown
    or a call's end cancels work that did nothing wrong.

    ``remote_parent``: a *trusted* request's headers, whose W3C trace context (if valid) is
    the span's parent instead of the current span; a malformed one is ignored (logged at
    debug). Never an untrusted request's: it would choose the trace and its sampling.
    """
    if trace is None:
        yield _NO_SPAN
        return
    tracer = (_provider or trace.get_tracer_provider()).get_tracer(TRACER_NAME)
    parent = _extracted(remote_parent) if remote_parent is not None else None
    with tracer.start_as_current_span(
        name,
        context=parent,
        kind={"internal": SpanKind.INTERNAL, "client": SpanKind.CLIENT, "server": SpanKind.SERVER}[
            kind
        ],
        attributes={k: v for k, v in (attributes or {}).items() if v is not None},
        links=[Link(c) for c in links if c is not None and c.is_valid],
        # Not the exception's text or traceback: they may hold what must not leave.
        record_exception=False,
        set_status_on_exception=False,
    ) as current:
        handle = _Span(current, joined=parent is not None)
        try:
            yield handle
        except BaseException as exc:
            if isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
                handle.set("broker.outcome", "cancelled")
            elif not (handle.failed or handle.settled):
                handle.fail(_code_of(exc))
            raise


def _extracted(headers: Mapping[str, str]) -> Context | None:
    """The W3C trace context of ``headers`` as a parent; ``None`` (a root) if it has none.

    W3C only, whatever ``OTEL_PROPAGATORS`` says: the header named in our API contract, read
    by the one propagator that reads it, and no baggage.
    """
    carrier = {n: headers[n] for n in _TRACE_CONTEXT_HEADERS if headers.get(n) is not None}
    if "traceparent" not in carrier:
        return None
    context = TraceContextTextMapPropagator().extract(carrier)
    if not trace.get_current_span(context).get_span_context().is_valid:
        # Logged, never refused: a caller's tracing bug must not cost it the session.
        logger.debug("malformed traceparent ignored: %.64r", carrier["traceparent"])
        return None
    return context


def linked_context(trace_parent: str | None) -> SpanContext | None:
    """The span context a stored ``traceparent`` names, for a link; ``None`` if malformed."""
    if trace is None or trace_parent is None:
        return None
    match = _TRACE_PARENT.fullmatch(trace_parent)
    if match is None:
        logger.debug("stored traceparent malformed, not linked: %.64r", trace_parent)
        return None
    found = SpanContext(
        trace_id=int(match[1], 16),
        span_id=int(match[2], 16),
        is_remote=True,
        trace_flags=TraceFlags(int(match[3], 16)),
    )
    return found if found.is_valid else None


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to outgoing ``headers``.

    The global propagator decides the headers (W3C trace context unless ``OTEL_PROPAGATORS``
    says otherwise); nothing is added when no span is recording.
    """
    if trace is not None:
        propagate.inject(headers)


def current_context() -> SpanContext | None:
    """The current span's context (for a link from another trace), if there is one."""
    if trace is None:
        return None
    found = trace.get_current_span().get_span_context()
    return found if found.is_valid else None


def start_sdk() -> TracerProvider:
    """Build the SDK's provider from the standard ``OTEL_*`` variables and send spans to it.

    The exporters are ``OTEL_TRACES_EXPORTER``'s (default ``otlp``, which needs
    ``opentelemetry-exporter-otlp``; ``console`` comes with the SDK; ``none`` exports nothing),
    batched as ``OTEL_BSP_*`` say; the resource is ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES``, with ``service.name`` ``sideband-broker`` if they name none.
    The caller shuts it down (:func:`stop_sdk`), which flushes what is batched.

    Raises:
        TracingUnavailableError: the SDK, or a named exporter, is not installed.
    """
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
    except ImportError:
        raise TracingUnavailableError(
            "BROKER_OTEL is on but OpenTelemetry is not installed: pip install"
            " 'sideband-broker[otel]'"
        ) from None
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": SERVICE_NAME}))
    provider = SdkTracerProvider(resource=resource)
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    for name in (n.strip() for n in names.split(",")):
        if name in ("", "none"):
            continue
        found = entry_points(group="opentelemetry_traces_exporter", name=name)
        if not found:
            hint = " (pip install opentelemetry-exporter-otlp)" if name.startswith("otlp") else ""
            raise TracingUnavailableError(
                f"OTEL_TRACES_EXPORTER names {name!r}, which is not installed{hint}"
            )
        exporter_class: Any = next(iter(found)).load()
        exporter: SpanExporter = exporter_class()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    use_provider(provider)
    logger.info("tracing on exporters=%s", names)
    return provider


def stop_sdk(provider: TracerProvider) -> None:
    """Stop sending spans to ``provider`` and flush it."""
    use_provider(None)
    shutdown = getattr(provider, "shutdown", None)
    if shutdown is not None:
        shutdown()


_calls: OrderedDict[str, SpanContext] = OrderedDict()
"""The span of each call this process runs, by session id: a bridge tool call links to it.

A watched call's is its ``broker.call`` span, forgotten when its sideband task ends; a
bridge-only call's is its offer's, forgotten only as the oldest of :data:`_MAX_CALLS` (no
task of this process ends with such a call)."""
_MAX_CALLS: Final = 10_000


def register_call(session_id: str, context: SpanContext | None) -> None:
    if context is None or not context.is_valid:
        return
    _calls[session_id] = context
    _calls.move_to_end(session_id)
    while len(_calls) > _MAX_CALLS:
        _calls.popitem(last=False)


def forget_call(session_id: str) -> None:
    _calls.pop(session_id, None)


def call_context(session_id: str) -> SpanContext | None:
    """The span of the call ``session_id`` if this process runs it (see :func:`register_call`)."""
    return _calls.get(session_id)
