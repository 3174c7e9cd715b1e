"""Every test in the security suite runs under a leak watch: at its end, no log record,
broker reply (outside the one that issued a secret) or stored event may contain the
provider key, the admin key, a signing key, or any client secret or API key issued."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.security.leak_watch import LeakWatch, RecordingHandler, stored_texts
from tests.support.broker_server import ADMIN_KEY, BROKER_OBSERVERS, PROVIDER_KEY

STORED = (
    "SELECT seq, direction, type, payload FROM session_events",
    "SELECT call_id, tool, arguments, output, error FROM tool_calls",
    "SELECT id, metadata, end_reason, instructions FROM sessions",
)


@pytest.fixture(autouse=True)
async def leak_watch(request: pytest.FixtureRequest) -> AsyncIterator[LeakWatch]:
    watch = LeakWatch()
    watch.add_secret(PROVIDER_KEY, "the provider key")
    watch.add_secret(ADMIN_KEY, "the admin key")
    db_url = request.getfixturevalue("db_url") if "db_url" in request.fixturenames else None
    brokers = watch.brokers
    BROKER_OBSERVERS.append(brokers.append)
    handler = RecordingHandler(watch)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # secrets must not reach even debug records
    try:
        yield watch
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        BROKER_OBSERVERS.remove(brokers.append)
    for broker in brokers:
        watch.add_secret(broker.settings.signing_key.reveal(), "the signing key")
        watch.add_replies(broker)
    if db_url is not None:
        await _add_stored(watch, db_url)
    leaks = watch.leaks()
    assert not leaks, "secrets leaked: " + "; ".join(sorted(set(leaks)))


async def _add_stored(watch: LeakWatch, db_url: str) -> None:
    engine = create_async_engine(db_url)
    try:
        async with engine.connect() as conn:
            for query in STORED:
                rows = list(await conn.execute(text(query)))
                for row_text in stored_texts(rows):
                    watch.add_text(f"stored: {query.split(' FROM ')[1]}", row_text)
    finally:
        await engine.dispose()
