"""Tracing: an app backend's trace context on session creation, and only there.

An app backend that creates a session (with its API key) inside a trace of its own sends W3C
``traceparent``: the broker's ``broker.session.create`` span is a child of it, and the call's
``broker.offer`` and ``broker.call`` spans carry a link to that span (the call is a trace of
its own). The browser's offer is untrusted: a ``traceparent`` it sends changes nothing. The
real stack, with the broker's spans in the SDK's in-memory exporter.
"""

from __future__ import annotations

import logging

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from broker import app_state, tracing
from broker.db.models import SessionRow
from tests.integration.test_tracing import attrs, named, spans, wait_span
from tests.support.broker_server import RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import connect_browser, wait_session_ended

__all__ = ["spans"]  # the in-memory exporter fixture, shared with test_tracing

APP_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
APP_SPAN_ID = 0x00F067AA0BA902B7
APP_TRACEPARENT = f"00-{APP_TRACE_ID:032x}-{APP_SPAN_ID:016x}-01"


async def create(broker: RunningBroker, headers: dict[str, str]) -> dict[str, object]:
    reply = await broker.request(
        "POST", "/api/v1/sessions", json_body={"tools": ["lookup_order"]}, headers=headers
    )
    assert reply.status == 201, reply.text
    return reply.json()  # type: ignore[no-any-return]


async def stored_trace_parent(broker: RunningBroker, session_id: str) -> str | None:
    async with broker.app[app_state.SESSIONMAKER]() as s:
        row = await s.get(SessionRow, session_id)
    assert row is not None
    return row.trace_parent


def links_of(span: ReadableSpan) -> list[tuple[int, int]]:
    return [(link.context.trace_id, link.context.span_id) for link in span.links]


async def test_a_create_in_the_apps_trace_is_its_child_and_the_call_links_to_it(
    broker: RunningBroker, spans: InMemorySpanExporter
) -> None:
    """Invariant: the create span is the app's span's child; the offer and the call are a
    trace of their own, each linked to the create span (kept on the session row)."""
    session = await create(broker, {"traceparent": APP_TRACEPARENT, "tracestate": "vendor=opaque"})
    sid = str(session["id"])
    [created] = named(spans.get_finished_spans(), "broker.session.create", sid)
    assert created.kind is SpanKind.SERVER and created.context is not None
    assert created.parent is not None and created.parent.is_remote
    assert (created.parent.trace_id, created.parent.span_id) == (APP_TRACE_ID, APP_SPAN_ID)
    assert created.context.trace_id == APP_TRACE_ID
    assert created.context.trace_state.get("vendor") == "opaque"
    assert attrs(created)["broker.outcome"] == "created"
    kept = await stored_trace_parent(broker, sid)
    flags = int(created.context.trace_flags)
    assert kept == f"00-{APP_TRACE_ID:032x}-{created.context.span_id:016x}-{flags:02x}"
    assert kept is not None and len(kept) == tracing.TRACE_PARENT_LENGTH

    browser = await connect_browser(broker, session)
    await browser.close()  # the browser leaves: the provider ends the call
    await wait_session_ended(broker, sid, timeout=15)
    call = await wait_span(spans, "broker.call", lambda s: attrs(s)["broker.session_id"] == sid)
    [offer] = named(spans.get_finished_spans(), "broker.offer", sid)
    # Its own trace (the call outlives the app's request), linked to where it was made.
    assert offer.parent is None and offer.context is not None
    assert offer.context.trace_id != APP_TRACE_ID
    assert call.parent is not None and call.parent.span_id == offer.context.span_id
    for linked in (offer, call):
        assert links_of(linked) == [(APP_TRACE_ID, created.context.span_id)], linked.name


async def test_a_traceparent_on_the_browsers_offer_changes_nothing(
    broker: RunningBroker, spans: InMemorySpanExporter
) -> None:
    """Invariant: the browser (untrusted) chooses neither the offer's trace nor a link."""
    session = await broker.create_session()
    sid = session["id"]
    browser = FakeBrowser()
    try:
        reply = await broker.request(
            "POST",
            f"/api/v1/sessions/{sid}/realtime-offer",
            token=session["client_secret"]["value"],
            data=await browser.create_offer(),
            content_type="application/sdp",
            headers={"traceparent": APP_TRACEPARENT, "tracestate": "vendor=opaque"},
        )
        assert reply.status in (200, 201), reply.text
        [offer] = named(spans.get_finished_spans(), "broker.offer", sid)
    finally:
        await browser.close()
    assert offer.parent is None and offer.context is not None
    assert offer.context.trace_id != APP_TRACE_ID
    assert offer.links == ()
    assert await stored_trace_parent(broker, sid) is None
    assert not [
        s for s in spans.get_finished_spans() if s.context and s.context.trace_id == APP_TRACE_ID
    ]


async def test_a_traceparent_without_an_api_key_is_not_read(
    broker: RunningBroker, spans: InMemorySpanExporter
) -> None:
    """Invariant: only an authenticated create joins the caller's trace."""
    reply = await broker.request(
        "POST",
        "/api/v1/sessions",
        token=None,
        json_body={"tools": ["lookup_order"]},
        headers={"traceparent": APP_TRACEPARENT},
    )
    assert reply.status == 401
    assert not [s for s in spans.get_finished_spans() if s.name == "broker.session.create"]


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-zzf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # not hex
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # all-zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "x" * 300,
    ],
)
async def test_a_malformed_traceparent_is_ignored(
    broker: RunningBroker,
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    traceparent: str,
) -> None:
    """Invariant: a bad header costs the caller nothing: the session is made, its create
    span is a root, the session keeps nothing to link to, and the header is logged (cut)."""
    with caplog.at_level(logging.DEBUG, logger="broker.tracing"):
        session = await create(broker, {"traceparent": traceparent})
    [created] = named(spans.get_finished_spans(), "broker.session.create", str(session["id"]))
    assert created.parent is None and created.context is not None
    assert created.context.trace_id != APP_TRACE_ID
    assert await stored_trace_parent(broker, str(session["id"])) is None
    assert "malformed traceparent ignored" in caplog.text
    assert "x" * 100 not in caplog.text


async def test_with_tracing_off_nothing_is_kept(broker: RunningBroker) -> None:
    """Invariant: without a recording tracer (``BROKER_OTEL`` off, no SDK set), the header is
    neither stored nor linked: the session is as it was before the feature."""
    session = await create(broker, {"traceparent": APP_TRACEPARENT})
    assert await stored_trace_parent(broker, str(session["id"])) is None
