"""The leak watch itself can fail: it finds a secret in a log line, a reply and a row."""

from __future__ import annotations

import logging

from tests.security.leak_watch import LeakWatch, RecordingHandler
from tests.support.broker_server import Reply, RunningBroker


def test_a_secret_in_a_log_record_is_found() -> None:
    watch = LeakWatch()
    watch.add_secret("sk-very-secret-value", "the provider key")
    handler = RecordingHandler(watch)
    logger = logging.getLogger("tests.leak_watch")
    logger.addHandler(handler)
    try:
        logger.warning("calling with %s", "sk-very-secret-value")
    finally:
        logger.removeHandler(handler)
    assert watch.leaks() == ["the provider key in log tests.leak_watch"]


def test_an_issued_secret_may_appear_only_in_its_issuing_reply() -> None:
    watch = LeakWatch()
    broker = RunningBroker.__new__(RunningBroker)
    broker.replies = [
        Reply(201, {}, '{"id": "s1", "client_secret": {"value": "eyJ.secret.token"}}'),
        Reply(200, {}, '{"state": "live"}'),
    ]
    watch.add_replies(broker)
    assert watch.leaks() == []
    broker.replies.append(Reply(400, {"X-Echo": "eyJ.secret.token"}, "{}"))
    watch2 = LeakWatch()
    watch2.add_replies(broker)
    assert watch2.leaks() == ["a client secret in reply #2 (400) headers"]
    watch2.add_text("stored: session_events", '["eyJ.secret.token"]')
    assert "a client secret in stored: session_events" in watch2.leaks()


async def test_the_watch_sees_the_tests_brokers(
    leak_watch: LeakWatch, broker: RunningBroker
) -> None:
    """Brokers started by fixtures are watched, and their replies are there to read."""
    session = await broker.create_session()
    assert broker in leak_watch.brokers
    assert any(session["client_secret"]["value"] in r.text for r in broker.replies)
