"""The demo page in Chromium: a real browser on a real WebRTC call through the broker.

The broker and the emulator run on loopback; Chromium loads the demo page from the broker,
gets its session from ``POST /demo/session`` (the page never holds a key), offers through the
broker, and talks to the emulator directly over WebRTC.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from tests.e2e.conftest import FLAGS, launch, screenshot, write_wav
from tests.support.audio import silence, speech_like_signal
from tests.support.broker_process import BrokerLauncher
from tests.support.broker_server import RunningBroker
from tests.support.flow import LOOKUP_42_OUTPUT, wait_session_ended, wait_sideband
from tests.support.servers import RunningEmulator, request_json, set_faults

CALL_TIMEOUT_MS = 20_000


async def start_call(page: Any, broker: RunningBroker, *, bridge: bool = False) -> dict[str, Any]:
    """Open the demo, start a call; returns what ``POST /demo/session`` gave the page."""
    await page.goto(broker.base_url + "/")
    if bridge:
        await page.check("#bridge-toggle")
    async with page.expect_response("**/demo/session") as created:
        await page.click("#start")
    session: dict[str, Any] = await (await created.value).json()
    try:
        await page.wait_for_selector('#status[data-state="live"]', timeout=CALL_TIMEOUT_MS)
    except Exception as exc:
        lines = "\n".join(page.console_lines)
        raise AssertionError(f"call never went live: {exc}\n{lines}") from None
    if not bridge:
        # Start from a watched call, as tests/support/flow.py does: the page's tool rows
        # then show exactly one sideband run.
        await wait_sideband(broker, session["id"])
    return session


async def type_message(page: Any, text: str) -> None:
    await page.fill("#message", text)
    await page.click("#send")


async def wait_answer(page: Any, fragment: str) -> str:
    """The assistant transcript line containing ``fragment``, once it is there."""
    line = page.locator('#transcript .line[data-role="assistant"]', has_text=fragment)
    try:
        await line.first.wait_for(timeout=CALL_TIMEOUT_MS)
    except Exception as exc:
        raise AssertionError(
            f"no answer with {fragment!r}: {exc}\n{await page_report(page)}"
        ) from None
    text: str = await line.first.inner_text()
    return text


async def page_report(page: Any) -> str:
    """What the page saw, for a failure message: server events, transcript, console."""
    events = await page.evaluate("window.demo.events.slice(-80)")
    transcript = await page.locator("#transcript").inner_text()
    tools = await page.locator("#tools").inner_text()
    error = await page.locator("#error").inner_text()
    return "\n".join(
        [
            f"last events: {events}",
            f"transcript: {transcript!r}",
            f"tools: {tools!r}",
            f"error: {error!r}",
            *page.console_lines,
        ]
    )


async def look_up_order_42(page: Any) -> Any:
    """Type "lookup_order 42"; once the answer quotes the result, return its tool row."""
    await type_message(page, "lookup_order 42")
    # The answer streams in as transcript deltas: wait for the whole quote, not its start.
    answer = await wait_answer(page, f"lookup_order returned: {LOOKUP_42_OUTPUT}")
    assert answer.strip() == f"lookup_order returned: {LOOKUP_42_OUTPUT}"
    tool = page.locator("#tools li.tool").first
    await tool.locator(".result", has_text="shipped").wait_for(timeout=CALL_TIMEOUT_MS)
    return tool


async def test_a_typed_tool_call_runs_on_the_broker_via_the_sideband(
    page: Any, demo_broker: RunningBroker
) -> None:
    """Must-show 1: "lookup_order 42" runs on the broker (sideband); the page shows the tool
    activity and the answer quoting the result; the record says path ``sideband``."""
    session = await start_call(page, demo_broker)
    assert {"id", "client_secret", "offer_url", "bridge_url", "end_url"} <= set(session)
    assert set(session["client_secret"]) == {"value", "expires_at"}  # the API's shape
    tool = await look_up_order_42(page)
    assert await tool.get_attribute("data-name") == "lookup_order"
    assert await tool.get_attribute("data-path") == "sideband"
    assert json.loads(await tool.locator(".arguments").inner_text()) == {"order_id": "42"}
    await screenshot(page, "sideband-tool-call")

    detail = await demo_broker.get_session(session["id"])
    [row] = detail["tool_calls"]
    assert (row["tool"], row["path"], row["status"]) == ("lookup_order", "sideband", "succeeded")
    assert row["injected_at"] is not None


async def test_with_the_bridge_switch_the_same_tool_call_works_through_the_bridge(
    page: Any, demo_broker: RunningBroker
) -> None:
    """Must-show 3: a session without a sideband; the page runs the call through the bridge
    and injects the output itself."""
    session = await start_call(page, demo_broker, bridge=True)
    tool = await look_up_order_42(page)
    assert await tool.get_attribute("data-path") == "bridge"
    await screenshot(page, "bridge-tool-call")

    detail = await demo_broker.get_session(session["id"])
    assert detail["sideband"]["enabled"] is False
    [row] = detail["tool_calls"]
    assert (row["tool"], row["path"], row["status"]) == ("lookup_order", "bridge", "succeeded")

    # No sideband sees this call end: Hang up tells the broker, which ends it at once.
    await page.click("#hangup")
    await page.wait_for_selector('#status[data-state="ended"]', timeout=CALL_TIMEOUT_MS)
    ended = await wait_session_ended(demo_broker, session["id"], timeout=10)
    assert (ended["state"], ended["end_reason"]) == ("ended", "hangup")


def udp_ports_of(pid: int) -> set[int]:
    """The local ports of the UDP sockets process ``pid`` holds (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def sdp_candidates(sdp: str) -> set[tuple[str, int]]:
    """``(address, port)`` of every ``a=candidate`` line."""
    found = set()
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            found.add((parts[4], int(parts[5])))
    return found


async def test_media_flows_between_the_browser_and_the_provider_never_the_broker(
    page: Any,
    emulator: RunningEmulator,
    tools_config: Path,
    db_url: str,
    tmp_path: Path,
) -> None:
    """Must-show 2: the selected ICE pair joins Chromium to the emulator's peer (a candidate
    of its answer, on a UDP port of the emulator's process); the broker, its own process here,
    holds no UDP socket at all during the call."""
    async with BrokerLauncher(db_url, emulator.base_url, tools_config, tmp_path) as launcher:
        broker = await launcher.start(BROKER_DEMO="1")
        await page.goto(broker.base_url + "/")
        async with page.expect_response("**/realtime-offer") as offered:
            await page.click("#start")
        answer = await (await offered.value).text()
        await page.wait_for_selector('#status[data-state="live"]', timeout=CALL_TIMEOUT_MS)
        pair = await page.evaluate("window.demo.selectedPair()")
        broker_udp = udp_ports_of(broker.process.pid)
        emulator_udp = udp_ports_of(os.getpid())
        await screenshot(page, "media-path")

    remote = (pair["remote"]["address"], int(pair["remote"]["port"]))
    assert pair["remote"]["protocol"] == "udp", pair
    assert remote in sdp_candidates(answer), (pair, answer)
    assert remote[1] in emulator_udp
    assert broker_udp == set()


def write_speech_wav(path: Path) -> Path:
    """A fake-microphone WAV: 1.5 s of silence, 1.5 s of speech-like sound, 3 s of silence.

    Chromium loops the file, so the caller "speaks" every 6 s.
    """
    return write_wav(path, np.concatenate([silence(1.5), speech_like_signal(1.5), silence(3.0)]))


async def test_speech_on_the_microphone_is_heard_and_answered_with_audible_audio(
    playwright: Any, demo_broker: RunningBroker, tmp_path: Path
) -> None:
    """Must-show 4: with a fake microphone playing speech, speech_started / speech_stopped
    arrive on the page, and its remote audio element gets non-silent audio (an AnalyserNode
    in the page measures it)."""
    wav = write_speech_wav(tmp_path / "speech.wav")
    browser = await launch(playwright, f"--use-file-for-fake-audio-capture={wav}")
    try:
        context = await browser.new_context(viewport={"width": 1100, "height": 760})
        page = await context.new_page()
        page.console_lines = []
        await start_call(page, demo_broker)
        await page.wait_for_function(
            """() => ['input_audio_buffer.speech_started', 'input_audio_buffer.speech_stopped',
                      'response.done'].every(t => window.demo.events.includes(t))""",
            timeout=CALL_TIMEOUT_MS,
        )
        await page.wait_for_function("window.demo.peakAudioLevel > 0.01", timeout=CALL_TIMEOUT_MS)
        peak = await page.evaluate("window.demo.peakAudioLevel")
        await screenshot(page, "speech")
        await context.close()
    finally:
        await browser.close()
    assert peak > 0.01


async def test_the_page_says_clearly_what_went_wrong(
    playwright: Any,
    page: Any,
    demo_broker: RunningBroker,
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
) -> None:
    """Provider unreachable (the offer fails upstream), a call ended by the provider, and a
    microphone the user refuses each get their own code and message on the page."""
    await set_faults(http, emulator, create_call_error={"status": 503, "count": 1})
    await page.goto(demo_broker.base_url + "/")
    await page.click("#start")
    error = page.locator("#error")
    await page.wait_for_selector('#error[data-code="provider_error"]', timeout=CALL_TIMEOUT_MS)
    assert "unreachable" in (await error.inner_text())

    session = await start_call(page, demo_broker)  # the fault answered once only
    call_id = (await demo_broker.get_session(session["id"]))["call_id"]
    status, body = await request_json(http, emulator, "POST", f"/_emulator/calls/{call_id}/end", {})
    assert status == 200, body
    await page.wait_for_selector('#status[data-state="ended"]', timeout=CALL_TIMEOUT_MS)
    assert "Call ended" in await page.locator("#status").inner_text()

    # No fake-UI flag: the permission request is refused, as when the user says no.
    denying = await playwright.chromium.launch(
        executable_path="/usr/bin/chromium",
        headless=True,
        args=[f for f in FLAGS if f != "--use-fake-ui-for-media-stream"],
    )
    try:
        context = await denying.new_context()
        refused = await context.new_page()
        await refused.goto(demo_broker.base_url + "/")
        await refused.click("#start")
        await refused.wait_for_selector('#error[data-code="mic_denied"]', timeout=CALL_TIMEOUT_MS)
        assert "denied" in await refused.locator("#error").inner_text()
        await context.close()
    finally:
        await denying.close()
