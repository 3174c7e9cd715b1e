"""``GET /api/v1/sessions``: filters, counts and cursor pagination for ops."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from tests.support.broker_server import RunningBroker
from tests.support.flow import LOOKUP_42_OUTPUT, ask, connect_browser, says


async def list_all(broker: RunningBroker, query: str, limit: int) -> list[dict[str, Any]]:
    """Walk every page of ``query``; each page at most ``limit`` rows."""
    rows: list[dict[str, Any]] = []
    cursor = None
    for _ in range(50):  # bounded: more pages than any test makes
        url = f"/api/v1/sessions?limit={limit}" + (f"&{query}" if query else "")
        if cursor:
            url += f"&cursor={cursor}"
        reply = await broker.request("GET", url)
        assert reply.status == 200, reply.text
        page = reply.json()
        assert len(page["sessions"]) <= limit
        rows += page["sessions"]
        cursor = page["next_cursor"]
        if cursor is None:
            return rows
    raise AssertionError("pagination never ended")


async def test_filters_counts_and_pages(broker: RunningBroker) -> None:
    idle = [await broker.create_session(tools=["lookup_order"]) for _ in range(4)]
    other_model = await broker.create_session(tools=["lookup_order"], model="gpt-realtime-mini")
    live = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, live)
    try:
        ask(browser, 'lookup_order {"order_id": "42"}')
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
    finally:
        await browser.close()

    everything = await list_all(broker, "", limit=2)
    ids = [row["id"] for row in everything]
    assert len(ids) == len(set(ids)) == 6  # no duplicate, no gap across pages
    assert ids == [live["id"], other_model["id"], *[s["id"] for s in reversed(idle)]]

    [called] = await list_all(broker, "tool=lookup_order", limit=10)
    assert called["id"] == live["id"]
    assert called["tool_calls"] == {"succeeded": 1, "total": 1}
    assert called["last_event_at"] is not None and called["errors"] == 0
    assert called["sideband"]["enabled"] is True

    created = await list_all(broker, "state=created", limit=10)
    assert {r["id"] for r in created} == {s["id"] for s in idle} | {other_model["id"]}
    assert all(r["tool_calls"] == {"total": 0} and r["age_s"] >= 0 for r in created)
    [mini] = await list_all(broker, "model=gpt-realtime-mini", limit=10)
    assert mini["id"] == other_model["id"]
    assert await list_all(broker, "created_after=2999-01-01T00:00:00Z", limit=10) == []
    # A time with an offset means that instant (SQLite keeps naive UTC: it is converted).
    newest = datetime.fromisoformat((await broker.get_session(live["id"]))["created_at"])
    just_after = (newest + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=-5)))
    before = await list_all(broker, f"created_before={just_after.isoformat()}", limit=10)
    assert len(before) == 6
    assert len(await list_all(broker, "state=created,ended,live", limit=3)) == 6


async def test_bad_queries_and_missing_scope_are_refused(broker: RunningBroker) -> None:
    for query, param in (
        ("state=sleeping", "state"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("created_after=yesterday", "created_after"),
        # Year 1 at +14:00 is before year 1 in UTC: converting it overflowed into a 500.
        ("created_after=0001-01-01T00:00:00%2B14:00", "created_after"),
        ("created_before=9999-12-31T23:59:59-14:00", "created_before"),
        ("cursor=not-a-cursor", "cursor"),
        ("colour=red", "colour"),
    ):
        reply = await broker.request("GET", f"/api/v1/sessions?{query}")
        assert (reply.status, reply.code) == (400, "invalid_query"), (query, reply.text)
        assert reply.json()["param"] == param
    backend = await broker.new_key("sessions:create")
    refused = await broker.request("GET", "/api/v1/sessions", token=backend)
    assert (refused.status, refused.code) == (403, "insufficient_scope")
    assert (await broker.request("GET", "/api/v1/sessions", token=None)).status == 401
