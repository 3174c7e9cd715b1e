"""How the benchmark's helper processes (the stand-in, the minimal watcher) serve.

Each serves its app on a loopback port, tells the driver the port on stdout, and runs until
SIGTERM or SIGINT, or its time bound (a driver that dies without stopping it must not leave
it running for ever). No import beyond aiohttp: a helper's own CPU is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from aiohttp import web


async def serve_until_stopped(
    runner: web.AppRunner, ready_prefix: str, max_seconds: float, *, port: int = 0
) -> None:
    """Serve ``runner`` (set up) on 127.0.0.1, print ``<ready_prefix><port>``, wait to stop.

    The runner is cleaned up by the caller, after whatever else it must close first.
    """
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    sys.stdout.write(f"{ready_prefix}{runner.addresses[0][1]}\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max_seconds):
            await stop.wait()
