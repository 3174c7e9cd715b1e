"""Tracing: one call with a tool is one trace, from the offer to the tool backend.

The real stack (broker, emulator, a FakeBrowser on aiortc, the HTTP tool backend, a webhook
receiver) with the broker's spans sent to the SDK's in-memory exporter
(``broker.tracing.use_provider``). The tool backend and the webhook receiver are real HTTP
servers: the ``traceparent`` they got is read off the wire.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from broker import Secret, tracing
from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import LOOKUP_42_OUTPUT, ask, connect_browser, says, wait_session_ended
from tests.support.tool_backend import ToolBackend
from tests.support.webhook_receiver import WebhookReceiver

WEBHOOK_SECRET = "test-webhook-secret-" + "t" * 24
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
"""W3C trace context: version 00, trace id, parent span id, flags (bit 0: sampled)."""


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The broker's spans, exported in memory as each ends."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)
    provider.shutdown()


async def wait_span(
    exporter: InMemorySpanExporter,
    name: str,
    predicate: Callable[[ReadableSpan], bool] = lambda _span: True,
) -> ReadableSpan:
    """The first finished span called ``name`` that ``predicate`` accepts (bounded wait: a
    span is exported when it ends, which for some is after the test's last request)."""
    async with asyncio.timeout(10):
        while True:
            for span in exporter.get_finished_spans():
                if span.name == name and predicate(span):
                    return span
            await asyncio.sleep(0.05)


def named(spans: Sequence[ReadableSpan], name: str, session_id: str) -> list[ReadableSpan]:
    return [
        s
        for s in spans
        if s.name == name and (s.attributes or {}).get("broker.session_id") == session_id
    ]


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def is_child(span: ReadableSpan, parent: ReadableSpan) -> bool:
    assert span.context is not None and parent.context is not None
    return (
        span.parent is not None
        and span.parent.span_id == parent.context.span_id
        and span.context.trace_id == parent.context.trace_id
    )


async def test_a_call_with_a_tool_is_one_trace_from_the_offer_to_the_tool_backend(
    make_broker: BrokerFactory,
    tool_backend: ToolBackend,
    receiver: WebhookReceiver,
    spans: InMemorySpanExporter,
) -> None:
    broker = await make_broker(webhook_url=receiver.url, webhook_secret=Secret(WEBHOOK_SECRET))
    session = await broker.create_session()
    sid = session["id"]
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'lookup_order {"order_id": "42"}')
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
    finally:
        await browser.close()  # the browser leaves: the provider ends the call
    detail = await wait_session_ended(broker, sid, timeout=15)
    [delivery] = await receiver.wait_deliveries(1)
    # Both end after the last request the test sees: the sideband task after the session's
    # end is recorded, the webhook's span after its attempt is.
    call = await wait_span(spans, "broker.call", lambda s: attrs(s)["broker.session_id"] == sid)
    webhook = await wait_span(
        spans, "broker.webhook.deliver", lambda s: attrs(s)["broker.session_id"] == sid
    )
    finished = spans.get_finished_spans()

    # The offer is the root of the call's trace.
    [offer] = named(finished, "broker.offer", sid)
    assert offer.parent is None and offer.kind is SpanKind.SERVER
    assert attrs(offer) == {
        "broker.session_id": sid,
        "broker.provider": "openai",
        "broker.call_id": detail["call_id"],
        "broker.outcome": "answered",
    }
    assert offer.status.status_code is StatusCode.UNSET
    assert offer.context is not None
    trace_id = offer.context.trace_id

    # The call's span lives as long as its sideband task, under the offer.
    assert is_child(call, offer)
    assert attrs(call) == {
        "broker.session_id": sid,
        "broker.call_id": detail["call_id"],
        "broker.resumed": False,
    }

    # The first attach under the call; once the browser left, a re-attach may have found
    # the call ended (how a lost sideband learns it), which is its end, not an error.
    attach, *reattaches = named(finished, "broker.sideband.attach", sid)
    assert is_child(attach, call) and attach.kind is SpanKind.CLIENT
    assert attrs(attach)["broker.reason"] == "first"
    assert attrs(attach)["broker.outcome"] == "attached"
    assert attrs(attach)["broker.sideband.attempts"] >= 1
    for late in reattaches:
        assert is_child(late, call)
        assert (attrs(late)["broker.reason"], attrs(late)["broker.outcome"]) == (
            "reattach",
            "call_ended",
        )
        assert late.status.status_code is StatusCode.UNSET

    # The tool call, run on the sideband, under the call.
    [request] = tool_backend.calls_to("lookup_order")
    [tool_call] = named(finished, "broker.tool_call", sid)
    assert is_child(tool_call, call)
    assert attrs(tool_call) == {
        "broker.session_id": sid,
        "broker.call_id": request.headers["X-Call-ID"],
        "broker.tool": "lookup_order",
        "broker.tool_path": "sideband",
        "broker.outcome": "succeeded",
        "broker.tool.executed_here": True,
    }

    # The tool backend got the tool call's span as its parent, on the wire.
    assert tool_call.context is not None
    match = TRACEPARENT.fullmatch(request.headers["traceparent"])
    assert match is not None, request.headers["traceparent"]
    assert int(match[1], 16) == trace_id == tool_call.context.trace_id
    assert int(match[2], 16) == tool_call.context.span_id
    assert int(match[3], 16) & 1  # sampled: the backend's spans are kept with the broker's
    assert request.verified  # the new header leaves the signature as it was

    # Every span of the call is in the offer's trace; the webhook starts its own, and passes
    # it on to the receiver.
    in_trace = [s for s in finished if s.context is not None and s.context.trace_id == trace_id]
    assert sorted(s.name for s in in_trace) == sorted(
        ["broker.offer", "broker.call", "broker.tool_call"]
        + ["broker.sideband.attach"] * (1 + len(reattaches))
    )
    assert webhook.parent is None and webhook.context is not None
    assert attrs(webhook) == {
        "broker.session_id": sid,
        "broker.webhook_id": delivery.id,
        "broker.webhook_type": "session.ended",
        "broker.attempt": 1,
        "http.response.status_code": 200,
        "broker.outcome": "delivered",
    }
    hook_parent = TRACEPARENT.fullmatch(delivery.headers["traceparent"])
    assert hook_parent is not None
    assert int(hook_parent[1], 16) == webhook.context.trace_id
    assert int(hook_parent[2], 16) == webhook.context.span_id

    # Ids, names and outcomes only: no arguments, output or secret in any attribute.
    shown = " ".join(str(v) for s in finished for v in attrs(s).values())
    for kept_out in ("order_id", "shipped", WEBHOOK_SECRET, session["client_secret"]["value"]):
        assert kept_out not in shown


async def test_a_failed_offer_is_an_error_span_with_its_code(
    make_broker: BrokerFactory, spans: InMemorySpanExporter
) -> None:
    """A replayed client secret: the second offer's span fails with ``token_replayed``."""
    broker = await make_broker()
    session = await broker.create_session()
    browser = await connect_browser(broker, session)
    second = FakeBrowser()
    try:
        reply = await broker.offer(session, await second.create_offer())
    finally:
        await second.close()
        await browser.close()
    assert (reply.status, reply.code) == (401, "token_replayed")
    offers = named(spans.get_finished_spans(), "broker.offer", session["id"])
    assert [attrs(o)["broker.outcome"] for o in offers] == ["answered", "refused"]
    failed = offers[1]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "token_replayed"
    assert attrs(failed)["broker.error"] == "token_replayed"
    assert "broker.call_id" not in attrs(failed)
    assert not failed.events  # no exception recorded: its text could carry what must not leave


async def test_a_bridge_tool_call_is_linked_to_its_calls_offer(
    broker: RunningBroker, tool_backend: ToolBackend, spans: InMemorySpanExporter
) -> None:
    """A bridge-only session: the page relays the call in a request of its own, whose span
    starts a trace linked to the offer's, and the backend gets that span as its parent."""
    session = await broker.create_session(tools=["lookup_order"], sideband=False)
    sid = session["id"]
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "lookup_order 42")
        call = await browser.wait_for("response.function_call_arguments.done")
        reply = await broker.bridge(session, "lookup_order", call["call_id"], call["arguments"])
        assert reply.status == 200, reply.text
        finished = spans.get_finished_spans()
    finally:
        await browser.close()
    [offer] = named(finished, "broker.offer", sid)
    [tool_call] = named(finished, "broker.tool_call", sid)
    assert named(finished, "broker.call", sid) == []  # no sideband, no call span
    assert attrs(tool_call) == {
        "broker.session_id": sid,
        "broker.call_id": call["call_id"],
        "broker.tool": "lookup_order",
        "broker.tool_path": "bridge",
        "broker.outcome": "succeeded",
        "broker.tool.executed_here": True,
    }
    assert tool_call.parent is None  # the page's request carried no trace
    assert offer.context is not None and tool_call.context is not None
    assert [(link.context.trace_id, link.context.span_id) for link in tool_call.links] == [
        (offer.context.trace_id, offer.context.span_id)
    ]
    [request] = tool_backend.calls_to("lookup_order")
    match = TRACEPARENT.fullmatch(request.headers["traceparent"])
    assert match is not None
    assert (int(match[1], 16), int(match[2], 16)) == (
        tool_call.context.trace_id,
        tool_call.context.span_id,
    )


async def test_a_failing_tool_is_an_error_span_with_its_code(
    broker: RunningBroker, tool_backend: ToolBackend, spans: InMemorySpanExporter
) -> None:
    """The backend answers 500: the tool call's span fails with ``tool_http_error``; the
    backend still got the trace."""
    session = await broker.create_session(tools=["explode"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "explode {}")
        await browser.wait_for("response.done", says("tool_http_error"))
    finally:
        await browser.close()
    [request] = tool_backend.calls_to("explode")
    [tool_call] = named(spans.get_finished_spans(), "broker.tool_call", session["id"])
    assert attrs(tool_call)["broker.outcome"] == "failed"
    assert attrs(tool_call)["broker.error"] == "tool_http_error"
    assert tool_call.status.status_code is StatusCode.ERROR
    assert tool_call.status.description == "tool_http_error"
    assert tool_call.context is not None
    match = TRACEPARENT.fullmatch(request.headers["traceparent"])
    assert match is not None and int(match[2], 16) == tool_call.context.span_id
