"""The model and voice of a session that names none come from the settings, not the code."""

from __future__ import annotations

from tests.conftest import BrokerFactory
from tests.support.flow import connect_browser, wait_sideband
from tests.support.servers import RunningEmulator


async def test_default_model_and_voice_are_settings_and_reach_the_provider(
    make_broker: BrokerFactory, emulator: RunningEmulator
) -> None:
    broker = await make_broker(default_model="gpt-realtime-mini", default_voice="cedar")
    session = await broker.create_session()
    assert session["model"] == "gpt-realtime-mini"
    browser = await connect_browser(broker, session)
    try:
        await wait_sideband(broker, session["id"])
        [call] = emulator.registry.calls.values()
        assert call.session["model"] == "gpt-realtime-mini"
        assert call.session["audio"]["output"]["voice"] == "cedar"
    finally:
        await browser.close()


async def test_a_session_that_names_its_model_and_voice_keeps_them(
    make_broker: BrokerFactory, emulator: RunningEmulator
) -> None:
    broker = await make_broker(default_model="gpt-realtime-mini", default_voice="cedar")
    session = await broker.create_session(model="gpt-realtime", voice="marin")
    browser = await connect_browser(broker, session)
    try:
        await wait_sideband(broker, session["id"])
        [call] = emulator.registry.calls.values()
        assert (call.session["model"], call.session["audio"]["output"]["voice"]) == (
            "gpt-realtime",
            "marin",
        )
    finally:
        await browser.close()
