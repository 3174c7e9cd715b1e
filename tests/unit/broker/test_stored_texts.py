"""A note's stored copy: the exact text part swapped, everything else the event as it came."""

from __future__ import annotations

from typing import Any

from broker.record.stored_texts import StoredTexts


def item_event(kind: str, *texts: str) -> dict[str, Any]:
    return {
        "type": kind,
        "item": {
            "id": "item_1",
            "type": "message",
            "role": "system",
            "content": [{"type": "input_text", "text": t} for t in texts],
        },
    }


def test_the_whole_text_of_a_part_is_swapped_in_a_copy() -> None:
    texts = StoredTexts()
    texts.keep_as("Result: 4111", "Result: hmac-sha256:ab")
    sent = item_event("conversation.item.create", "Result: 4111", "other")
    stored = texts.apply(sent)
    assert [p["text"] for p in stored["item"]["content"]] == ["Result: hmac-sha256:ab", "other"]
    # The event itself goes on as it came (the controller still reads it).
    assert sent["item"]["content"][0]["text"] == "Result: 4111"
    # A text that merely contains the clear one is someone else's: left alone.
    echo = item_event("conversation.item.done", "Result: 4111 and more")
    assert texts.apply(echo) is echo


def test_events_without_items_and_unknown_texts_are_returned_as_they_are() -> None:
    texts = StoredTexts()
    plain = item_event("conversation.item.done", "hello")
    assert texts.apply(plain) is plain  # nothing kept yet
    texts.keep_as("a", "b")
    assert texts.apply(plain) is plain
    delta = {"type": "response.output_audio.delta", "delta": "AAAA"}
    assert texts.apply(delta) is delta
    texts.keep_as("same", "same")
    same = item_event("x", "same")
    assert texts.apply(same) is same  # no substitute for a text kept as itself


def test_only_the_newest_substitutions_are_kept() -> None:
    texts = StoredTexts(kept=2)
    for n in range(3):
        texts.keep_as(f"clear {n}", f"stored {n}")
    assert texts.apply(item_event("x", "clear 0"))["item"]["content"][0]["text"] == "clear 0"
    assert texts.apply(item_event("x", "clear 2"))["item"]["content"][0]["text"] == "stored 2"
