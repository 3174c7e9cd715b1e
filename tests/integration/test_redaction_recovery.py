"""A redacting tool's sealed arguments and output, across a restart of the broker.

The ``tool_calls`` row shows a redacting tool's fields as keyed hashes; a restarted broker
(here: a second dispatcher on the same database, with a redactor made from the same secret)
still runs a recovered call with the raw arguments, opened from their sealed copy, and would
re-send the raw output. Driven at the dispatcher, on the real database.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from broker.audit.redaction import SEALED_PREFIX, FieldRedactor
from broker.db import queries
from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import ToolCallStatus, ToolPath
from broker.record.event_log import EventRecorder
from broker.tools.dispatch import ToolDispatcher
from broker.tools.registry import ToolConfigError, ToolRegistry, load_registry
from broker.tools.sideband_handler import SessionToolHandler
from tests.support.rows import session_row

SESSION: Final = "sess_sealed"
SECRET: Final = "a redaction secret of at least thirty-two characters"
CARD: Final = "4111111111111111"
RAW_ARGUMENTS: Final = json.dumps({"card_number": CARD, "amount": 5}, separators=(",", ":"))
RECEIVED: list[dict[str, Any]] = []


async def charge(arguments: dict[str, Any], context: Any) -> dict[str, Any]:
    RECEIVED.append(arguments)
    return {"charged": arguments["amount"], "card_number": arguments["card_number"]}


def _registry(tmp_path: Path, http: httpx.AsyncClient) -> ToolRegistry:
    tools = tmp_path / "tools.toml"
    tools.write_text(
        f'[tools.charge]\npython = "{__name__}:charge"\nidempotent = true\n'
        'redact = ["card_number"]\n'
    )
    return load_registry(tools, http)


@pytest.fixture
async def database(sqlite_db_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_engine(sqlite_db_url)
    try:
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker.begin() as s:
            s.add(session_row(SESSION, ["charge"], sideband_enabled=True))
        yield sessionmaker
    finally:
        await engine.dispose()


async def test_a_recovered_call_runs_with_its_raw_arguments_opened_from_the_seal(
    database: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    RECEIVED.clear()
    hashed = {"redacted": FieldRedactor(SECRET).keyed_hash(CARD)}
    async with httpx.AsyncClient() as http:
        registry = _registry(tmp_path, http)
        first = ToolDispatcher(database, registry, redactor=FieldRedactor(SECRET))
        assert await first.record_seen(
            SESSION, "call_1", "charge", RAW_ARGUMENTS, ToolPath.SIDEBAND, "resp_1", "item_1"
        )
        # The first broker claimed the call and died while its tool ran.
        async with database.begin() as s:
            assert await queries.claim_tool_call_returning(s, SESSION, "call_1", "sideband")

        # The restarted broker: the same secret, nothing else carried over.
        second = ToolDispatcher(database, registry, redactor=FieldRedactor(SECRET))
        assert await second.recover_interrupted(SESSION) == [("call_1", ToolCallStatus.PENDING)]
        handler = SessionToolHandler(second, SESSION, ["charge"], EventRecorder(database, SESSION))
        [seen] = (await handler.backlog()).seen
        # The resync matches the provider's call with the raw arguments, not the shown ones.
        assert json.loads(seen.arguments) == {"card_number": CARD, "amount": 5}

        outcome = await second.run(
            SESSION, ["charge"], "call_1", "charge", seen.arguments, ToolPath.SIDEBAND,
            "resp_1", item_id="item_1",
        )  # fmt: skip
        assert outcome.status is ToolCallStatus.SUCCEEDED
        assert RECEIVED == [{"card_number": CARD, "amount": 5}]
        # The model gets the raw output, now and (undelivered) after another restart.
        assert json.loads(outcome.output or "")["card_number"] == CARD
        [undelivered] = (await handler.backlog()).undelivered
        assert json.loads(undelivered.output)["card_number"] == CARD

        row = await second.get_record(SESSION, "call_1")
        assert row is not None
        assert json.loads(row.arguments)["card_number"] == hashed
        assert json.loads(row.output or "")["card_number"] == hashed
        assert (row.arguments_sealed or "").startswith(SEALED_PREFIX)
        assert CARD not in (row.arguments_sealed or "") + (row.output_sealed or "")
        await second.drain()


async def test_a_call_sealed_under_another_key_is_never_run(
    database: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    """A changed redaction key cannot open what the old one sealed: the call does not run
    (with a hash for arguments, or garbage) and the error names no value."""
    RECEIVED.clear()
    async with httpx.AsyncClient() as http:
        registry = _registry(tmp_path, http)
        first = ToolDispatcher(database, registry, redactor=FieldRedactor(SECRET))
        await first.record_seen(
            SESSION, "call_2", "charge", RAW_ARGUMENTS, ToolPath.SIDEBAND, "resp_1", "item_2"
        )
        other = ToolDispatcher(database, registry, redactor=FieldRedactor(SECRET + " (new)"))
        with pytest.raises(ValueError, match="does not open") as raised:
            await other.run(SESSION, ["charge"], "call_2", "charge", "{}", ToolPath.SIDEBAND)
        assert CARD not in str(raised.value)
        await other.drain()
        assert RECEIVED == []
        # Ended failed (the model is told the broker failed it), never to be tried again.
        row = await other.get_record(SESSION, "call_2")
        assert row is not None
        assert (row.status, row.error) == (ToolCallStatus.FAILED, "broker_error")


async def test_a_registry_that_redacts_needs_a_redactor(tmp_path: Path) -> None:
    """No redactor, no dispatcher: its arguments would otherwise be kept in clear."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    try:
        async with httpx.AsyncClient() as http:
            with pytest.raises(ValueError, match="charge"):
                ToolDispatcher(make_sessionmaker(engine), _registry(tmp_path, http))
    finally:
        await engine.dispose()


@pytest.mark.parametrize("value", ['"card_number"', '[""]', "[1]", '["ok", 2]'])
async def test_redact_must_be_a_list_of_field_names(tmp_path: Path, value: str) -> None:
    tools = tmp_path / "tools.toml"
    tools.write_text(f'[tools.charge]\npython = "{__name__}:charge"\nredact = {value}\n')
    async with httpx.AsyncClient() as http:
        with pytest.raises(ToolConfigError, match="redact must be a list"):
            load_registry(tools, http)


@pytest.mark.parametrize("depth", [40, 900, 5000])
async def test_deeply_nested_arguments_still_get_their_row_and_records(
    database: async_sessionmaker[AsyncSession], tmp_path: Path, depth: int
) -> None:
    """Arguments nested past what a walk can follow: the call is recorded (the redacted
    copy hides them whole if they cannot be walked) and audited, never lost to an error."""
    nested = '{"card_number":"' + CARD + '","more":' + "[" * depth + "]" * depth + "}"
    async with httpx.AsyncClient() as http:
        dispatcher = ToolDispatcher(
            database, _registry(tmp_path, http), redactor=FieldRedactor(SECRET)
        )
        assert await dispatcher.record_seen(
            SESSION, f"deep_{depth}", "charge", nested, ToolPath.SIDEBAND, "resp_1", "i"
        )
        row = await dispatcher.get_record(SESSION, f"deep_{depth}")
        assert row is not None and CARD not in row.arguments
        assert dispatcher.raw_arguments(row) == nested
        async with database() as s:
            [pending] = (await s.execute(text("SELECT body FROM audit_pending"))).all()
        assert CARD not in pending.body and '"call_id"' in pending.body
