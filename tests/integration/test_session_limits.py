"""Per-session limits: settings give defaults and ceilings; a backend may only go lower."""

from __future__ import annotations

from tests.conftest import BrokerFactory
from tests.support.broker_server import RunningBroker


async def test_defaults_come_from_settings(broker: RunningBroker) -> None:
    session = await broker.create_session()
    detail = await broker.get_session(session["id"])
    settings = broker.settings
    assert detail["limits"] == {
        "max_duration_s": settings.call_max_duration_s,
        "idle_timeout_s": settings.call_idle_timeout_s,
        "max_tool_calls": settings.session_max_tool_calls,
        "max_concurrent_tools": settings.session_max_concurrent_tools,
        "max_argument_bytes": settings.tool_max_argument_bytes,
        "on_tamper": "revert",
        "page_items": "refuse",
        "page_responses": "allow",
    }


async def test_a_session_may_choose_lower_limits_and_hangup_on_tamper(
    broker: RunningBroker,
) -> None:
    limits = {
        "max_duration_s": 60,
        "idle_timeout_s": 20,
        "max_tool_calls": 3,
        "on_tamper": "hangup",
    }
    session = await broker.create_session(limits=limits)
    detail = await broker.get_session(session["id"])
    assert {k: detail["limits"][k] for k in limits} == limits


async def test_limits_above_the_ceiling_are_refused(make_broker: BrokerFactory) -> None:
    broker = await make_broker(call_max_duration_s=120, session_max_tool_calls=5)
    reply = await broker.request(
        "POST",
        "/api/v1/sessions",
        json_body={
            "tools": ["lookup_order"],
            "limits": {"max_duration_s": 121, "max_tool_calls": 6},
        },
    )
    assert (reply.status, reply.code) == (422, "limit_exceeds_ceiling")
    assert reply.json()["limits"] == {"max_duration_s": 120, "max_tool_calls": 5}


async def test_malformed_limits_are_422(broker: RunningBroker) -> None:
    for limits in (
        {"max_duration_s": 0},
        {"on_tamper": "explode"},
        {"max_tool_calls": "x"},
        {"nope": 1},
    ):
        reply = await broker.request(
            "POST", "/api/v1/sessions", json_body={"tools": [], "limits": limits}
        )
        assert reply.status == 422, (limits, reply.text)
