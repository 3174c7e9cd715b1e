"""The ops dashboard in Chromium shows what the user said in a voice call.

The call is made by the aiortc stand-in browser, whose gated microphone speaks one turn once
the emulator has been told what it says (tests/support/hearing.py); Chromium only runs the
dashboard at ``/ops/``. Every wait is on a condition in the page or in the broker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from tests.e2e.conftest import screenshot
from tests.e2e.test_ops_dashboard import assert_no_page_errors, sign_in, wait_visible
from tests.integration.test_input_transcription import COMPLETED, SAID, VoiceCall
from tests.support.broker_server import RunningBroker
from tests.support.servers import RunningEmulator


@asynccontextmanager
async def call_on_its_ops_page(broker: RunningBroker, page: Any) -> AsyncIterator[VoiceCall]:
    """An open voice call, its session's ops page signed in and streaming live; closed after."""
    key = await broker.new_key("monitor:read", name="ops dashboard")
    call = VoiceCall(broker, await broker.create_session())
    await call.open()
    try:
        await sign_in(page, broker, key)
        await page.goto(f"{broker.base_url}/ops/#/sessions/{call.session['id']}")
        await wait_visible(page, '#stream-status[data-state="live"]')
        yield call
    finally:
        await call.close()


async def test_an_operator_sees_what_the_user_said(
    broker: RunningBroker, emulator: RunningEmulator, http: aiohttp.ClientSession, page: Any
) -> None:
    """Must-show (b): a turn spoken into the page's microphone appears on the session's ops
    page as the user's words, in the transcript and on the live timeline, once the provider
    has transcribed it."""
    async with call_on_its_ops_page(broker, page) as call:
        await wait_visible(page, '#timeline li[data-event-type="broker.sideband_attached"]')
        assert await page.locator('#transcript .line[data-role="user"]').count() == 0

        item_id = await call.speak(http, emulator, SAID)
        await call.browser.wait_for(COMPLETED, lambda e: e["item_id"] == item_id, timeout=10)
        heard = await wait_visible(
            page, f'#timeline li[data-event-type="{COMPLETED}"][data-direction="in"]'
        )
        assert f"user said: {SAID}" in await heard.inner_text()
        line = await wait_visible(page, '#transcript .line[data-role="user"]', has_text=SAID)
        assert await line.locator(".words").inner_text() == SAID
        assert await line.get_attribute("data-partial") is None
        assert await line.locator(".note").count() == 0
        await wait_visible(page, '#transcript .line[data-role="assistant"]')
        await screenshot(page, "ops-spoken-turn")
        assert_no_page_errors(page)


async def test_a_turn_that_could_not_be_transcribed_says_so(
    broker: RunningBroker, emulator: RunningEmulator, http: aiohttp.ClientSession, page: Any
) -> None:
    async with call_on_its_ops_page(broker, page) as call:
        await call.speak(http, emulator, None)
        failed = await wait_visible(
            page,
            '#timeline li[data-event-type="conversation.item.input_audio_transcription.failed"]',
        )
        assert "transcription failed" in await failed.inner_text()
        line = await wait_visible(
            page, '#transcript .line[data-role="user"][data-transcription="failed"]'
        )
        assert await line.locator(".words").inner_text() == ""
        assert "transcription failed" in await line.locator(".note").inner_text()
        await screenshot(page, "ops-spoken-turn-failed")
        assert_no_page_errors(page)
