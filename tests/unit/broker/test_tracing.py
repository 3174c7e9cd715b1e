"""broker.tracing: a no-op without OpenTelemetry, the SDK from the standard variables with it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from broker import tracing
from broker.errors import UpstreamError
from broker.settings import SettingsError

WITHOUT_OTEL = textwrap.dedent(
    """
    import importlib.abc, sys

    class _Absent(importlib.abc.MetaPathFinder):
        # As if the otel extra were not installed.
        def find_spec(self, name, path=None, target=None):
            if name == "opentelemetry" or name.startswith("opentelemetry."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _Absent())

    import broker.app  # the whole broker imports
    from broker import tracing

    assert tracing.AVAILABLE is False
    with tracing.span("broker.offer", {"broker.session_id": "s"}) as span:
        span.set("broker.call_id", "c")
        span.fail("x")
        assert span.context() is None
    try:
        with tracing.span("broker.tool_call"):
            raise KeyError("raised through")
    except KeyError:
        pass
    else:
        raise AssertionError("the exception was swallowed")
    remote = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    with tracing.span("broker.session.create", remote_parent=remote) as span:
        assert span.trace_parent() is None  # nothing to keep on the session
        span.link(remote["traceparent"])
    assert tracing.linked_context(remote["traceparent"]) is None
    headers = {}
    tracing.inject(headers)
    assert headers == {}, headers
    assert tracing.current_context() is None
    try:
        tracing.start_sdk()
    except tracing.TracingUnavailableError as exc:
        print("refused:", exc)
    assert not any(m.startswith("opentelemetry") for m in sys.modules)
    print("no-op ok")
    """
)


def test_without_the_otel_extra_tracing_is_a_no_op_and_broker_otel_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_OTEL], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "no-op ok" in done.stdout
    assert "refused: BROKER_OTEL is on but OpenTelemetry is not installed" in done.stdout


@pytest.fixture
def exported() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)
    provider.shutdown()


def test_an_error_leaving_a_span_fails_it_with_its_code_only(
    exported: InMemorySpanExporter,
) -> None:
    with pytest.raises(UpstreamError):
        with tracing.span("broker.offer", {"broker.session_id": "s", "broker.call_id": None}):
            raise UpstreamError("provider_timeout", "https://secret.example/?key=k timed out")
    [span] = exported.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "provider_timeout"
    assert dict(span.attributes or {}) == {
        "broker.session_id": "s",
        "broker.error": "provider_timeout",
    }
    assert not span.events  # the exception's text (here a URL) is never recorded


def test_an_exception_without_a_code_is_named_by_its_class(
    exported: InMemorySpanExporter,
) -> None:
    with pytest.raises(ValueError):
        with tracing.span("broker.tool_call"):
            raise ValueError("arguments: {'card': '4242'}")
    [span] = exported.get_finished_spans()
    assert span.status.description == "ValueError"
    assert "4242" not in str(dict(span.attributes or {}))


async def test_a_cancellation_is_an_outcome_not_an_error(
    exported: InMemorySpanExporter,
) -> None:
    async def call() -> None:
        with tracing.span("broker.call"):
            await asyncio.Event().wait()

    task = asyncio.create_task(call())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    [span] = exported.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {"broker.outcome": "cancelled"}


def test_an_expected_end_is_not_an_error(exported: InMemorySpanExporter) -> None:
    with pytest.raises(LookupError):
        with tracing.span("broker.sideband.attach") as span:
            span.ended_as("call_ended")
            raise LookupError("404")
    [done] = exported.get_finished_spans()
    assert done.status.status_code is StatusCode.UNSET
    assert dict(done.attributes or {}) == {"broker.outcome": "call_ended"}


def test_inject_writes_the_current_spans_traceparent(exported: InMemorySpanExporter) -> None:
    headers: dict[str, str] = {}
    tracing.inject(headers)
    assert headers == {}  # no span: nothing to continue
    with tracing.span("broker.tool_call") as span:
        tracing.inject(headers)
        context = span.context()
    assert context is not None
    version, trace_id, span_id, _flags = headers["traceparent"].split("-")
    assert (version, int(trace_id, 16), int(span_id, 16)) == (
        "00",
        context.trace_id,
        context.span_id,
    )


def test_the_sdk_follows_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    provider = tracing.start_sdk()
    try:
        assert provider.resource.attributes["service.name"] == "sideband-broker"  # type: ignore[attr-defined]
        with tracing.span("broker.offer") as span:
            assert span.context() is not None  # recording: the broker's spans go to it
    finally:
        tracing.stop_sdk(provider)
    with tracing.span("broker.offer") as span:
        assert span.context() is not None and not span.context().is_valid  # type: ignore[union-attr]

    monkeypatch.setenv("OTEL_SERVICE_NAME", "voice-broker-eu")
    provider = tracing.start_sdk()
    tracing.stop_sdk(provider)
    assert provider.resource.attributes["service.name"] == "voice-broker-eu"  # type: ignore[attr-defined]


def test_an_exporter_that_is_not_installed_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "no_such_exporter")
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER names 'no_such_exporter'"):
        tracing.start_sdk()
    with tracing.span("broker.offer") as span:
        assert not span.context().is_valid  # type: ignore[union-attr]  # nothing was left on


APP_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_remote_parent_is_the_spans_parent_and_what_it_keeps_is_its_own_context(
    exported: InMemorySpanExporter,
) -> None:
    with tracing.span(
        "broker.session.create", remote_parent={"traceparent": APP_TRACEPARENT}
    ) as span:
        kept = span.trace_parent()
    [created] = exported.get_finished_spans()
    assert created.parent is not None and created.context is not None
    assert created.parent.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert kept is not None and len(kept) == tracing.TRACE_PARENT_LENGTH
    assert kept.startswith(f"00-{created.context.trace_id:032x}-{created.context.span_id:016x}-")
    linked = tracing.linked_context(kept)
    assert linked is not None and linked.is_remote
    assert (linked.trace_id, linked.span_id) == (
        created.context.trace_id,
        created.context.span_id,
    )
    assert linked.trace_flags.sampled


def test_a_span_of_the_brokers_own_trace_keeps_nothing(exported: InMemorySpanExporter) -> None:
    """Without a caller's trace there is nothing to link a call to."""
    with tracing.span("broker.session.create", remote_parent={}) as span:
        assert span.trace_parent() is None
    with tracing.span("broker.offer") as span:
        assert span.trace_parent() is None


@pytest.mark.parametrize(
    "stored",
    [
        None,
        "",
        APP_TRACEPARENT.upper(),  # W3C: lowercase hex only
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # another version
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # invalid trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # invalid span id
        APP_TRACEPARENT + " ",
    ],
)
def test_a_malformed_stored_traceparent_links_nothing(
    exported: InMemorySpanExporter, stored: str | None
) -> None:
    assert tracing.linked_context(stored) is None
    with tracing.span("broker.offer") as span:
        span.link(stored)
    [offer] = exported.get_finished_spans()
    assert offer.links == ()
