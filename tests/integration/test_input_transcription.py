"""Input transcription: the user's spoken words in the transcript, and what they cost.

The provider leaves a user's audio item without words (``transcript: null``) and sends them
later in ``conversation.item.input_audio_transcription.completed``, only for a session whose
config sets ``audio.input.transcription`` (docs/protocol.md §0). The broker sets it for every
session (``BROKER_INPUT_TRANSCRIPTION_MODEL``) unless the create request chooses.

Voice turns come from a real aiortc peer whose gated microphone (tests/support/audio.py)
speaks once the test has told the emulator what the turn says (tests/support/hearing.py);
the broker and the emulator run on loopback, webhooks go to a real receiver.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import aiohttp
import pytest

from broker.record.usage import Usage, usage_of_event
from sideband.events import parse_observed_event
from tests.conftest import BrokerFactory
from tests.integration.test_webhooks import assert_signed, webhook_settings
from tests.support.audio import ScriptedMicTrack, silence, speech_like_signal
from tests.support.broker_server import RunningBroker
from tests.support.browser import FakeBrowser
from tests.support.flow import connect_browser, session_events, wait_session_ended
from tests.support.hearing import hear, mishear
from tests.support.metrics import moved, scrape
from tests.support.servers import RunningEmulator
from tests.support.webhook_receiver import WebhookReceiver

SAID: Final = "Where is my order 42, please?"
TRANSCRIPTION: Final = "conversation.item.input_audio_transcription"
COMPLETED: Final = f"{TRANSCRIPTION}.completed"
DELTA: Final = f"{TRANSCRIPTION}.delta"
FAILED: Final = f"{TRANSCRIPTION}.failed"


# ---- helpers --------------------------------------------------------------------------------


class VoiceCall:
    """A page with a microphone that says one utterance once :meth:`speak` is called."""

    def __init__(self, broker: RunningBroker, session: dict[str, Any]) -> None:
        self.broker = broker
        self.session = session
        self.gate = asyncio.Event()
        mic = ScriptedMicTrack(
            [silence(0.3), speech_like_signal(0.8), silence(0.6)], gate=self.gate
        )
        self.browser = FakeBrowser(mic=mic)
        self.call_id = ""

    async def open(self) -> None:
        await connect_browser(self.broker, self.session, self.browser)
        self.call_id = (await self.broker.get_session(self.session["id"]))["call_id"]

    async def speak(
        self, http: aiohttp.ClientSession, emulator: RunningEmulator, words: str | None
    ) -> str:
        """Say ``words`` (``None``: a turn whose transcription fails); the turn's item id,
        once the model has answered it."""
        if words is None:
            await mishear(http, emulator, self.call_id)
        else:
            await hear(http, emulator, self.call_id, words)
        self.gate.set()
        committed = await self.browser.wait_for("input_audio_buffer.committed", timeout=10)
        await self.browser.wait_for("response.done", timeout=10)
        return str(committed["item_id"])

    def usage_seen(self) -> Usage:
        """What every usage-bearing event the page received reports (the sideband gets the
        same events)."""
        total = Usage()
        for event in self.browser.events:
            total += usage_of_event(parse_observed_event(event)) or Usage()
        return total

    async def close(self) -> None:
        await self.browser.close()


async def voice_call(broker: RunningBroker, **body: Any) -> VoiceCall:
    call = VoiceCall(broker, await broker.create_session(**body))
    await call.open()
    return call


async def transcript_with(
    broker: RunningBroker, session_id: str, entry: dict[str, Any]
) -> list[dict[str, Any]]:
    """Poll the session detail (the event log is written in batches) until its transcript
    holds ``entry``."""
    async with asyncio.timeout(10):
        # Polling the public API on purpose: it is what an app backend would read.
        while entry not in (lines := (await broker.get_session(session_id))["transcript"]):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    return lines


def spoken(text: str, **marks: Any) -> dict[str, Any]:
    return {"type": "turn", "role": "user", "text": text, **marks}


# ---- the create request ---------------------------------------------------------------------


async def test_the_setting_and_the_request_choose_the_transcription(
    make_broker: BrokerFactory,
) -> None:
    """Absent: the setting's model; an object: its fields over the setting's model; ``null``:
    none. The choice is in the create answer and the detail."""
    broker = await make_broker()
    cases: list[tuple[dict[str, Any], dict[str, Any] | None]] = [
        ({}, {"model": "gpt-4o-mini-transcribe"}),
        (
            {"input_transcription": {"language": "de"}},
            {"model": "gpt-4o-mini-transcribe", "language": "de"},
        ),
        (
            {"input_transcription": {"model": "whisper-1", "prompt": "Order numbers, SKUs."}},
            {"model": "whisper-1", "prompt": "Order numbers, SKUs."},
        ),
        ({"input_transcription": None}, None),
    ]
    for body, expected in cases:
        created = await broker.create_session(**body)
        assert created["input_transcription"] == expected, body
        detail = await broker.get_session(created["id"])
        assert detail["input_transcription"] == expected, body

    off = await make_broker(input_transcription_model=None)
    assert (await off.create_session())["input_transcription"] is None
    chosen = await off.create_session(input_transcription={"model": "gpt-4o-transcribe"})
    assert chosen["input_transcription"] == {"model": "gpt-4o-transcribe"}


@pytest.mark.parametrize(
    ("transcription", "loc"),
    [
        ({"language": "en-US"}, "input_transcription.language"),
        ({"language": "EN"}, "input_transcription.language"),
        ({"model": "gpt 4o"}, "input_transcription.model"),
        ({"model": ""}, "input_transcription.model"),
        ({"prompt": "p" * 1025}, "input_transcription.prompt"),
        ({"model": "whisper-1", "delay": "low"}, "input_transcription.delay"),
        ("whisper-1", "input_transcription"),
    ],
)
async def test_a_malformed_transcription_is_refused_naming_the_field(
    broker: RunningBroker, transcription: Any, loc: str
) -> None:
    reply = await broker.request(
        "POST", "/api/v1/sessions", json_body={"input_transcription": transcription}
    )
    assert (reply.status, reply.code) == (422, "invalid_request"), reply.text
    assert [error["loc"] for error in reply.json()["errors"]] == [loc]


async def test_no_model_to_fall_back_on_is_refused(make_broker: BrokerFactory) -> None:
    broker = await make_broker(input_transcription_model=None)
    reply = await broker.request(
        "POST", "/api/v1/sessions", json_body={"input_transcription": {"language": "en"}}
    )
    assert (reply.status, reply.code) == (422, "transcription_model_required"), reply.text


# ---- the call -------------------------------------------------------------------------------


async def test_a_session_without_transcription_asks_for_none_and_its_turns_have_no_words(
    broker: RunningBroker, emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """``input_transcription: null``: the provider's session has no transcription, a spoken
    turn gets no transcription events, and the transcript shows the turn without words."""
    call = await voice_call(broker, input_transcription=None)
    try:
        provider = emulator.registry.get(call.call_id)
        assert provider is not None
        assert provider.session["audio"]["input"]["transcription"] is None
        item_id = await call.speak(http, emulator, SAID)
        lines = await transcript_with(broker, call.session["id"], spoken(""))
        assert lines[0] == spoken("")
        assert not [e for e in call.browser.events if e["type"].startswith(TRANSCRIPTION)]
        assert await session_events(broker, call.session["id"], COMPLETED) == []
        assert item_id in {
            e["payload"]["item_id"]
            for e in await session_events(
                broker, call.session["id"], "input_audio_buffer.committed"
            )
        }
    finally:
        await call.close()
    detail = await wait_session_ended(broker, call.session["id"], timeout=15)
    assert detail["usage"]["input_transcription"]["transcriptions"] == 0


@pytest.mark.parametrize(
    ("transcription", "kind"),
    [
        pytest.param({}, "tokens", id="the-settings-model"),
        pytest.param({"input_transcription": {"model": "whisper-1"}}, "duration", id="whisper-1"),
    ],
)
async def test_a_voice_turn_shows_the_users_words_and_bills_its_transcription(
    make_broker: BrokerFactory,
    emulator: RunningEmulator,
    http: aiohttp.ClientSession,
    receiver: WebhookReceiver,
    transcription: dict[str, Any],
    kind: str,
) -> None:
    """Must-show (a): a turn spoken into the page's microphone is in the session's transcript
    with the user's words, its transcription's usage is in the session's usage, the
    ``session.ended`` webhook's and the key's, apart from the responses', and in the metrics.
    The words so far (the deltas) are stored too."""
    broker = await make_broker(**webhook_settings(receiver.url))
    made = await broker.request(
        "POST",
        "/api/v1/keys",
        json_body={"name": "voice", "scopes": ["sessions:create"], "tools": ["*"]},
    )
    key_id, token = made.json()["id"], made.json()["key"]
    before = await scrape(broker)
    reply = await broker.request("POST", "/api/v1/sessions", token=token, json_body=transcription)
    assert reply.status == 201, reply.text
    call = VoiceCall(broker, reply.json())
    await call.open()
    try:
        item_id = await call.speak(http, emulator, SAID)
        completed = await call.browser.wait_for(
            COMPLETED, lambda e: e["item_id"] == item_id, timeout=10
        )
        assert completed["usage"]["type"] == kind
        lines = await transcript_with(broker, call.session["id"], spoken(SAID))
        assert lines[0] == spoken(SAID)
        assert [line["role"] for line in lines] == ["user", "assistant"]
        deltas = await session_events(broker, call.session["id"], DELTA)
        assert "".join(d["payload"]["delta"] for d in deltas) == SAID
    finally:
        await call.close()
    detail = await wait_session_ended(broker, call.session["id"], timeout=15)

    expected = call.usage_seen()
    assert expected.transcriptions == 1 and expected.responses >= 1
    heard = expected.as_json()["input_transcription"]
    if kind == "tokens":
        assert heard["input_token_details"]["audio_tokens"] > 0 and heard["output_tokens"] > 0
        assert heard["seconds"] == 0
    else:
        assert heard["seconds"] >= 1 and heard["total_tokens"] == 0
    assert detail["usage"] == expected.as_json()
    [delivery] = await receiver.wait_deliveries(1)
    data = assert_signed(delivery)["data"]
    assert data["session_id"] == call.session["id"]
    assert data["usage"] == expected.as_json()
    keys = (await broker.request("GET", "/api/v1/keys?include=usage")).json()["keys"]
    [key] = [k for k in keys if k["id"] == key_id]
    assert key["usage"] == expected.as_json()

    after = await scrape(broker)
    assert moved(before, after, "broker_transcriptions_total") == 1
    for (direction, modality), count in expected.metric_transcription_tokens().items():
        assert (
            moved(
                before,
                after,
                "broker_transcription_tokens_total",
                direction=direction,
                modality=modality,
            )
            == count
        ), (direction, modality)
    assert moved(before, after, "broker_transcription_audio_seconds_total") == heard["seconds"]


async def test_a_failed_transcription_is_a_turn_without_words_that_says_so(
    broker: RunningBroker, emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    call = await voice_call(broker)
    try:
        item_id = await call.speak(http, emulator, None)
        await call.browser.wait_for(FAILED, lambda e: e["item_id"] == item_id, timeout=10)
        lines = await transcript_with(
            broker, call.session["id"], spoken("", transcription="failed")
        )
        assert lines[0] == spoken("", transcription="failed")
    finally:
        await call.close()
    detail = await wait_session_ended(broker, call.session["id"], timeout=15)
    assert detail["usage"]["input_transcription"]["transcriptions"] == 0


async def test_the_words_survive_the_event_logs_caps(
    make_broker: BrokerFactory, emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """Deltas are coalescible: with no room for any, they are dropped (and counted), and the
    completed transcription (kept) still gives the turn all its words."""
    broker = await make_broker(event_log_max_coalescible=0)
    call = await voice_call(broker, input_transcription={"model": "gpt-4o-transcribe"})
    try:
        item_id = await call.speak(http, emulator, SAID)
        await call.browser.wait_for(COMPLETED, lambda e: e["item_id"] == item_id, timeout=10)
        assert len([e for e in call.browser.events if e["type"] == DELTA]) > 1
        lines = await transcript_with(broker, call.session["id"], spoken(SAID))
        assert lines[0] == spoken(SAID)
    finally:
        await call.close()
    assert await session_events(broker, call.session["id"], DELTA) == []
    listed = await broker.request("GET", "/api/v1/sessions?limit=5")
    [row] = [r for r in listed.json()["sessions"] if r["id"] == call.session["id"]]
    assert row["events"]["dropped"] > 0
    assert row["usage"]["input_transcription"]["transcriptions"] == 1
