"""A tool's redacted fields appear in clear nowhere the broker stores or shows them.

A tool configured ``redact = ["card_number"]`` is called with a card number and echoes it in
its output. The tool gets the raw value; the audit trail, the event log, the ``tool_calls``
row, every API answer and every log line hold at most its keyed hash, which a reviewer who
knows a value can match (the issue's must-show 5).

The model is the one party that must see the value (it gets the tool's output) and may
repeat it: the emulator quotes outputs verbatim in its answer. Its own words are not a tool's
field, so the search below leaves out what the model said (assistant messages, their
transcript deltas and the transcript's assistant turns), and only that. The user's request
spells the number with JSON escapes, which the model decodes into the call's arguments: the
clear value then enters the broker only as the call's arguments.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Final

import pytest
from sqlalchemy import text

from broker import app_state
from broker.audit.redaction import SEALED_PREFIX, FieldRedactor
from broker.audit.signing import PublicKeys
from broker.audit.verify import verify_records
from tests.conftest import BrokerFactory
from tests.integration.test_audit_tool_calls import body, by_call, chained_with, tool_records
from tests.support.broker_server import AUDIT_SIGNER, RunningBroker
from tests.support.flow import ask, connect_browser, says, wait_session_ended
from tests.support.model_speech import without_model_speech
from tests.support.tool_backend import ToolBackend

CARD: Final = "4111111111111111"
ESCAPED_CARD: Final = "".join(f"\\u{ord(c):04x}" for c in CARD)
"""The card number as JSON escapes: what the user's words hold."""

QUIET_LOGGERS: Final = ("emulator", "aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool")

RECEIVED: list[dict[str, Any]] = []
"""What ``charge_card`` was called with (the tool's side of the test)."""


async def charge_card(arguments: dict[str, Any], context: Any) -> dict[str, Any]:
    """Charges the card, and echoes it (twice, one nested) as a careless backend would."""
    RECEIVED.append(arguments)
    card = arguments["card_number"]
    return {"charged": arguments["amount"], "card_number": card, "receipt": {"card_number": card}}


CHARGE_CARD_TOML: Final = f"""
[tools.charge_card]
description = "Charge a card."
python = "{__name__}:charge_card"
redact = ["card_number"]
[tools.charge_card.parameters]
type = "object"
required = ["card_number", "amount"]
properties.card_number = {{ type = "string" }}
properties.amount = {{ type = "integer" }}
"""


@pytest.fixture
async def card_broker(
    make_broker: BrokerFactory, tool_backend: ToolBackend, tmp_path: Path
) -> RunningBroker:
    tools = tmp_path / "card-tools.toml"
    tools.write_text(tool_backend.config_toml() + CHARGE_CARD_TOML)
    return await make_broker(tools_config=tools)


def assert_no_card(where: str, value: Any) -> None:
    dumped = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    assert CARD not in dumped, f"the card number is in clear in {where}"


async def _rows(broker: RunningBroker, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with broker.app[app_state.SESSIONMAKER]() as s:
        result = await s.execute(text(sql), params)
        return [dict(row._mapping) for row in result]


async def test_a_redacted_field_is_in_clear_nowhere_but_at_the_tool(
    card_broker: RunningBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = card_broker
    RECEIVED.clear()
    session = await broker.create_session(tools=["charge_card", "lookup_order"])
    session_id = session["id"]
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'charge_card {"card_number": "' + ESCAPED_CARD + '", "amount": 5}')
        await browser.wait_for("response.done", says("charge_card returned"))
    finally:
        await browser.close()
    await wait_session_ended(broker, session_id)

    # The tool itself got the raw value.
    assert RECEIVED == [{"card_number": CARD, "amount": 5}]

    # The audit trail: keyed hashes a reviewer can match, and the chain verifies.
    redactor = FieldRedactor(broker.settings.redaction_secret)
    hashed = {"redacted": redactor.keyed_hash(CARD)}
    records = await chained_with(broker, session_id, injected=1)
    assert verify_records(records, PublicKeys([AUDIT_SIGNER.public_key])).ok
    [call] = by_call(tool_records(records, session_id)).values()
    assert [r.kind for r in call] == ["tool.requested", "tool.succeeded", "tool.output_injected"]
    assert body(call[0])["arguments"] == {"card_number": hashed, "amount": 5}
    assert body(call[1])["output"] == {
        "charged": 5,
        "card_number": hashed,
        "receipt": {"card_number": hashed},
    }
    for record in records:
        assert_no_card(f"audit record {record.seq}", record.line())
    assert_no_card("audit_pending", await _rows(broker, "SELECT * FROM audit_pending"))

    # The tool_calls row: shown redacted, the raw values only sealed.
    [row] = await _rows(broker, "SELECT * FROM tool_calls WHERE session_id = :sid", sid=session_id)
    assert json.loads(row["arguments"]) == {"card_number": hashed, "amount": 5}
    assert json.loads(row["output"])["receipt"] == {"card_number": hashed}
    assert row["arguments_sealed"].startswith(SEALED_PREFIX)
    assert row["output_sealed"].startswith(SEALED_PREFIX)
    assert_no_card("tool_calls", row)

    # The event log: the call's arguments and its output, in and out, redacted.
    events = await _rows(
        broker,
        "SELECT type, payload FROM session_events WHERE session_id = :sid ORDER BY seq",
        sid=session_id,
    )
    stored = [
        without_model_speech(
            json.loads(e["payload"]) if isinstance(e["payload"], str) else e["payload"]
        )
        for e in events
    ]
    assert_no_card("session_events", stored)
    done = [e for e in stored if e and e.get("type") == "response.function_call_arguments.done"]
    assert done and json.loads(done[0]["arguments"])["card_number"] == hashed
    sent_outputs = [
        e["item"]
        for e in stored
        if e
        and e.get("type") == "conversation.item.create"
        and e["item"]["type"] == "function_call_output"
    ]
    assert sent_outputs and json.loads(sent_outputs[0]["output"])["card_number"] == hashed

    # Every API answer about the session.
    detail = await broker.get_session(session_id)
    [api_call] = detail["tool_calls"]
    assert json.loads(api_call["arguments"])["card_number"] == hashed
    assert_no_card("the session detail", without_model_speech(detail))
    # The transcript still pairs the call with its output: the log's copy is redacted as
    # the row's is, so the two still match.
    [entry] = [e for e in detail["transcript"] if e["type"] == "tool_call"]
    assert json.loads(entry["arguments"])["card_number"] == hashed
    assert entry["output"] is not None
    assert json.loads(entry["output"])["card_number"] == hashed
    for path in (
        f"/api/v1/sessions/{session_id}/events",
        f"/api/v1/audit?session_id={session_id}",
        "/api/v1/sessions",
    ):
        reply = await broker.request("GET", path)
        assert reply.status == 200, (path, reply.text)
        assert_no_card(path, _without_speech_lines(reply.text))

    # The logs, at DEBUG: every logger but the provider's stand-in (the emulator) and the
    # database drivers' statement echoes, which broker.logs keeps quiet at every level
    # (their parameters hold whatever is stored, the model's words included).
    for line in caplog.records:
        if not line.name.startswith(QUIET_LOGGERS):
            assert_no_card(f"log record {line.name}", line.getMessage())


def _without_speech_lines(reply: str) -> str:
    """An answer (JSON, or an SSE stream of JSON data lines) without what the model said."""
    try:
        return json.dumps(without_model_speech(json.loads(reply)), ensure_ascii=False)
    except ValueError:
        pass
    kept: list[str] = []
    for line in reply.splitlines():
        if line.startswith("data:"):
            data = json.loads(line[5:])
            kept.append(json.dumps(without_model_speech(data), ensure_ascii=False))
        else:
            kept.append(line)
    return "\n".join(kept)


async def test_the_bridge_matches_a_redacting_calls_replay_by_its_raw_arguments(
    card_broker: RunningBroker,
) -> None:
    """A page relaying a redacting tool's call (no sideband): the tool runs once, the page
    gets the raw output it must hand the model, and a replay with the same arguments is
    matched against the sealed ones (the row shows only hashes), other ones refused."""
    broker = card_broker
    RECEIVED.clear()
    session = await broker.create_session(tools=["charge_card"], sideband=False)
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'charge_card {"card_number": "' + ESCAPED_CARD + '", "amount": 5}')
        call = await browser.wait_for("response.function_call_arguments.done")
        first = await broker.bridge(session, "charge_card", call["call_id"], call["arguments"])
        assert first.status == 200, first.text
        assert json.loads(first.json()["output"])["card_number"] == CARD
        again = await broker.bridge(session, "charge_card", call["call_id"], call["arguments"])
        assert (again.status, again.json()["output"]) == (200, first.json()["output"])
        other = json.dumps({"card_number": "4000000000000002", "amount": 5})
        forged = await broker.bridge(session, "charge_card", call["call_id"], other)
        assert (forged.status, forged.code) == (409, "call_arguments_mismatch")
    finally:
        await browser.close()
    assert RECEIVED == [{"card_number": CARD, "amount": 5}]
    [row] = (await broker.get_session(session["id"]))["tool_calls"]
    assert_no_card("the bridge call's row", row)
