"""A ``session.ended`` webhook survives the broker process: SIGKILL between two attempts.

Real ``broker serve`` processes (tests/support/broker_process.py) on one database (the
``db_url`` fixture's) and a real receiver on loopback. The first broker's attempt is refused
(503) and the broker is killed before its retry; the next broker finds the pending row and
delivers it: same ``Webhook-Id``, same body, a valid signature. Neither process logs the
secret.
"""

from __future__ import annotations

import asyncio

import aiohttp
from sqlalchemy import select

from broker.db.engine import create_engine, make_sessionmaker
from broker.db.models import WebhookDelivery
from tests.support.broker_process import BrokerLauncher
from tests.support.browser import FakeBrowser
from tests.support.servers import RunningEmulator, set_faults
from tests.support.webhook_receiver import WebhookReceiver

WEBHOOK_SECRET = "reliability-webhook-secret-" + "r" * 16
TEST_BUDGET_S = 60


async def wait_attempt_recorded(db_url: str, session_id: str) -> WebhookDelivery:
    """Poll the database until the session's delivery records its first attempt's answer."""
    engine = create_engine(db_url)
    try:
        sessionmaker = make_sessionmaker(engine)
        async with asyncio.timeout(15):
            while True:
                async with sessionmaker() as s:
                    row = await s.scalar(
                        select(WebhookDelivery).where(WebhookDelivery.session_id == session_id)
                    )
                if row is not None and row.last_status is not None:
                    return row
                await asyncio.sleep(0.05)
    finally:
        await engine.dispose()


async def test_sigkill_between_attempts_the_next_broker_delivers(
    brokers: BrokerLauncher,
    emulator: RunningEmulator,
    receiver: WebhookReceiver,
    db_url: str,
    http: aiohttp.ClientSession,
) -> None:
    env = {
        "BROKER_WEBHOOK_URL": receiver.url,
        "BROKER_WEBHOOK_SECRET": WEBHOOK_SECRET,
        "BROKER_WEBHOOK_BACKOFF_S": "2",
        "BROKER_WEBHOOK_BACKOFF_MAX_S": "2",
    }
    receiver.answer(503)
    async with asyncio.timeout(TEST_BUDGET_S):
        first = await brokers.start(**env)
        session = await first.create_session(tools=["lookup_order"])
        await set_faults(http, emulator, create_call_error={"status": 503})
        browser = FakeBrowser()
        try:
            reply = await first.offer(session, await browser.create_offer())
        finally:
            await browser.close()
        assert reply.status == 502, reply.text
        [refused] = await receiver.wait_deliveries(1)
        row = await wait_attempt_recorded(db_url, session["id"])
        assert (row.status, row.attempts, row.last_status) == ("pending", 1, 503)
        await first.kill()

        second = await brokers.start(**env)
        _, delivered = await receiver.wait_deliveries(2, timeout=20)
        await asyncio.sleep(1.5)

    assert [d.status for d in receiver.deliveries] == [503, 200]
    assert (delivered.id, delivered.body) == (refused.id, refused.body)
    data = delivered.verified(WEBHOOK_SECRET)["data"]
    assert (data["session_id"], data["state"]) == (session["id"], "failed")
    for process in (first, second):
        log = process.log_text()
        assert WEBHOOK_SECRET not in log
        assert delivered.headers["Webhook-Signature"].split(",", 1)[1] not in log
    assert "webhook delivered" in second.log_text()
