"""The ops dashboard in Chromium: an operator watches a live call, sees its tool call, hangs up.

The call is made by the aiortc stand-in browser (``tests/support/flow.py``) against the
broker and the emulator on loopback; Chromium only runs the dashboard at ``/ops/``, signed in
with an ops API key pasted into its form. Every wait is on a condition in the page or in the
broker, never a fixed sleep.

``OPS_DOCS_SCREENSHOT=1`` also writes ``docs/ops.png`` (the README's picture of the session
page mid-call) from the first scenario.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BrokerFactory
from tests.e2e.conftest import screenshot
from tests.support.broker_server import RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import (
    LOOKUP_42_OUTPUT,
    ask,
    connect_browser,
    says,
    session_events,
    wait_call_ended,
    wait_session_ended,
)
from tests.support.servers import RunningEmulator

WAIT_MS = 20_000
DOCS_PNG = Path(__file__).resolve().parents[2] / "docs" / "ops.png"


async def sign_in(page: Any, broker: RunningBroker, key: str) -> None:
    """Open the dashboard and paste ``key`` into its form."""
    await page.goto(broker.base_url + "/ops/")
    await page.fill("#key-input", key)
    await page.click("#key-save")


async def page_report(page: Any) -> str:
    """What the dashboard showed, for a failure message."""
    parts = []
    for selector in ("#error", "#action-error", "#stream-status", "#session-state", "#timeline"):
        locator = page.locator(selector)
        if await locator.count():
            parts.append(f"{selector}: {await locator.first.text_content()!r}")
    return "\n".join([*parts, *page.console_lines[-40:]])


async def wait_visible(page: Any, selector: str, **filters: Any) -> Any:
    """The first element matching ``selector`` (and ``has_text``, …) once it is visible."""
    locator = page.locator(selector, **filters).first
    try:
        await locator.wait_for(timeout=WAIT_MS)
    except Exception as exc:
        raise AssertionError(f"{selector} never showed: {exc}\n{await page_report(page)}") from None
    return locator


class CuttableProxy:
    """A loopback TCP proxy in front of the broker whose open connections the test can cut.

    It keeps every byte the page sent, so a test can see the request headers (the event
    stream's ``Last-Event-ID``) after a cut.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sent = bytearray()
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {client_w, upstream_w}
        pipes = [
            asyncio.create_task(self._pipe(client_r, upstream_w, record=True), name="proxy-up"),
            asyncio.create_task(self._pipe(upstream_r, client_w, record=False), name="proxy-down"),
        ]
        self._pipes.update(pipes)
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pipes:
                task.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self._pipes.difference_update(pipes)
            for writer in (client_w, upstream_w):
                self._writers.discard(writer)
                writer.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, record: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                if record:
                    self.sent.extend(chunk)
                writer.write(chunk)
                await writer.drain()

    def cut(self) -> int:
        """Reset every open connection (the page sees its streams fail); how many there were."""
        writers = list(self._writers)
        for writer in writers:
            writer.transport.abort()
        return len(writers)

    def last_event_ids(self) -> list[int]:
        """Every ``Last-Event-ID`` the page has sent so far."""
        return [int(v) for v in re.findall(rb"(?im)^last-event-id: *([0-9]+)\r$", self.sent)]

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)


@pytest.fixture
async def proxy(broker: RunningBroker) -> AsyncIterator[CuttableProxy]:
    running = CuttableProxy(int(broker.base_url.rsplit(":", 1)[1]))
    await running.start()
    yield running
    await running.close()


async def docs_screenshot(page: Any) -> None:
    """``docs/ops.png``: the session page mid-call, its timeline from the user's question on."""
    await page.set_viewport_size({"width": 1280, "height": 940})
    await page.eval_on_selector(
        "#timeline",
        """timeline => {
            const added = timeline.querySelectorAll(
                'li[data-event-type="conversation.item.added"]');
            const asked = [...added].find(row => row.textContent.includes("user: lookup_order"));
            if (asked) timeline.scrollTop = asked.offsetTop - timeline.offsetTop - 4;
        }""",
    )
    await page.screenshot(path=str(DOCS_PNG))


def assert_no_page_errors(page: Any) -> None:
    """No uncaught script error and nothing the Content-Security-Policy had to block."""
    bad = [
        line
        for line in page.console_lines
        if line.startswith("pageerror") or "Content Security Policy" in line
    ]
    assert not bad, "\n".join(bad)


def accept_dialogs(page: Any, seen: list[str]) -> None:
    """Answer every confirm() with OK, keeping its message."""

    async def accept(dialog: Any) -> None:
        seen.append(dialog.message)
        await dialog.accept()

    page.on("dialog", accept)


async def test_an_operator_sees_a_live_call_and_its_tool_call_and_hangs_it_up(
    broker: RunningBroker, emulator: RunningEmulator, page: Any
) -> None:
    """Must-show: (a) an ops key lists the live session an aiortc browser made; (b) its page
    shows the tool call as it happens (asked only once the page's stream is open); (c) the
    Hang up button ends the call at the provider and the session as ``ops_hangup``."""
    key = await broker.new_key("monitor:read", "admin", name="ops dashboard")
    session = await broker.create_session(tools=["lookup_order"])
    browser: FakeBrowser = await connect_browser(broker, session)
    try:
        await sign_in(page, broker, key)
        row = await wait_visible(page, f'#sessions tr[data-session-id="{session["id"]}"]')
        assert await row.get_attribute("data-state") == "live"
        assert await row.locator('.badge[data-sideband="connected"]').count() == 1
        # The key stays in this tab's sessionStorage: not in the URL, not in localStorage.
        assert key not in page.url
        assert await page.evaluate("localStorage.length") == 0
        assert await page.evaluate("Object.values(sessionStorage)") == [key]
        await wait_visible(page, '#counts li[data-count="live"]')
        await screenshot(page, "ops-sessions")

        await row.locator("a").click()
        await wait_visible(page, '#session-state[data-state="live"]')
        await wait_visible(page, '#stream-status[data-state="live"]')
        # The stream has replayed the call so far; nothing about a tool yet.
        await wait_visible(page, '#timeline li[data-event-type="broker.sideband_attached"]')
        assert await page.locator("#timeline li.event.tool").count() == 0
        assert page.url.endswith(f"#/sessions/{session['id']}")

        ask(browser, "lookup_order 42")
        tool_event = await wait_visible(
            page, '#timeline li[data-event-type="broker.tool_call"][data-direction="broker"]'
        )
        assert "lookup_order → succeeded" in await tool_event.inner_text()
        assert await tool_event.get_attribute("data-tool") == "true"
        await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT))
        call_row = await wait_visible(
            page, '#tool-calls li.tool-call[data-tool="lookup_order"][data-status="succeeded"]'
        )
        assert await call_row.get_attribute("data-path") == "sideband"
        arguments = await call_row.locator("pre.arguments").inner_text()
        assert json.loads(arguments) == {"order_id": "42"}
        output = await call_row.locator("pre.output").inner_text()
        assert json.loads(output) == json.loads(LOOKUP_42_OUTPUT)
        await wait_visible(
            page, '#transcript .line[data-role="assistant"]', has_text="lookup_order returned"
        )
        await wait_visible(page, '#transcript .line[data-role="user"]', has_text="lookup_order 42")
        await screenshot(page, "ops-session-tool-call")
        if os.environ.get("OPS_DOCS_SCREENSHOT"):
            await docs_screenshot(page)

        call_id = (await broker.get_session(session["id"]))["call_id"]
        call = emulator.registry.get(call_id)
        assert call is not None and not call.ended
        dialogs: list[str] = []
        accept_dialogs(page, dialogs)
        await page.click("#hangup")
        await wait_call_ended(call, timeout=10)
        assert call.end_reason == "hangup"
        assert len(dialogs) == 1 and session["id"] in dialogs[0]
        await wait_visible(page, '#session-state[data-state="ended"]')
        await wait_visible(page, "#session-end-reason", has_text="ops_hangup")
        await wait_visible(page, '#timeline li[data-event-type="broker.ops_hangup"]')
        await wait_visible(page, '#stream-status[data-state="complete"]')
        assert await page.locator("#hangup").is_disabled()
        assert await page.locator("#action-error").is_hidden()
        detail = await wait_session_ended(broker, session["id"])
        assert (detail["state"], detail["end_reason"]) == ("ended", "ops_hangup")
        await screenshot(page, "ops-hung-up")

        # Back on the list: the row has caught up, and the state filter works.
        await page.click("a.back")
        ended_row = await wait_visible(
            page, f'#sessions tr[data-session-id="{session["id"]}"][data-state="ended"]'
        )
        chip = ended_row.locator('.chip[data-outcome="succeeded"]')
        await chip.wait_for(timeout=WAIT_MS)
        assert await chip.inner_text() == "1 succeeded"
        assert "ops_hangup" in await ended_row.inner_text()
        await page.select_option("#state-filter", "live,degraded")
        await wait_visible(page, "#sessions-empty")
        assert await page.locator("#sessions tr").count() == 0
        await page.select_option("#state-filter", "ended")
        await wait_visible(page, f'#sessions tr[data-session-id="{session["id"]}"]')
        await screenshot(page, "ops-sessions-ended")
        assert_no_page_errors(page)
    finally:
        await browser.close()


async def test_a_wrong_key_gets_a_clear_error_and_is_not_kept(
    broker: RunningBroker, page: Any
) -> None:
    """Must-show (d): a key the broker does not know shows 401 ``invalid_api_key``; a valid
    key without ``monitor:read`` shows 403 ``insufficient_scope``; neither is kept."""
    await sign_in(page, broker, "bk_this-is-not-a-key")
    error = await wait_visible(page, '#error[data-code="invalid_api_key"]')
    text = await error.inner_text()
    assert "401" in text and "invalid_api_key" in text and "refused this API key" in text
    assert await page.locator("#key-form").is_visible()
    assert await page.locator("#sessions-view").is_hidden()
    assert await page.evaluate("sessionStorage.length") == 0
    await screenshot(page, "ops-wrong-key")
    # The page's policy holds in the browser: an inline script (what an injection would be)
    # is refused, not run.
    violated = await page.evaluate(
        """() => new Promise(resolve => {
            document.addEventListener(
                "securitypolicyviolation", e => resolve(e.effectiveDirective), {once: true});
            const script = document.createElement("script");
            script.textContent = "window.injected = true";
            document.body.append(script);
        })"""
    )
    assert violated == "script-src-elem"
    assert await page.evaluate("window.injected === undefined")

    creator = await broker.new_key("sessions:create", name="backend")
    await sign_in(page, broker, creator)
    error = await wait_visible(page, '#error[data-code="insufficient_scope"]')
    assert "403" in await error.inner_text()
    assert await page.evaluate("sessionStorage.length") == 0


async def test_the_kill_switch_and_a_watch_only_keys_refusals(
    broker: RunningBroker, page: Any
) -> None:
    """Disable/Enable switch the tool for every session; a ``monitor:read`` key can watch
    but its Disable gets the API's 403 shown on the page; "Forget key" forgets."""
    session = await broker.create_session(tools=["lookup_order"])
    admin = await broker.new_key("monitor:read", "admin", name="ops admin")
    await sign_in(page, broker, admin)
    await page.goto(f"{broker.base_url}/ops/#/sessions/{session['id']}")
    switch = await wait_visible(page, '#tool-switches li[data-tool="lookup_order"]')
    assert await switch.get_attribute("data-disabled") == "false"
    dialogs: list[str] = []
    accept_dialogs(page, dialogs)

    await switch.locator('button[data-action="disable"]').click()
    await wait_visible(page, '#tool-switches li[data-tool="lookup_order"][data-disabled="true"]')
    listed = (await broker.request("GET", "/api/v1/tools")).json()["tools"]
    [entry] = [t for t in listed if t["name"] == "lookup_order"]
    assert entry["disabled"] is True and entry["reason"] == "switched off from the ops dashboard"
    await screenshot(page, "ops-tool-disabled")
    await page.locator('#tool-switches button[data-action="enable"]').click()
    await wait_visible(page, '#tool-switches li[data-tool="lookup_order"][data-disabled="false"]')
    listed = (await broker.request("GET", "/api/v1/tools")).json()["tools"]
    assert [t["disabled"] for t in listed if t["name"] == "lookup_order"] == [False]
    assert len(dialogs) == 2 and "lookup_order" in dialogs[0]

    await page.click("#forget-key")
    await wait_visible(page, "#key-form")
    assert await page.evaluate("sessionStorage.length") == 0

    watcher = await broker.new_key("monitor:read", name="ops watcher")
    await page.fill("#key-input", watcher)
    await page.click("#key-save")
    await wait_visible(page, '#session-state[data-state="created"]')
    await wait_visible(page, '#tool-switches button[data-action="disable"]')
    await page.locator('#tool-switches button[data-action="disable"]').click()
    refused = await wait_visible(page, '#action-error[data-code="insufficient_scope"]')
    assert "403" in await refused.inner_text()
    listed = (await broker.request("GET", "/api/v1/tools")).json()["tools"]
    assert [t["disabled"] for t in listed if t["name"] == "lookup_order"] == [False]
    # The page goes on: a refused action does not sign the operator out.
    assert await page.locator("#session-view").is_visible()
    assert await page.evaluate("sessionStorage.length") == 1
    assert_no_page_errors(page)


async def shown_seqs(page: Any) -> list[int]:
    """The ``seq`` of every event row in the timeline, top to bottom."""
    seqs: list[str] = await page.eval_on_selector_all(
        "#timeline li.event", "rows => rows.map(row => row.dataset.seq)"
    )
    return [int(seq) for seq in seqs]


async def test_the_timeline_resumes_after_a_cut_stream_with_no_gap_and_no_duplicate(
    broker: RunningBroker, proxy: CuttableProxy, page: Any
) -> None:
    """The page reads the event stream with fetch(); when the connection drops it reconnects
    with ``Last-Event-ID`` (its last seq) and goes on: every stored event shows exactly once,
    in order, including the tool call made after the cut."""
    key = await broker.new_key("monitor:read", "admin", name="ops dashboard")
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        await page.goto(f"{proxy.base_url}/ops/#/sessions/{session['id']}")
        await page.fill("#key-input", key)
        await page.click("#key-save")
        await wait_visible(page, '#stream-status[data-state="live"]')
        await wait_visible(page, '#timeline li[data-event-type="broker.sideband_attached"]')
        before = await shown_seqs(page)
        assert proxy.last_event_ids() == []  # the first connect starts from the beginning

        assert proxy.cut() > 0
        async with asyncio.timeout(15):
            while not [n for n in proxy.last_event_ids() if n >= before[-1]]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        await wait_visible(page, '#stream-status[data-state="live"]')

        ask(browser, "lookup_order 42")
        await wait_visible(page, '#timeline li[data-event-type="broker.tool_call"]')
        hung_up = await broker.request("POST", f"/api/v1/sessions/{session['id']}/hangup")
        assert hung_up.status == 200, hung_up.text
        await wait_session_ended(broker, session["id"])
        await wait_visible(page, '#stream-status[data-state="complete"]')

        seqs = await shown_seqs(page)
        assert seqs == sorted(set(seqs)), "a duplicate or an out-of-order event"
        shown_types = await page.eval_on_selector_all(
            "#timeline li.event", "rows => rows.map(row => row.dataset.eventType)"
        )
        stored_types = [event["type"] for event in await session_events(broker, session["id"])]
        assert shown_types == stored_types
        assert_no_page_errors(page)
    finally:
        await browser.close()


async def test_load_more_follows_the_cursor_and_the_list_keeps_every_row_fresh(
    make_broker: BrokerFactory, page: Any
) -> None:
    """A page of 50; *Load more* asks for the next through ``next_cursor``, and the polls
    that follow keep both pages."""
    broker = await make_broker(session_create_burst=100)
    ids = [(await broker.create_session())["id"] for _ in range(53)]
    key = await broker.new_key("monitor:read", name="ops watcher")
    await sign_in(page, broker, key)
    rows = page.locator("#sessions tr[data-session-id]")
    await wait_visible(page, f'#sessions tr[data-session-id="{ids[-1]}"]')
    load_more = await wait_visible(page, "#load-more")
    assert await rows.count() == 50
    await load_more.click()
    await wait_visible(page, f'#sessions tr[data-session-id="{ids[0]}"]')
    assert await page.locator("#load-more").is_hidden()
    assert await rows.count() == 53
    shown = await page.eval_on_selector_all(
        "#sessions tr[data-session-id]", "rows => rows.map(row => row.dataset.sessionId)"
    )
    assert sorted(shown) == sorted(ids)  # both pages, none twice
    # A session created now shows up on top at the next poll, and the older rows stay.
    newest = (await broker.create_session())["id"]
    await wait_visible(page, f'#sessions tr[data-session-id="{newest}"]')
    assert await rows.count() == 54
    await wait_visible(page, '#counts li[data-count="created"]', has_text="54")
    assert_no_page_errors(page)
