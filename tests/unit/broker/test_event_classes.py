"""The event classes, the stream wake-ups and the per-key stream slots, without a database."""

from __future__ import annotations

import asyncio

import pytest

from broker.auth.stream_slots import StreamSlots
from broker.errors import RateLimitedError
from broker.record import transcript
from broker.record.event_classes import EventClass, classify
from broker.record.wakeups import EventWakeups
from broker.settings import Settings, SettingsError

KEPT, COALESCIBLE, FOLDED = EventClass.KEPT, EventClass.COALESCIBLE, EventClass.FOLDED


@pytest.mark.parametrize(
    ("direction", "event", "expected"),
    [
        ("broker", {"type": "broker.tamper"}, KEPT),
        ("broker", {"type": "anything.else"}, KEPT),
        ("out", {"type": "session.update"}, KEPT),
        ("in", {"type": "error"}, KEPT),
        ("in", {"type": "response.done"}, KEPT),
        ("in", {"type": "response.function_call_arguments.done"}, KEPT),
        ("in", {"type": "conversation.item.added", "item": {"type": "function_call"}}, KEPT),
        ("in", {"type": "response.output_item.added", "item": {"type": "function_call"}}, KEPT),
        ("in", {"type": "conversation.item.added", "item": {"type": "message"}}, FOLDED),
        ("in", {"type": "conversation.item.created", "item": {"type": "message"}}, COALESCIBLE),
        ("in", {"type": "response.output_item.added", "item": {"type": "message"}}, FOLDED),
        ("in", {"type": "response.content_part.added"}, FOLDED),
        ("in", {"type": "response.content_part.done"}, FOLDED),
        ("in", {"type": "response.output_audio_transcript.done"}, FOLDED),
        ("in", {"type": "conversation.item.done", "item": {"type": "message"}}, KEPT),
        ("in", {"type": "response.output_item.done", "item": {"type": "message"}}, KEPT),
        ("in", {"type": "response.output_text.delta"}, FOLDED),
        ("in", {"type": "response.function_call_arguments.delta"}, FOLDED),
        ("in", {"type": "response.output_audio_transcript.delta"}, FOLDED),
        # Input transcription: what completes or fails a spoken turn is kept; its deltas are
        # stored (nothing may repeat them) but capped.
        ("in", {"type": "conversation.item.input_audio_transcription.completed"}, KEPT),
        ("in", {"type": "conversation.item.input_audio_transcription.failed"}, KEPT),
        ("in", {"type": "conversation.item.input_audio_transcription.delta"}, COALESCIBLE),
        ("out", {"type": "response.output_text.delta"}, KEPT),
        ("in", {"type": "session.updated"}, COALESCIBLE),
        ("in", {"type": "rate_limits.updated"}, COALESCIBLE),
        ("in", {"type": "something.new"}, COALESCIBLE),
        ("in", {}, COALESCIBLE),
    ],
)
def test_classify(direction: str, event: dict[str, object], expected: EventClass) -> None:
    """Invariant: the broker's own events and decisions are kept; a provider event is kept
    only when named (lifecycle, tool calls, usage, errors); a delta, or an event a kept one
    repeats, is folded; anything else is coalescible."""
    assert classify(direction, event) is expected


def test_what_the_transcript_reads_is_never_dropped() -> None:
    """Invariant: every event type the transcript is projected from is kept."""
    for type_ in transcript.EVENT_TYPES:
        assert classify("in", {"type": type_}) is KEPT, type_


def test_the_partial_words_the_transcript_reads_are_stored_not_folded() -> None:
    """Invariant: the deltas a partial spoken turn is read from are stored (up to the
    session's cap), never folded away: no completed event may ever repeat them."""
    for type_ in transcript.PARTIAL_TYPES:
        assert classify("in", {"type": type_}) is COALESCIBLE, type_


async def test_a_commit_signalled_between_arm_and_wait_is_not_slept_over() -> None:
    """Invariant: a reader that armed before reading wakes at once for a commit signalled
    while it was busy, and a wait that timed out stays armed for the next one."""
    wakeups = EventWakeups()
    with wakeups.watch("s1") as watch:
        watch.arm()
        wakeups.notify("s1")  # while the reader was reading
        async with asyncio.timeout(1):
            assert await watch.wait(10) is True
        watch.arm()
        assert await watch.wait(0.01) is False
        wakeups.notify("s2")  # another session: not ours
        wakeups.notify("s1")
        async with asyncio.timeout(1):
            assert await watch.wait(10) is True
    assert wakeups.watching("s1") == 0


def test_stream_slots_per_key() -> None:
    """Invariant: a key gets per_key slots, the next is 429 too_many_streams with a
    Retry-After; other keys are unaffected; a released slot is free again; 0 is no cap."""
    slots = StreamSlots(1)
    with slots.hold("a"):
        with pytest.raises(RateLimitedError) as refused, slots.hold("a"):
            pass
        assert refused.value.code == "too_many_streams"
        assert int(refused.value.headers["Retry-After"]) >= 1
        with slots.hold("b"):
            pass
    with slots.hold("a"):
        assert slots.open_for("a") == 1
    unlimited = StreamSlots(0)
    with unlimited.hold("a"), unlimited.hold("a"):
        assert unlimited.open_for("a") == 2


def test_event_log_settings_from_env() -> None:
    env = {"BROKER_SIGNING_KEY": "k" * 32}
    defaults = Settings.from_env(env)
    assert defaults.event_streams_per_key == 20
    assert defaults.event_log_max_coalescible == 2000
    assert defaults.event_log_max_coalescible_bytes == 2 * 1024 * 1024
    custom = Settings.from_env(
        {
            **env,
            "BROKER_EVENT_STREAMS_PER_KEY": "0",
            "BROKER_EVENT_LOG_MAX_COALESCIBLE": "10",
            "BROKER_EVENT_LOG_MAX_COALESCIBLE_BYTES": "4096",
        }
    )
    assert (
        custom.event_streams_per_key,
        custom.event_log_max_coalescible,
        custom.event_log_max_coalescible_bytes,
    ) == (0, 10, 4096)
    with pytest.raises(SettingsError, match="BROKER_EVENT_STREAMS_PER_KEY"):
        Settings.from_env({**env, "BROKER_EVENT_STREAMS_PER_KEY": "20000"})
