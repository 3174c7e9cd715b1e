"""A watch knows whether the database holds rows it was not handed (and must be read)."""

from __future__ import annotations

from broker.record.wakeups import MAX_HANDED_ROWS, EventWakeups


async def test_a_publish_hands_its_rows_and_wakes_without_asking_for_a_read() -> None:
    wakeups = EventWakeups()
    with wakeups.watch("sess_a") as watch:
        watch.arm()
        wakeups.publish("sess_a", [{"seq": 1}, {"seq": 2}])
        assert await watch.wait(0.01)
        assert [r["seq"] for r in watch.take()] == [1, 2]
        assert not watch.unseen
        # Another session's rows are none of this watch's business.
        wakeups.notify("sess_b")
        assert not watch.unseen


async def test_rows_another_writer_stored_ask_for_a_read() -> None:
    wakeups = EventWakeups()
    with wakeups.watch("sess_a") as watch:
        watch.arm()
        wakeups.notify("sess_a")  # append_event, a session's end: nothing handed
        assert await watch.wait(0.01)
        assert watch.take() == []
        assert watch.unseen


def test_rows_let_go_past_the_cap_ask_for_a_read() -> None:
    wakeups = EventWakeups()
    with wakeups.watch("sess_a") as watch:
        wakeups.publish("sess_a", [{"seq": n} for n in range(1, MAX_HANDED_ROWS + 2)])
        assert watch.take() == []
        assert watch.unseen
