"""Error paths: HTTP envelopes, the sideband handshake, and realtime ``error`` events."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from emulator import EmulatorSettings
from tests.support.broker_server import PROVIDER_KEY
from tests.support.browser import FakeBrowser
from tests.support.conformance import validate_server_event
from tests.support.servers import (
    CALL_NOT_FOUND,
    RunningEmulator,
    SidebandProbe,
    offer_form,
    open_call,
    start_emulator,
)

KEY = PROVIDER_KEY  # the shared `emulator` fixture (tests/conftest.py) uses it
SESSION = {
    "type": "realtime",
    "tools": [
        {
            "type": "function",
            "name": "lookup_order",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string"}},
                "required": ["order_id"],
            },
        }
    ],
}


async def post_calls(
    http: aiohttp.ClientSession,
    emulator: RunningEmulator,
    data: Any,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    async with asyncio.timeout(5):
        response = await http.post(
            f"{emulator.base_url}/realtime/calls",
            data=data,
            headers=emulator.auth() if headers is None else headers,
        )
        body = await response.json()
    return response.status, body


def assert_envelope(body: dict[str, Any], code: str) -> dict[str, Any]:
    error = body["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    return dict(error)


async def test_bad_key_is_401(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """A wrong or missing Bearer key gets 401 invalid_api_key with param null; no call is made."""
    offer = await browser.create_offer()
    for headers in ({"Authorization": "Bearer sk-wrong"}, {}, {"Authorization": KEY}):
        status, body = await post_calls(http, emulator, offer_form(offer, SESSION), headers)
        assert status == 401
        assert assert_envelope(body, "invalid_api_key")["param"] is None
        assert KEY not in json.dumps(body)
    assert len(emulator.registry.calls) == 0


async def test_bad_sdp_is_400(emulator: RunningEmulator, http: aiohttp.ClientSession) -> None:
    """Garbage, empty or missing SDP gets 400 invalid_sdp in both request forms."""
    garbage = offer_form("hello, not sdp", SESSION)
    assert_envelope((await post_calls(http, emulator, garbage))[1], "invalid_sdp")
    form = aiohttp.FormData(default_to_multipart=True)
    form.add_field("session", json.dumps(SESSION))
    status, body = await post_calls(http, emulator, form)
    assert (status, body["error"]["code"]) == (400, "invalid_sdp")
    raw = {**emulator.auth(), "Content-Type": "application/sdp"}
    for text in ("", "v=0\r\n"):
        status, body = await post_calls(http, emulator, text, raw)
        assert (status, body["error"]["code"]) == (400, "invalid_sdp")
    assert len(emulator.registry.calls) == 0


async def test_session_without_type_is_400(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """A posted session without "type":"realtime" (or not JSON) gets 400 invalid_session."""
    offer = await browser.create_offer()
    status, body = await post_calls(http, emulator, offer_form(offer, {"model": "gpt-realtime"}))
    assert status == 400
    assert assert_envelope(body, "invalid_session")["param"] == "session.type"
    form = aiohttp.FormData()
    form.add_field("sdp", offer, content_type="application/sdp")
    form.add_field("session", "{not json", content_type="application/json")
    status, body = await post_calls(http, emulator, form)
    assert (status, body["error"]["code"]) == (400, "invalid_session")
    assert len(emulator.registry.calls) == 0


async def test_unknown_call_hangup_is_404(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """Hanging up an unknown call gets 404 call_id_not_found."""
    async with asyncio.timeout(5):
        response = await http.post(
            f"{emulator.base_url}/realtime/calls/rtc_u1_{'0' * 32}/hangup",
            headers={**emulator.auth(), "Content-Type": "application/json"},
        )
        body = await response.json()
    assert response.status == 404
    assert_envelope(body, "call_id_not_found")


async def test_unknown_route_and_inspection_auth(
    emulator: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    """Unknown routes answer the JSON envelope; the inspection route needs the key."""
    async with asyncio.timeout(5):
        response = await http.get(f"{emulator.base_url}/no/such/route", headers=emulator.auth())
        assert response.status == 404
        assert_envelope(await response.json(), "not_found")
        response = await http.get(f"{emulator.root_url}/_emulator/calls/rtc_u1_x")
        assert response.status == 401
        response = await http.get(
            f"{emulator.root_url}/_emulator/calls/rtc_u1_x", headers=emulator.auth()
        )
        assert response.status == 404
        assert_envelope(await response.json(), "call_id_not_found")


async def test_sideband_handshake_errors(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """Before the upgrade: a bad key is 401 and an unknown call is the exact real 404 body."""
    call_id = await open_call(http, emulator, browser, SESSION)
    async with asyncio.timeout(5):
        response = await http.get(
            f"{emulator.base_url}/realtime", params={"call_id": call_id}, headers={}
        )
        assert response.status == 401
        assert_envelope(await response.json(), "invalid_api_key")
        for params in ({"call_id": "rtc_u1_nope"}, {}):
            response = await http.get(
                f"{emulator.base_url}/realtime", params=params, headers=emulator.auth()
            )
            assert response.status == 404
            assert await response.json() == CALL_NOT_FOUND
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await http.ws_connect(f"{emulator.ws_url}?call_id={call_id}")
    assert info.value.status == 401
    assert emulator.registry.get(call_id).sideband_attaches == []  # type: ignore[union-attr]


async def test_sideband_404_until_ready_delay(
    http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """Within sideband_ready_delay of creation the handshake is 404; after it, it succeeds."""
    emulator = await start_emulator(EmulatorSettings(api_key=KEY, sideband_ready_delay=0.5))
    try:
        call_id = await open_call(http, emulator, browser, SESSION)
        async with asyncio.timeout(5):
            response = await http.get(
                f"{emulator.base_url}/realtime",
                params={"call_id": call_id},
                headers=emulator.auth(),
            )
            assert response.status == 404
            assert await response.json() == CALL_NOT_FOUND
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(
                    f"{emulator.ws_url}?call_id={call_id}", headers=emulator.auth()
                )
            assert info.value.status == 404
        call = emulator.registry.get(call_id)
        assert call is not None
        assert call.sideband_attaches == []
        await asyncio.sleep(max(0.0, call.created_at + 0.5 - time.monotonic()))
        assert call.sideband_ready()
        sideband = await SidebandProbe.connect(http, emulator, call_id)
        assert call.sideband_attaches == [call_id]
        await sideband.close()
    finally:
        await emulator.close()


async def test_active_response_error_goes_only_to_sender(
    http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """response.create during a response: an error to the sender only, echoing its event_id,
    and nothing else — no second response.created, no response.done for it."""
    emulator = await start_emulator(EmulatorSettings(api_key=KEY, token_interval=0.03))
    try:
        call_id = await open_call(http, emulator, browser, SESSION)
        sideband = await SidebandProbe.connect(http, emulator, call_id)
        browser.send_user_text("tell me a reasonably long story about emulators please")
        browser.send({"type": "response.create"})
        created = await sideband.wait_for("response.created")
        await sideband.send({"type": "response.create", "event_id": "evt_dup_1"})
        error = await sideband.wait_for("error")
        validate_server_event(error)
        assert error["error"] == {
            "type": "invalid_request_error",
            "code": "conversation_already_has_active_response",
            "message": error["error"]["message"],
            "param": None,
            "event_id": "evt_dup_1",
        }
        assert created["response"]["id"] in error["error"]["message"]
        done = await sideband.wait_for("response.done")
        await browser.wait_for("response.done", timeout=5)
        assert done["response"]["id"] == created["response"]["id"]
        assert done["response"]["status"] == "completed"
        assert "error" not in [e["type"] for e in browser.events]
        all_types = [e["type"] for e in sideband.events]
        assert all_types.count("response.created") == 1
        assert all_types.count("response.done") == 1
        # The browser gets the same stream minus the sideband's error.
        assert [e for e in sideband.events if e["type"] != "error"] == browser.events[1:]
        await sideband.close()
    finally:
        await emulator.close()


async def test_client_event_errors_echo_event_id_to_sender(
    emulator: RunningEmulator, http: aiohttp.ClientSession, browser: FakeBrowser
) -> None:
    """session.update without type, unknown events, bad JSON and unknown items give error
    events to the sender only; the connection stays usable."""
    call_id = await open_call(http, emulator, browser, SESSION)
    sideband = await SidebandProbe.connect(http, emulator, call_id)
    try:
        await sideband.send(
            {"type": "session.update", "event_id": "evt_su", "session": {"instructions": "x"}}
        )
        error = await sideband.wait_for("error")
        validate_server_event(error)
        assert error["error"]["code"] == "missing_required_parameter"
        assert error["error"]["param"] == "session.type"
        assert error["error"]["event_id"] == "evt_su"
        seen = [error]

        browser.send({"type": "session.update", "event_id": "evt_b", "session": {}})
        from_browser = await browser.wait_for("error", timeout=5)
        assert (from_browser["error"]["param"], from_browser["error"]["event_id"]) == (
            "session.type",
            "evt_b",
        )

        cases: list[tuple[str, str, str | None]] = [
            (json.dumps({"type": "no.such.event", "event_id": "e1"}), "unknown_event", "e1"),
            ("{this is not json", "invalid_json", None),
            (
                json.dumps({"type": "conversation.item.delete", "item_id": "x", "event_id": "e2"}),
                "item_not_found",
                "e2",
            ),
            (
                json.dumps({"type": "response.cancel", "event_id": "e3"}),
                "response_cancel_not_active",
                "e3",
            ),
            (
                json.dumps(
                    {
                        "type": "conversation.item.create",
                        "item": {"type": "message"},
                        "event_id": "e4",
                    }
                ),
                "missing_required_parameter",
                "e4",
            ),
        ]
        for raw, code, event_id in cases:
            await sideband.ws.send_str(raw)
            error = await sideband.wait_for(
                "error", lambda e, c=code: e["error"]["code"] == c and e not in seen
            )
            seen.append(error)
            validate_server_event(error)
            assert error["error"]["event_id"] == event_id
        assert error["error"]["param"] == "item.role"

        call = emulator.registry.get(call_id)
        assert call is not None
        assert call.session["instructions"] != "x"
        assert [e["type"] for e in browser.events] == ["session.created", "error"]
        # Everything that parsed as a JSON object was recorded, bad JSON was not.
        assert [(r.source, r.event.get("type")) for r in call.received] == [
            ("sideband", "session.update"),
            ("datachannel", "session.update"),
            ("sideband", "no.such.event"),
            ("sideband", "conversation.item.delete"),
            ("sideband", "response.cancel"),
            ("sideband", "conversation.item.create"),
        ]

        # Still usable after errors.
        await sideband.send({"type": "session.update", "session": {"type": "realtime"}})
        await sideband.wait_for("session.updated")
    finally:
        await sideband.close()
