"""CallController after a lost sideband: the resync, driven through in-memory connections.

Each test plays the provider by hand: it answers the controller's retrieves and its tail probe
the way the Realtime API does, so each resync path can be pinned down exactly.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sideband import CallController, OversizedFrame, Tamper
from sideband.connection import MAX_MESSAGE_BYTES
from sideband.errors import FrameTooLargeError
from tests.unit.sideband.test_controller import (
    Observer,
    QueueConnection,
    RecordingTools,
    args_done,
    created,
    done,
    fc_item,
    provider_error,
)


class Connections:
    """The first connection and every re-attach, each a fresh :class:`QueueConnection`."""

    def __init__(self) -> None:
        # Echoes come by hand: the tests decide what the provider got before a drop.
        self.all = [QueueConnection(echo_outputs=False)]
        self._attached = asyncio.Event()

    async def connect(self) -> Any:
        return self.all[0]

    async def reconnect(self, close_code: int | None) -> Any:
        conn = QueueConnection(echo_outputs=False)
        self.all.append(conn)
        self._attached.set()
        return conn

    async def next(self) -> QueueConnection:
        """The connection after the current last one, once the controller has opened it."""
        count = len(self.all)
        async with asyncio.timeout(5):
            while len(self.all) == count:
                self._attached.clear()
                await self._attached.wait()
        return self.all[-1]


async def sent_of(conn: QueueConnection, type_: str, index: int = 0) -> dict[str, Any]:
    """The ``index``-th event of ``type_`` the controller sent on ``conn`` (waits for it)."""
    async with asyncio.timeout(5):
        while True:
            matching = [e for e in conn.sent if e["type"] == type_]
            if len(matching) > index:
                return matching[index]
            conn.sent_event.clear()
            await conn.sent_event.wait()


def types_sent(conn: QueueConnection) -> list[str]:
    return [e["type"] for e in conn.sent]


def retrieved(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "conversation.item.retrieved", "item": item}


def added(item: dict[str, Any], previous_item_id: str | None) -> dict[str, Any]:
    return {"type": "conversation.item.added", "previous_item_id": previous_item_id, "item": item}


def assistant_message(item_id: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "lookup_order returned: …"}],
    }


async def start(conns: Connections, tools: RecordingTools) -> asyncio.Task[int | None]:
    controller = CallController(
        "rtc_test", conns.connect, tools, Observer(), reconnect=conns.reconnect
    )
    return asyncio.create_task(controller.run())


async def finish(conns: Connections, task: asyncio.Task[int | None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def output_then_drop(conns: Connections) -> tuple[dict[str, Any], QueueConnection]:
    """The model calls c1; its output goes out; the socket dies before the provider's echo."""
    first = conns.all[0]
    for frame in (created("r1"), args_done("r1", "c1"), done("r1", "completed", fc_item("c1"))):
        first.inbox.put_nowait(frame)
    output = await sent_of(first, "conversation.item.create")
    first.inbox.put_nowait(None)
    return output["item"], await conns.next()


async def answer_lookup_and_probe(
    conn: QueueConnection, output: dict[str, Any], tail: dict[str, Any]
) -> None:
    """Play the provider: the output is there; the probe lands after ``tail``."""
    lookup = await sent_of(conn, "conversation.item.retrieve")
    assert lookup["item_id"] == output["id"]
    conn.inbox.put_nowait(retrieved(output))
    probe = await sent_of(conn, "conversation.item.create")
    assert probe["item"]["id"].startswith("item_bkp")
    conn.inbox.put_nowait(added(probe["item"], tail["id"]))
    await sent_of(conn, "conversation.item.delete")


async def test_an_output_the_model_already_answered_is_not_answered_again() -> None:
    """The output arrived and the model answered it while the socket died: no new request."""
    conns, tools = Connections(), RecordingTools()
    task = await start(conns, tools)
    output, second = await output_then_drop(conns)
    answer = assistant_message("item_answer")
    await answer_lookup_and_probe(second, output, answer)
    # The tail is unknown to the controller: it looks at it, and it is the model's answer.
    tail_lookup = await sent_of(second, "conversation.item.retrieve", 1)
    assert tail_lookup["item_id"] == "item_answer"
    second.inbox.put_nowait(retrieved(answer))
    await asyncio.sleep(0.1)
    assert "response.create" not in types_sent(second)
    assert tools.executed == ["c1"] and tools.injected == ["c1"]
    await finish(conns, task)


async def test_an_output_still_last_in_the_conversation_gets_its_response() -> None:
    """The output arrived but the socket died before we asked for a response: ask now."""
    conns, tools = Connections(), RecordingTools()
    task = await start(conns, tools)
    output, second = await output_then_drop(conns)
    await answer_lookup_and_probe(second, output, output)
    await sent_of(second, "response.create")
    assert types_sent(second).count("conversation.item.create") == 1  # the probe, no resend
    assert tools.executed == ["c1"] and tools.injected == ["c1"]
    await finish(conns, task)


async def test_a_missing_output_is_sent_again_and_answered() -> None:
    """Both lookups miss, and the conversation's tail is not it either (a provider that
    names items itself could hold it under another id): the output is sent again (same
    item id), then response.create."""
    conns, tools = Connections(), RecordingTools()
    task = await start(conns, tools)
    output, second = await output_then_drop(conns)
    for index in range(2):
        lookup = await sent_of(second, "conversation.item.retrieve", index)
        second.inbox.put_nowait(provider_error(lookup["event_id"], "item_not_found"))
    probe = await sent_of(second, "conversation.item.create")
    assert probe["item"]["role"] == "system"
    second.inbox.put_nowait(added(probe["item"], "item_c1"))  # the tail: the model's call
    resent = await sent_of(second, "conversation.item.create", 1)
    assert resent["item"] == output
    second.inbox.put_nowait(added(output, "item_c1"))
    await sent_of(second, "response.create")
    assert types_sent(second).count("response.create") == 1
    assert tools.executed == ["c1"] and tools.injected == ["c1"]
    await finish(conns, task)


async def test_a_probe_lost_with_its_socket_is_deleted_before_the_next_probe() -> None:
    """A probe whose delete died with the socket must not be taken for the tail later."""
    conns, tools = Connections(), RecordingTools()
    task = await start(conns, tools)
    output, second = await output_then_drop(conns)
    await sent_of(second, "conversation.item.retrieve")
    second.inbox.put_nowait(retrieved(output))
    lost_probe = await sent_of(second, "conversation.item.create")
    second.inbox.put_nowait(None)  # dies before the probe is answered (or deleted)
    third = await conns.next()
    # The output was found on the second connection: nothing to look up any more.
    probe = await sent_of(third, "conversation.item.create")
    assert "conversation.item.retrieve" not in types_sent(third)
    sent = types_sent(third)
    cleanup = await sent_of(third, "conversation.item.delete")
    assert cleanup["item_id"] == lost_probe["item"]["id"]
    assert sent.index("conversation.item.delete") < sent.index("conversation.item.create")
    third.inbox.put_nowait(added(probe["item"], output["id"]))
    await sent_of(third, "response.create")
    assert "response.create" not in types_sent(second)
    await finish(conns, task)


async def test_a_response_someone_else_started_after_our_output_is_not_followed_by_ours() -> None:
    """Our request refused as "already active" by a response that read our output: done."""
    conns, tools = Connections(), RecordingTools()
    task = await start(conns, tools)
    first = conns.all[0]
    for frame in (created("r1"), args_done("r1", "c1"), done("r1", "completed", fc_item("c1"))):
        first.inbox.put_nowait(frame)
    output = (await sent_of(first, "conversation.item.create"))["item"]
    first.inbox.put_nowait(added(output, "item_c1"))
    ours = await sent_of(first, "response.create")
    first.inbox.put_nowait(created("r_browser"))  # the browser asked first; it reads ours
    first.inbox.put_nowait(
        provider_error(ours["event_id"], "conversation_already_has_active_response")
    )
    first.inbox.put_nowait(done("r_browser", "completed"))
    await asyncio.sleep(0.1)
    assert types_sent(first).count("response.create") == 1
    await finish(conns, task)


async def test_an_output_the_provider_refused_is_not_answered_for_ever() -> None:
    """An output the provider refuses is never read: no response is asked for it (else every
    response.done would ask again)."""
    conns, tools = Connections(), RecordingTools()
    task = await start(conns, tools)
    first = conns.all[0]
    for frame in (created("r1"), args_done("r1", "c1"), done("r1", "completed", fc_item("c1"))):
        first.inbox.put_nowait(frame)
    output = await sent_of(first, "conversation.item.create")
    first.inbox.put_nowait(provider_error(output["event_id"], "invalid_value"))
    for n in range(3):
        first.inbox.put_nowait(created(f"r_other{n}"))
        first.inbox.put_nowait(done(f"r_other{n}", "completed"))
    await asyncio.sleep(0.1)
    assert "response.create" not in types_sent(first)
    await finish(conns, task)


async def test_a_response_started_during_the_resync_reads_the_found_output() -> None:
    """After a drop the output is found; before the probe answers, VAD starts a response
    (it reads the output): the tail still shows our output, but no second answer is asked."""
    conns, tools = Connections(), RecordingTools()
    task = await start(conns, tools)
    output, second = await output_then_drop(conns)
    await sent_of(second, "conversation.item.retrieve")
    second.inbox.put_nowait(retrieved(output))
    probe = await sent_of(second, "conversation.item.create")
    second.inbox.put_nowait(created("r_vad"))
    second.inbox.put_nowait(added(probe["item"], output["id"]))
    await sent_of(second, "conversation.item.delete")
    second.inbox.put_nowait(done("r_vad", "completed"))
    await asyncio.sleep(0.1)
    assert "response.create" not in types_sent(second)
    await finish(conns, task)


class Tampers:
    def __init__(self) -> None:
        self.reports: list[Tamper] = []

    async def tampered(self, tamper: Tamper) -> None:
        self.reports.append(tamper)


async def test_a_tail_too_large_to_read_costs_one_socket_and_the_resync_goes_past_it() -> None:
    """The resync's retrieve of an unknown tail (a long user audio turn) is answered with a
    frame over the limit: that socket breaks (1009). The item is blamed and reported, and the
    next resync never asks for it again: it goes on to the call the model finished unseen
    and runs it (before the fix, every resync retrieved the tail again and lost the socket)."""
    conns, tools, tampers = Connections(), RecordingTools(), Tampers()
    controller = CallController(
        "rtc_test",
        conns.connect,
        tools,
        Observer(),
        tamper=tampers,
        reconnect=conns.reconnect,
    )
    task = asyncio.create_task(controller.run())
    first = conns.all[0]
    first.inbox.put_nowait(created("r1"))
    first.inbox.put_nowait(args_done("r1", "c1"))
    first.inbox.put_nowait(None)  # lost before the response's done
    second = await conns.next()
    probe = await sent_of(second, "conversation.item.create")
    second.inbox.put_nowait(added(probe["item"], "item_audio"))
    lookup = await sent_of(second, "conversation.item.retrieve")
    assert lookup["item_id"] == "item_audio"
    second.inbox.put_nowait(FrameTooLargeError(MAX_MESSAGE_BYTES, "Message size exceeds limit"))
    third = await conns.next()
    probe = await sent_of(third, "conversation.item.create")
    third.inbox.put_nowait(added(probe["item"], "item_audio"))
    lookup = await sent_of(third, "conversation.item.retrieve")
    assert lookup["item_id"] == "item_c1"  # not the tail again
    third.inbox.put_nowait(retrieved(fc_item("c1")))
    await sent_of(third, "conversation.item.create", 1)  # c1's output
    assert [e["item_id"] for e in third.sent if e["type"] == "conversation.item.retrieve"] == [
        "item_c1"
    ]
    assert tools.executed == ["c1"]
    assert tampers.reports == [OversizedFrame(item_id="item_audio", limit=MAX_MESSAGE_BYTES)]
    assert controller.last_close_code == 1009
    await finish(conns, task)


async def test_an_oversized_frame_with_no_retrieve_outstanding_blames_no_item() -> None:
    """A frame over the limit that answers nothing the broker asked (the page's doing) is
    reported with no item, and nothing is kept from the next resync."""
    conns, tools, tampers = Connections(), RecordingTools(), Tampers()
    controller = CallController(
        "rtc_test",
        conns.connect,
        tools,
        Observer(),
        tamper=tampers,
        reconnect=conns.reconnect,
    )
    task = asyncio.create_task(controller.run())
    conns.all[0].inbox.put_nowait(FrameTooLargeError(MAX_MESSAGE_BYTES, "too big"))
    second = await conns.next()
    probe = await sent_of(second, "conversation.item.create")
    second.inbox.put_nowait(added(probe["item"], "item_audio"))
    lookup = await sent_of(second, "conversation.item.retrieve")
    assert lookup["item_id"] == "item_audio"  # still asked: nothing blamed it
    assert tampers.reports == [OversizedFrame(item_id=None, limit=MAX_MESSAGE_BYTES)]
    await finish(conns, task)
