"""``kill -USR1``: a running broker writes its threads' and tasks' stacks and keeps serving."""

from __future__ import annotations

import asyncio
import signal

from tests.support.broker_process import BrokerLauncher


async def test_sigusr1_dumps_threads_and_tasks_and_the_broker_goes_on(
    brokers: BrokerLauncher,
) -> None:
    async with asyncio.timeout(30):
        broker = await brokers.start()
        broker.process.send_signal(signal.SIGUSR1)
        while "task(s) ---" not in broker.log_text():  # noqa: ASYNC110 - a file, no event
            await asyncio.sleep(0.05)
        session = await broker.create_session()
        code, _ = await broker.terminate(timeout=15)
    log = broker.log_text()
    assert "--- stack dump (SIGUSR1): threads ---" in log
    assert "Current thread" in log or "Thread 0x" in log  # faulthandler's own header
    # The tasks are named by their coroutines: the serving loop was there to be asked.
    assert "coroutine object" in log
    assert session["id"].startswith("sess_")
    assert code == 0
    assert '"message": "broker stopped"' in log
