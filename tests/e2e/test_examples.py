"""The example app backends (examples/fastapi, examples/express) against a real broker.

Each example runs as its own process on loopback, as a developer would start it, holding a
broker API key; its page is on another origin than the broker and loads the browser package
from the broker's versioned URL, so the broker lists the example's origin in
``cors_origins``. As behind a proxy, browsers reach the broker at another address
(``public_url``, ``http://localhost:<port>``) than the backend does (``127.0.0.1``): the URLs
in the create response must be the public ones. The emulator plays the provider, the tool
backend runs ``lookup_order``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import pytest

from tests.conftest import IN_CI, skip_or_fail
from tests.support.broker_server import CREATE_RESPONSE_KEYS, BrokerFactory, RunningBroker
from tests.support.flow import LOOKUP_42_OUTPUT, wait_session_ended, wait_sideband
from tests.support.tool_backend import ToolBackend

EXAMPLES: Final = Path(__file__).resolve().parents[2] / "examples"
CLIENT_PATH: Final = "/client/v1/broker-client.js"
CALL_TIMEOUT_MS: Final = 20_000
START_TIMEOUT_S: Final = 30.0
NPM_CI_TIMEOUT_S: Final = 90.0


def free_port() -> int:
    """A loopback port free right now: the broker must know the example's origin before it
    starts, so the example cannot take port 0 and report it afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class ExampleApp:
    origin: str
    broker: RunningBroker
    public_url: str
    """The broker's ``public_url``: where the page reaches it."""
    log: Path

    def output(self) -> str:
        """The end of the example's log, for failure messages."""
        return self.read_log(self.log)

    @staticmethod
    def read_log(log: Path) -> str:
        return log.read_text(errors="replace")[-4000:]


@asynccontextmanager
async def serving(
    argv: Sequence[str], *, env: dict[str, str], cwd: Path, origin: str, log: Path
) -> AsyncIterator[None]:
    """Run an example server until it answers ``GET /``; stop it (SIGTERM, then SIGKILL)."""
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *argv, cwd=cwd, env=os.environ | env, stdout=out, stderr=asyncio.subprocess.STDOUT
        )
    try:
        async with aiohttp.ClientSession() as http, asyncio.timeout(START_TIMEOUT_S):
            while True:
                if process.returncode is not None:
                    output = ExampleApp.read_log(log)
                    raise AssertionError(f"{argv[0]} exited {process.returncode}:\n{output}")
                try:
                    async with http.get(origin + "/") as reply:
                        if reply.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        yield
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(5):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


@dataclass
class ExampleBroker:
    broker: RunningBroker
    public_url: str
    key: str
    """An API key with ``sessions:create`` granting ``lookup_order``, for the example backend."""

    def backend_env(self) -> dict[str, str]:
        return {
            "BROKER_URL": self.broker.base_url,
            "BROKER_API_KEY": self.key,
            "BROKER_CLIENT_URL": self.public_url + CLIENT_PATH,
            "EXAMPLE_TOOLS": "lookup_order",
        }


async def example_broker(
    make_broker: BrokerFactory, origin: str, *, allowed: bool = True
) -> ExampleBroker:
    """A broker public at ``localhost`` whose CORS list holds the example's origin (unless
    not ``allowed``: then it holds another)."""
    port = free_port()
    public_url = f"http://localhost:{port}"
    cors_origins = frozenset({origin if allowed else "http://127.0.0.1:9"})
    broker = await make_broker(listen_port=port, cors_origins=cors_origins, public_url=public_url)
    # What an operator gives such a backend: the one tool its sessions use.
    key = await broker.new_key("sessions:create", name="example backend", tools=["lookup_order"])
    return ExampleBroker(broker, public_url, key)


@asynccontextmanager
async def running_fastapi_example(
    make_broker: BrokerFactory, tmp_path: Path, *, allowed: bool = True
) -> AsyncIterator[ExampleApp]:
    """examples/fastapi under uvicorn, on its own loopback origin."""
    for module in ("fastapi", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            skip_or_fail(f"the {module} package is not installed (pip install -e '.[dev]')")
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    stack = await example_broker(make_broker, origin, allowed=allowed)
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "app:create_app",
        "--app-dir",
        str(EXAMPLES / "fastapi"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = tmp_path / "fastapi.log"
    async with serving(argv, env=stack.backend_env(), cwd=tmp_path, origin=origin, log=log):
        yield ExampleApp(origin, stack.broker, stack.public_url, log)


@pytest.fixture
async def fastapi_example(make_broker: BrokerFactory, tmp_path: Path) -> AsyncIterator[ExampleApp]:
    async with running_fastapi_example(make_broker, tmp_path) as example:
        yield example


@pytest.fixture
async def express_example(make_broker: BrokerFactory, tmp_path: Path) -> AsyncIterator[ExampleApp]:
    """examples/express under node, installed with ``npm ci`` in a copy (the tree stays clean).

    Skips without node and npm, unless CI=true: then it fails.
    """
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        skip_or_fail("node and npm are needed for the Express example")
    assert node is not None and npm is not None
    app_dir = tmp_path / "express"
    shutil.copytree(EXAMPLES / "express", app_dir, ignore=shutil.ignore_patterns("node_modules"))
    install = await asyncio.create_subprocess_exec(
        npm,
        "ci",
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
        cwd=app_dir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(NPM_CI_TIMEOUT_S):
            output, _ = await install.communicate()
    except TimeoutError:
        install.kill()
        await install.wait()
        raise
    if install.returncode != 0:
        message = f"npm ci failed ({install.returncode}):\n{output.decode(errors='replace')}"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)  # offline laptop: the registry is out of reach
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    stack = await example_broker(make_broker, origin)
    log = tmp_path / "express.log"
    env = stack.backend_env() | {"HOST": "127.0.0.1", "PORT": str(port)}
    async with serving([node, "server.js"], env=env, cwd=app_dir, origin=origin, log=log):
        yield ExampleApp(origin, stack.broker, stack.public_url, log)


async def assert_passes_the_create_response_through(example: ExampleApp) -> None:
    """``POST /session`` on the example gives the broker's create response: same fields, the
    broker's absolute URLs, the example's own allowlist, a secret the broker accepts."""
    broker = example.broker
    direct = await broker.create_session(tools=["lookup_order"])
    async with aiohttp.ClientSession() as http, http.post(example.origin + "/session") as reply:
        assert reply.status == 201, example.output()
        assert reply.content_type == "application/json"
        assert reply.headers["Cache-Control"] == "no-store"
        created: dict[str, Any] = await reply.json()
    assert set(created) == set(direct) == CREATE_RESPONSE_KEYS
    session_url = f"{example.public_url}/api/v1/sessions/{created['id']}"
    assert (created["offer_url"], created["bridge_url"], created["end_url"]) == (
        f"{session_url}/realtime-offer",
        f"{session_url}/tools/",
        f"{session_url}/end",
    )
    assert (created["state"], created["tools"]) == ("created", ["lookup_order"])
    assert set(created["client_secret"]) == {"value", "expires_at"}
    detail = await broker.get_session(created["id"])
    assert detail["metadata"]["source"].endswith("-example")


async def assert_serves_the_page(example: ExampleApp) -> None:
    """The page imports the browser package from the broker's versioned URL."""
    async with aiohttp.ClientSession() as http, http.get(example.origin + "/") as reply:
        assert reply.status == 200
        page = await reply.text()
    assert f'"broker-client": "{example.public_url}{CLIENT_PATH}"' in page
    assert 'import("broker-client")' in page


async def call_and_hang_up(page: Any, example: ExampleApp, tool_backend: ToolBackend) -> None:
    """Must-show 1 on ``example``: start a call on its page, have the model run lookup_order on
    the sideband, hang up, and see the broker end the session."""
    broker = example.broker
    fetched: list[str] = []
    page.on("request", lambda request: fetched.append(request.url))
    await page.goto(example.origin + "/")
    async with page.expect_response("**/session") as created:
        await page.click("#start")
    reply = await created.value
    assert reply.status == 201, example.output()
    session: dict[str, Any] = await reply.json()
    # The page got the API's create response, untouched, and gave it to the package as it was.
    assert set(session) == CREATE_RESPONSE_KEYS
    assert session["offer_url"].startswith(example.public_url + "/api/v1/sessions/")
    try:
        await page.wait_for_selector('#status[data-state="live"]', timeout=CALL_TIMEOUT_MS)
    except Exception as exc:
        raise AssertionError(f"call never went live: {exc}\n{await page_report(page)}") from None
    assert example.public_url + CLIENT_PATH in fetched
    assert session["offer_url"] in fetched
    await wait_sideband(broker, session["id"])

    await page.fill("#message", "lookup_order 42")
    await page.click("#send")
    answer = page.locator(
        '#transcript [data-role="assistant"]', has_text=f"lookup_order returned: {LOOKUP_42_OUTPUT}"
    )
    try:
        await answer.first.wait_for(timeout=CALL_TIMEOUT_MS)
    except Exception as exc:
        raise AssertionError(f"no answer: {exc}\n{await page_report(page)}") from None
    row = page.locator('#tools li.tool[data-name="lookup_order"]')
    assert await row.count() == 1
    assert await row.get_attribute("data-output") == LOOKUP_42_OUTPUT

    # The tool ran once, on the broker's sideband, against the allowlist the backend chose.
    assert len(tool_backend.calls_to("lookup_order")) == 1
    detail = await broker.get_session(session["id"])
    [call] = detail["tool_calls"]
    assert (call["tool"], call["path"], call["status"]) == ("lookup_order", "sideband", "succeeded")

    async with page.expect_response(session["end_url"]) as ended_reply:
        await page.click("#hangup")
    end_request = (await ended_reply.value).request
    assert end_request.method == "POST"
    secret = session["client_secret"]["value"]
    assert await end_request.header_value("Authorization") == f"Bearer {secret}"
    await page.wait_for_selector('#status[data-state="ended"]', timeout=CALL_TIMEOUT_MS)
    ended = await wait_session_ended(broker, session["id"], timeout=10)
    # close() keeps the connection up until the broker answered its end request, so the
    # provider cannot see the page leave first: the session reads as the user's hangup.
    assert ended["state"] == "ended"
    assert ended["end_reason"] == "hangup", ended


async def page_report(page: Any) -> str:
    transcript = await page.locator("#transcript").inner_text()
    error = await page.locator("#error").inner_text()
    return "\n".join([f"transcript: {transcript!r}", f"error: {error!r}", *page.console_lines])


async def test_a_page_from_the_fastapi_example_calls_runs_a_tool_and_hangs_up(
    page: Any, fastapi_example: ExampleApp, tool_backend: ToolBackend
) -> None:
    """Must-show 1: the FastAPI example's page gets the API's create response passed through
    unchanged, completes a call with a tool run on the sideband, and ``close()`` ends the
    session at the broker."""
    await call_and_hang_up(page, fastapi_example, tool_backend)


async def test_the_fastapi_example_passes_the_create_response_through_and_serves_its_page(
    fastapi_example: ExampleApp,
) -> None:
    await assert_passes_the_create_response_through(fastapi_example)
    await assert_serves_the_page(fastapi_example)


async def test_the_express_example_passes_the_create_response_through_and_serves_its_page(
    express_example: ExampleApp,
) -> None:
    await assert_passes_the_create_response_through(express_example)
    await assert_serves_the_page(express_example)


async def test_a_page_from_the_express_example_calls_runs_a_tool_and_hangs_up(
    page: Any, express_example: ExampleApp, tool_backend: ToolBackend
) -> None:
    await call_and_hang_up(page, express_example, tool_backend)


async def test_a_page_on_an_origin_the_broker_does_not_allow_says_so_and_starts_nothing(
    page: Any, make_broker: BrokerFactory, tmp_path: Path
) -> None:
    """Without the example's origin in ``cors_origins`` the browser refuses the package; the
    page says why, and no session is created."""
    async with running_fastapi_example(make_broker, tmp_path, allowed=False) as example:
        await page.goto(example.origin + "/")
        await page.wait_for_selector('#status[data-state="error"]', timeout=CALL_TIMEOUT_MS)
        assert await page.get_attribute("#error", "data-code") == "client_unavailable"
        assert await page.is_disabled("#start")
        listed = await example.broker.request("GET", "/api/v1/sessions")
        assert listed.status == 200, listed.text
        assert listed.json()["sessions"] == []
