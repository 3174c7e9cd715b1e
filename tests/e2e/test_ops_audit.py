"""The ops dashboard's audit trail in Chromium: a real session's records on its page.

The call is made by the aiortc stand-in browser against the broker and the emulator on
loopback (a tool call on the sideband, then the browser leaves); Chromium runs only the
dashboard. What the page shows is compared with what ``GET /api/v1/audit`` serves for the
session, record for record. Every wait is on a condition in the page, never a fixed sleep.
"""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import screenshot
from tests.e2e.test_ops_dashboard import assert_no_page_errors, sign_in, wait_visible
from tests.support.broker_server import RunningBroker
from tests.support.flow import LOOKUP_42_OUTPUT, ask, connect_browser, says, wait_session_ended

WAIT_MS = 20_000


async def _api_records(broker: RunningBroker, session_id: str) -> list[dict[str, Any]]:
    reply = await broker.request("GET", f"/api/v1/audit?session_id={session_id}&limit=500")
    assert reply.status == 200, reply.text
    records: list[dict[str, Any]] = reply.json()["records"]
    return records


async def _shown(page: Any) -> list[dict[str, str | None]]:
    rows: list[dict[str, str | None]] = await page.eval_on_selector_all(
        "#audit-records tr.audit-record",
        """rows => rows.map(tr => ({
            seq: tr.dataset.seq,
            kind: tr.querySelector('td.kind').textContent,
            actor: tr.querySelector('td.actor').textContent,
            tool: tr.querySelector('td.tool').textContent,
            decision: tr.querySelector('td.decision').textContent,
            at: tr.querySelector('td.at').title,
        }))""",
    )
    return rows


async def test_a_session_page_shows_its_audit_records(broker: RunningBroker, page: Any) -> None:
    """A real session (created, offered, a tool call on the sideband, ended by the browser
    leaving) has its audit records on its page, as the API serves them; the page's audit
    link (``#/sessions/<id>/audit``) leads there."""
    key = await broker.new_key("monitor:read", "audit:read", name="reviewer")
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        ask(browser, "lookup_order 42")
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
    finally:
        await browser.close()
    await wait_session_ended(broker, session["id"])
    expected = await _api_records(broker, session["id"])
    kinds = [r["kind"] for r in expected]
    assert "session.created" in kinds and "tool.succeeded" in kinds, kinds

    await sign_in(page, broker, key)
    row = await wait_visible(page, f'#sessions tr[data-session-id="{session["id"]}"]')
    await row.locator("a").click()
    link = await wait_visible(page, "#session-audit-link", has_text=f"{len(expected)} record")
    await link.click()
    assert page.url.endswith(f"#/sessions/{session['id']}/audit")
    last = expected[-1]["seq"]
    await wait_visible(page, f'#audit-records tr[data-seq="{last}"]')
    shown = await _shown(page)
    assert shown == [
        {
            "seq": str(r["seq"]),
            "kind": r["kind"],
            "actor": r["actor"],
            "tool": r["tool"] or "",
            "decision": r["decision"] or "",
            "at": r["at"],
        }
        for r in expected
    ]
    tool_row = page.locator('#audit-records tr[data-kind="tool.succeeded"]').first
    assert await tool_row.locator("td.tool").inner_text() == "lookup_order"
    assert await page.locator("#audit-empty").is_hidden()
    assert await page.locator("#audit-error").is_hidden()
    assert await page.locator("#audit-card").is_visible()
    await screenshot(page, "ops-session-audit")

    # Opened straight at the trail (a bookmark, another tab): the same records.
    await page.goto(f"{broker.base_url}/ops/#/sessions/{session['id']}/audit")
    await wait_visible(page, f'#audit-records tr[data-seq="{last}"]')
    assert [r["seq"] for r in await _shown(page)] == [str(r["seq"]) for r in expected]
    assert_no_page_errors(page)


async def test_a_key_without_audit_read_still_watches_and_is_told_why(
    broker: RunningBroker, page: Any
) -> None:
    """``monitor:read`` alone: the session page works, the audit card says 403
    ``insufficient_scope``, and the key is kept (the page does not sign the operator out)."""
    key = await broker.new_key("monitor:read", name="watcher")
    session = await broker.create_session(tools=["lookup_order"])
    await sign_in(page, broker, key)
    row = await wait_visible(page, f'#sessions tr[data-session-id="{session["id"]}"]')
    await row.locator("a").click()
    await wait_visible(page, '#session-state[data-state="created"]')
    banner = await wait_visible(page, '#audit-error[data-code="insufficient_scope"]')
    assert await banner.get_attribute("data-status") == "403"
    assert await page.locator("#audit-records tr").count() == 0
    assert await page.locator("#error").is_hidden()
    assert await page.evaluate("Object.values(sessionStorage)") == [key]
    assert_no_page_errors(page)
