"""What a production ``broker serve`` writes: one JSON object per line, each call's lines
tagged with its ``session_id`` and ``call_id``, and no secret anywhere.

A real process (tests/support/broker_process.py) on a real call: the browser's offer goes
through it, the sideband runs a tool, the browser leaves.
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.broker_process import BrokerLauncher
from tests.support.broker_server import ADMIN_KEY, PROVIDER_KEY
from tests.support.browser import FakeBrowser
from tests.support.flow import LOOKUP_42_OUTPUT, ask, says


async def test_serve_logs_json_lines_tagged_with_the_call(
    brokers: BrokerLauncher, browser: FakeBrowser
) -> None:
    broker = await brokers.start()
    session = await broker.create_session(tools=["lookup_order"])
    await broker.connect(browser, session)
    ask(browser, "lookup_order 42")
    await browser.wait_for("response.done", says(LOOKUP_42_OUTPUT), timeout=10)
    await browser.close()
    detail = await broker.wait_session(session["id"], lambda d: d["state"] == "ended")
    code, _ = await broker.terminate(timeout=15)
    assert code == 0

    text = broker.log_text()
    records: list[dict[str, Any]] = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}\n{broker.log_tail()}") from None
    assert records, broker.log_tail()
    assert all({"ts", "level", "logger", "message"} <= set(r) for r in records)

    of_call = [r for r in records if r.get("session_id") == session["id"]]
    assert of_call, broker.log_tail()
    # Every line of the supervised call also names the provider's call.
    sideband_lines = [
        r
        for r in of_call
        if r["logger"].startswith(("broker.call.supervisor", "broker.call.observer", "sideband"))
    ]
    assert sideband_lines, broker.log_tail()
    assert all(r.get("call_id") == detail["call_id"] for r in sideband_lines)
    assert any("call ended" in r["message"] for r in sideband_lines), broker.log_tail()
    for secret in (PROVIDER_KEY, ADMIN_KEY, session["client_secret"]["value"]):
        assert secret not in text
