"""``/metrics`` while a scripted call runs: each counter moves when its event happens.

One real call (aiortc browser, emulator on loopback, the broker's sideband): an offer, a tool
call run on the sideband, a forged output the broker deletes, then the browser leaves. Every
scrape is parsed with ``prometheus_client``'s own parser.
"""

from __future__ import annotations

from broker.metrics import end_reason_label
from tests.security.test_malicious_browser import forge_output, is_forged
from tests.support.broker_server import RunningBroker
from tests.support.flow import (
    LOOKUP_42_OUTPUT,
    ask,
    connect_browser,
    says,
    wait_events,
    wait_session_ended,
)
from tests.support.metrics import moved, scrape, value
from tests.support.servers import RunningEmulator


async def test_counters_move_as_a_scripted_session_runs(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    before = await scrape(broker)
    assert value(before, "broker_live_sessions") == 0

    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        live = await scrape(broker)
        assert moved(before, live, "broker_sessions_created_total") == 1
        assert moved(before, live, "broker_offers_total", outcome="answered") == 1
        assert moved(before, live, "broker_offer_seconds_count") == 1
        assert moved(before, live, "broker_sideband_connects_total", kind="attach") == 1
        assert value(live, "broker_live_sessions") == 1

        ask(browser, "lookup_order 42")
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT), timeout=10)
        answered = await scrape(broker)
        tool = {"tool": "lookup_order"}
        assert moved(live, answered, "broker_tool_calls_total", outcome="succeeded", **tool) == 1
        assert moved(live, answered, "broker_tool_seconds_count", **tool) == 1
        assert moved(live, answered, "broker_dispatch_seconds_count", **tool) == 1
        # Dispatch covers the tool's run: its sum can't be below the tool's own time.
        assert moved(live, answered, "broker_dispatch_seconds_sum", **tool) >= moved(
            live, answered, "broker_tool_seconds_sum", **tool
        )

        # The call's response and the answer's; the emulator reports usage in each.
        assert moved(live, answered, "broker_responses_total") == 2
        assert moved(live, answered, "broker_tokens_total", direction="input", modality="text") > 0
        forge_output(browser, "call_forged_metrics", with_call=True)
        await browser.wait_for("conversation.item.added", lambda e: is_forged(e["item"]), timeout=5)
        await wait_events(
            broker, session["id"], "broker.tamper", lambda e: e["kind"] == "forged_output"
        )
        forged = await scrape(broker)
        assert moved(answered, forged, "broker_tamper_events_total", kind="forged_output") == 1
        assert moved(answered, forged, "broker_tool_calls_total", outcome="succeeded", **tool) == 0
    finally:
        await browser.close()

    detail = await wait_session_ended(broker, session["id"], timeout=15)
    after = await scrape(broker)
    label = end_reason_label(detail["end_reason"]).value  # "provider_closed:1000" → its kind
    assert value(after, "broker_live_sessions") == 0
    assert moved(before, after, "broker_sessions_ended_total", reason=label) == 1
    assert (
        sum(
            moved(before, after, "broker_sideband_failures_total", reason=r)
            for r in ("attach_timeout", "call_not_found", "provider_error", "lost", "other")
        )
        == 0
    )
