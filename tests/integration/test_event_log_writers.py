"""Two writers of one session's event log (its recorder and a broker event written outside
it, like the duration backstop's) never lose an event to a seq clash."""

from __future__ import annotations

from sqlalchemy import select

from broker import keys
from broker.db.models import SessionEvent
from broker.events_log import EventRecorder, append_event
from tests.support.broker_server import RunningBroker


async def test_a_seq_taken_by_another_writer_renumbers_the_recorders_buffer(
    broker: RunningBroker,
) -> None:
    session = await broker.create_session(tools=["lookup_order"])
    sessionmaker = broker.app[keys.SESSIONMAKER]
    recorder = EventRecorder(sessionmaker, session["id"])
    await recorder.start()
    for n in range(3):
        recorder.record("in", {"type": "response.created", "n": n})
    # Written before the recorder flushes: it takes seq 1, which the recorder handed out.
    await append_event(sessionmaker, session["id"], {"type": "broker.leash", "limit": "x"})
    await recorder.flush()
    recorder.record("in", {"type": "response.done", "n": 3})
    await recorder.flush()

    async with sessionmaker() as s:
        rows = (
            await s.scalars(
                select(SessionEvent)
                .where(SessionEvent.session_id == session["id"])
                .order_by(SessionEvent.seq)
            )
        ).all()
    assert [r.seq for r in rows] == [1, 2, 3, 4, 5]
    assert [r.type for r in rows] == [
        "broker.leash",
        "response.created",
        "response.created",
        "response.created",
        "response.done",
    ]
    assert [r.payload.get("n") for r in rows[1:]] == [0, 1, 2, 3]
