"""Every way a call ends is counted once in ``broker_sessions_ended_total``, by its reason.

The duration backstop (:mod:`broker.session.deadline`) is the only end of a bridge-only call
that nobody asked for: it once recorded the end and its event but never counted it.
"""

from __future__ import annotations

from tests.support.broker_server import RunningBroker
from tests.support.flow import connect_browser, wait_call_ended, wait_events, wait_session_ended
from tests.support.metrics import moved, scrape
from tests.support.servers import RunningEmulator


async def test_the_duration_backstop_counts_the_end_it_records(
    broker: RunningBroker, emulator: RunningEmulator
) -> None:
    """A bridge-only call past its max duration: no leash watches it, so the backstop hangs
    it up and ends the session, and the end is counted as ``max_duration`` (only)."""
    before = await scrape(broker)
    session = await broker.create_session(sideband=False, limits={"max_duration_s": 1})
    assert session["sideband"] is False
    browser = await connect_browser(broker, session)
    try:
        call = emulator.registry.get((await broker.get_session(session["id"]))["call_id"])
        assert call is not None
        await wait_call_ended(call, timeout=6)
        detail = await wait_session_ended(broker, session["id"])
        assert (detail["state"], detail["end_reason"]) == ("ended", "max_duration")
        [event] = await wait_events(broker, session["id"], "broker.leash")
        assert event["payload"]["enforced_by"] == "deadline"
    finally:
        await browser.close()
    after = await scrape(broker)
    assert moved(before, after, "broker_sessions_ended_total", reason="max_duration") == 1
    ended = [
        name
        for (name, labels), _ in after.items()
        if name == "broker_sessions_ended_total" and moved(before, after, name, **dict(labels)) != 0
    ]
    assert ended == ["broker_sessions_ended_total"]  # no other reason moved
