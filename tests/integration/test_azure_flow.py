"""The whole stack on Azure OpenAI: the emulator's Azure flavour as the provider.

Session → offer (a real aiortc peer) → the broker mints a client secret with the session
config and posts the SDP with it → the sideband attaches with the resource credential → the
model's function call runs the allowlisted tool once → the output goes in on the sideband →
the page hears the answer. Every request the emulator answered is recorded
(:class:`RecordedAzure`), so the tests assert what reached the provider, with which
credential: the resource key never goes to ``/calls``, and the client secret goes nowhere
else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from broker import Secret, Settings, app_state
from emulator import CALL_REGISTRY, Call, EmulatorSettings, create_app
from sideband import AzureOpenAIProvider
from tests.conftest import assert_conformant
from tests.support.broker_server import (
    ADMIN_KEY,
    PROVIDER_KEY,
    BrokerFactory,
    Reply,
    RunningBroker,
    broker_factory,
    stack_settings,
    start_broker,
)
from tests.support.browser import FakeBrowser
from tests.support.conformance import sideband_client_event_failures
from tests.support.flow import (
    LOOKUP_42_OUTPUT,
    ask,
    connect_browser,
    outputs_received,
    session_events,
    wait_call_ended,
    wait_sideband,
)
from tests.support.metrics import scrape, value
from tests.support.servers import SHUTDOWN_TIMEOUT_S, RunningEmulator, request_json, set_faults
from tests.support.tool_backend import ToolBackend

DEPLOYMENT = "my-realtime-deployment"
CALLS = "/openai/v1/realtime/calls"
CLIENT_SECRETS = "/openai/v1/realtime/client_secrets"
SIDEBAND = "/openai/v1/realtime"


@dataclass(frozen=True)
class Seen:
    """One request the emulator answered: what came in, and the status it got."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    status: int

    @property
    def bearer(self) -> str | None:
        value = self.headers.get("Authorization", "")
        return value.removeprefix("Bearer ") if value.startswith("Bearer ") else None


@dataclass
class RecordedAzure:
    """The Azure-flavour emulator, and every request it answered, in order."""

    running: RunningEmulator
    seen: list[Seen] = field(default_factory=list)

    def to(self, path: str, method: str = "POST") -> list[Seen]:
        return [s for s in self.seen if s.path == path and s.method == method]

    def provider_requests(self) -> list[Seen]:
        """Everything but the tests' own ``/_emulator`` admin requests."""
        return [s for s in self.seen if not s.path.startswith("/_emulator")]

    def call(self, call_id: str) -> Call:
        call = self.running.registry.get(call_id)
        assert call is not None
        return call


async def start_recorded_azure(**settings: Any) -> RecordedAzure:
    """``start_emulator`` for the Azure flavour, with aiohttp's own response hook recording
    each request (WebSocket handshakes included) before it is answered."""
    emulator_settings = EmulatorSettings(api_key=PROVIDER_KEY, flavor="azure", **settings)
    app = create_app(emulator_settings)
    recorded: list[Seen] = []

    async def record(request: web.Request, response: web.StreamResponse) -> None:
        recorded.append(
            Seen(
                request.method,
                request.path,
                dict(request.query),
                dict(request.headers),
                response.status,
            )
        )

    app.on_response_prepare.append(record)
    runner = web.AppRunner(app, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    running = RunningEmulator(
        base_url=f"http://127.0.0.1:{port}/openai/v1",
        app=app,
        registry=app[CALL_REGISTRY],
        settings=emulator_settings,
        _runner=runner,
    )
    return RecordedAzure(running, recorded)


@pytest.fixture
async def azure() -> AsyncIterator[RecordedAzure]:
    """The Azure-flavour emulator; its server events and the broker's client events are
    validated against the SDK's types at teardown."""
    recorded = await start_recorded_azure()
    yield recorded
    await recorded.running.close()
    assert_conformant(recorded.running)
    failures = sideband_client_event_failures(recorded.running.registry)
    assert not failures, "non-conformant broker client events:\n" + "\n".join(failures[:5])


@pytest.fixture
def azure_settings(db_url: str, azure: RecordedAzure, tools_config: Path) -> Settings:
    return stack_settings(
        db_url,
        # The resource endpoint, as an operator writes it: /openai/v1 is the broker's to add.
        azure.running.root_url,
        tools_config,
        provider="azure",
        default_model=DEPLOYMENT,
        sideband_reconnect_timeout=10.0,
    )


AzureBrokers = BrokerFactory


@pytest.fixture
async def azure_broker(azure_settings: Settings) -> AsyncIterator[AzureBrokers]:
    """Start brokers on the Azure emulator with settings overrides; all closed after."""
    async with broker_factory(azure_settings) as factory:
        yield factory


def heard(fragment: str) -> Callable[[dict[str, Any]], bool]:
    """Predicate: a transcript the page received (all the filter lets it see) with ``fragment``."""
    return lambda event: fragment in event.get("transcript", "")


def is_function_call_event(event: dict[str, Any]) -> bool:
    return "function_call" in event["type"] or event["type"] in (
        "response.done",
        "response.output_item.added",
        "response.output_item.done",
    )


async def end_from_the_page(broker: RunningBroker, session: dict[str, Any], call: Call) -> None:
    """The page ends its session; returns once the provider's call has ended too."""
    ended = await broker.request(
        "POST",
        f"/api/v1/sessions/{session['id']}/end",
        token=session["client_secret"]["value"],
    )
    assert ended.status == 200, ended.text
    await wait_call_ended(call)


async def offer_from_a_new_page(broker: RunningBroker, session: dict[str, Any]) -> Reply:
    """The broker's reply to a new page's offer; the page is closed (no call is wanted)."""
    browser = FakeBrowser()
    try:
        return await broker.offer(session, await browser.create_offer())
    finally:
        await browser.close()


async def test_tool_flow_on_azure_through_a_client_secret_with_the_filter_on(
    azure_broker: AzureBrokers,
    azure: RecordedAzure,
    tool_backend: ToolBackend,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The tool runs once on the sideband and the page hears its output, though the page
    never sees the function call (webrtcfilter=on).

    Invariants: ``/calls`` gets ``Bearer ek_…`` and a raw SDP, never the resource key; the
    client secret is minted with the session config (the deployment as model) under
    ``api-key``; the sideband and the hangup use ``api-key``; the ``ek_`` value appears in
    no broker reply, stored event or log line.
    """
    caplog.set_level(logging.DEBUG)
    broker = await azure_broker()
    session = await broker.create_session(tools=["lookup_order"], instructions="Azure test.")
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'lookup_order {"order_id": "42"}')
        answer = await browser.wait_for(
            "response.output_audio_transcript.done", heard(LOOKUP_42_OUTPUT)
        )
        assert LOOKUP_42_OUTPUT in answer["transcript"]
        assert not [e["type"] for e in browser.events if is_function_call_event(e)]

        detail = await broker.get_session(session["id"])
        assert (detail["state"], detail["model"]) == ("live", DEPLOYMENT)
        call = azure.call(detail["call_id"])
        assert call.session["model"] == DEPLOYMENT
        assert call.session["instructions"] == "Azure test."
        [row] = detail["tool_calls"]
        assert (row["tool"], row["status"], row["path"]) == (
            "lookup_order",
            "succeeded",
            "sideband",
        )
        assert row["output"] == LOOKUP_42_OUTPUT
        [request] = tool_backend.calls_to("lookup_order")
        assert request.arguments == {"order_id": "42"}
        assert outputs_received(call) == [
            (
                "sideband",
                {
                    "type": "function_call_output",
                    "call_id": row["call_id"],
                    "output": LOOKUP_42_OUTPUT,
                },
            )
        ]

        await end_from_the_page(broker, session, call)
    finally:
        await browser.close()

    [mint] = azure.to(CLIENT_SECRETS)
    assert (mint.status, mint.headers.get("api-key"), mint.bearer) == (200, PROVIDER_KEY, None)
    [offer] = azure.to(CALLS)
    assert offer.status == 201
    secret = offer.bearer
    assert secret is not None and secret.startswith("ek_")
    assert "api-key" not in offer.headers
    assert PROVIDER_KEY not in json.dumps(offer.headers)
    assert offer.headers["Content-Type"] == "application/sdp"
    assert offer.query == {"webrtcfilter": "on"}
    sidebands = azure.to(SIDEBAND, "GET")
    assert sidebands and all(s.headers.get("api-key") == PROVIDER_KEY for s in sidebands)
    assert all(s.query == {"call_id": call.call_id} for s in sidebands)
    [hangup] = azure.to(f"{CALLS}/{call.call_id}/hangup")
    assert (hangup.status, hangup.headers.get("api-key")) == (200, PROVIDER_KEY)
    # The secret was presented only where it belongs, once.
    assert [s.path for s in azure.provider_requests() if secret in json.dumps(s.headers)] == [CALLS]

    # ... and the broker kept it to itself.
    for reply in broker.replies:
        assert secret not in reply.text and secret not in json.dumps(reply.headers)
    assert secret not in json.dumps(await session_events(broker, session["id"]))
    assert secret not in caplog.text and PROVIDER_KEY not in caplog.text


async def test_a_bridge_only_session_with_tools_is_refused_when_the_page_sees_no_calls(
    azure_broker: AzureBrokers,
) -> None:
    """Under webrtcfilter=on the page never sees a function call to relay: a session that
    could only run its tools through the page is refused at creation, not left to fail."""
    broker = await azure_broker()
    reply = await broker.request(
        "POST", "/api/v1/sessions", json_body={"tools": ["lookup_order"], "sideband": False}
    )
    assert reply.status == 422
    assert reply.headers["Content-Type"].startswith("application/problem+json")
    problem = reply.json()
    assert problem["code"] == "provider_lacks_capability"
    assert problem["type"] == "urn:broker:error:provider_lacks_capability"
    assert problem["capability"] == "page_sees_function_calls"
    assert problem["provider"] == "azure"
    assert '"sideband": true' in problem["detail"]
    listed = await broker.request("GET", "/api/v1/sessions")
    assert listed.json()["sessions"] == [], "nothing was stored"
    # With no tools nothing relies on the page: a plain bridge-only call is fine.
    plain = await broker.request(
        "POST", "/api/v1/sessions", json_body={"tools": [], "sideband": False}
    )
    assert plain.status == 201, plain.text


async def test_with_the_filter_off_the_page_sees_calls_and_the_bridge_runs_them(
    azure_broker: AzureBrokers, azure: RecordedAzure, tool_backend: ToolBackend
) -> None:
    broker = await azure_broker(azure_webrtc_filter=False)
    session = await broker.create_session(tools=["lookup_order"], sideband=False)
    browser = await connect_browser(broker, session)
    try:
        ask(browser, 'lookup_order {"order_id": "42"}')
        call = await browser.wait_for("response.function_call_arguments.done")
        reply = await broker.bridge(session, "lookup_order", call["call_id"], call["arguments"])
        assert reply.status == 200, reply.text
        assert (reply.json()["status"], reply.json()["handled_by"]) == ("succeeded", "bridge")
        assert len(tool_backend.calls_to("lookup_order")) == 1
    finally:
        await browser.close()
    [offer] = azure.to(CALLS)
    assert offer.query == {} and offer.status == 201


async def test_a_failed_sideband_gets_no_bridge_fallback_when_the_page_sees_no_calls(
    azure_broker: AzureBrokers,
    azure: RecordedAzure,
    tool_backend: ToolBackend,
    http: aiohttp.ClientSession,
) -> None:
    """A degraded call under the filter: a call the page relays cannot be one it saw the
    model make, so the bridge refuses to run it (on OpenAI it would run it)."""
    await set_faults(http, azure.running, sideband_unavailable_ms=60_000)
    broker = await azure_broker(sideband_attach_timeout=0.3)
    session = await broker.create_session(tools=["lookup_order"])
    browser = FakeBrowser()
    try:
        reply = await broker.offer(session, await browser.create_offer())
        assert reply.status == 201, reply.text
        await wait_sideband(broker, session["id"], "failed")
        assert (await broker.get_session(session["id"]))["state"] == "degraded"
        bridged = await broker.bridge(session, "lookup_order", "call_1", {"order_id": "1"})
        assert (bridged.status, bridged.code) == (422, "provider_lacks_capability")
        assert bridged.json()["capability"] == "page_sees_function_calls"
        assert tool_backend.calls_to("lookup_order") == []
    finally:
        await browser.close()


async def test_an_entra_token_command_is_run_for_every_request_and_every_dial(
    azure_broker: AzureBrokers,
    azure: RecordedAzure,
    tool_backend: ToolBackend,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """Entra tokens expire mid-call: the mint, each sideband dial (a re-attach too) and the
    hangup each run the command once and present its token as ``Bearer``; ``/calls`` still
    gets only the client secret. (The emulator accepts the resource key as its Entra
    stand-in, so the command prints that.)"""
    runs = tmp_path / "runs"
    command = tmp_path / "get-token.py"
    command.write_text(
        f"from pathlib import Path\n"
        f"with Path({str(runs)!r}).open('a') as runs:\n"
        f"    runs.write('run\\n')\n"
        f"print({PROVIDER_KEY!r})\n"
    )
    broker = await azure_broker(
        provider_api_key=None, azure_token_command=f"{sys.executable} {command}"
    )
    session = await broker.create_session(tools=["lookup_order"])
    browser = await connect_browser(broker, session)
    try:
        call = azure.call((await broker.get_session(session["id"]))["call_id"])
        status, dropped = await request_json(
            http,
            azure.running,
            "POST",
            f"/_emulator/calls/{call.call_id}/drop-sidebands",
            {"mode": "abort"},
        )
        assert (status, dropped["dropped"]) == (200, 1)
        async with asyncio.timeout(10):
            while len(call.sideband_attaches) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await wait_sideband(broker, session["id"])
        # The re-dialled sideband works: the tool runs and the page hears it.
        ask(browser, 'lookup_order {"order_id": "42"}')
        await browser.wait_for("response.output_audio_transcript.done", heard(LOOKUP_42_OUTPUT))
        assert len(tool_backend.calls_to("lookup_order")) == 1
        await end_from_the_page(broker, session, call)
    finally:
        await browser.close()

    credentialed = [s for s in azure.provider_requests() if s.path != CALLS]
    assert [s.path for s in credentialed[:1]] == [CLIENT_SECRETS]
    assert len(azure.to(SIDEBAND, "GET")) >= 2
    assert credentialed[-1].path == f"{CALLS}/{call.call_id}/hangup"
    assert all(s.bearer == PROVIDER_KEY and "api-key" not in s.headers for s in credentialed)
    assert runs.read_text().split() == ["run"] * len(credentialed)
    [offer] = azure.to(CALLS)
    assert offer.bearer is not None and offer.bearer.startswith("ek_")


async def test_a_failing_token_command_fails_the_offer_without_showing_its_output(
    azure_broker: AzureBrokers, azure: RecordedAzure, tmp_path: Path
) -> None:
    command = tmp_path / "get-token.py"
    command.write_text("import sys\nprint('SECRET-TOKEN-OUTPUT')\nsys.exit(4)\n")
    broker = await azure_broker(
        provider_api_key=None, azure_token_command=f"{sys.executable} {command}"
    )
    session = await broker.create_session(tools=["lookup_order"])
    reply = await offer_from_a_new_page(broker, session)
    assert (reply.status, reply.code) == (502, "provider_unreachable")
    detail = await broker.get_session(session["id"])
    assert detail["state"] == "failed"
    assert detail["end_reason"] == (
        "offer: the provider was unreachable (the token command exited with status 4)"
    )
    assert "SECRET-TOKEN-OUTPUT" not in reply.text + json.dumps(detail)
    assert azure.provider_requests() == [], "nothing reached the provider"


async def test_a_refused_mint_fails_the_offer_and_is_counted_as_a_client_secret_error(
    azure_broker: AzureBrokers, azure: RecordedAzure
) -> None:
    """The first of the two steps failing is a provider error like a refused call, counted
    under its own operation; ``/calls`` is never tried."""
    broker = await azure_broker(provider_api_key=Secret("wrong-resource-key-000000000000"))
    session = await broker.create_session(tools=["lookup_order"])
    reply = await offer_from_a_new_page(broker, session)
    assert (reply.status, reply.code) == (502, "provider_error")
    assert (reply.json()["provider_status"], reply.json()["provider_code"]) == (
        401,
        "invalid_api_key",
    )
    samples = await scrape(broker)
    assert value(samples, "broker_provider_errors_total", operation="client_secret", status="401")
    assert value(samples, "broker_offers_total", outcome="provider_error") == 1
    assert [s.path for s in azure.provider_requests()] == [CLIENT_SECRETS]


async def test_azure_without_a_credential_runs_the_built_in_emulator_in_its_azure_flavour(
    db_url: str, tools_config: Path
) -> None:
    """``BROKER_PROVIDER=azure`` alone: the whole stack runs locally, through the Azure
    provider (two-step offer, filter on) against the in-process emulator."""
    broker = await start_broker(
        Settings(
            signing_key=Secret("test-signing-key-" + "x" * 32),
            database_url=db_url,
            admin_key=Secret(ADMIN_KEY),
            provider="azure",
            tools_config=tools_config,
            overload_loop_lag_s=60.0,
        )
    )
    try:
        provider = broker.app[app_state.PROVIDER]
        assert isinstance(provider, AzureOpenAIProvider)
        assert provider.name == "emulator-azure"
        assert provider.base_url.endswith("/openai/v1")
        assert provider.capabilities.offer_needs_client_secret
        assert not provider.capabilities.page_sees_function_calls
        session = await broker.create_session(tools=["lookup_order"])
        browser = await connect_browser(broker, session)
        try:
            ask(browser, 'lookup_order {"order_id": "42"}')
            await browser.wait_for("response.output_audio_transcript.done", heard(LOOKUP_42_OUTPUT))
            assert not [e for e in browser.events if is_function_call_event(e)]
        finally:
            await browser.close()
        emulator_app = broker.app[app_state.EMULATOR_RUNNER].app
        [call] = emulator_app[CALL_REGISTRY].calls.values()
        assert call.location.startswith("/v1/realtime/calls/rtc_")
    finally:
        await broker.http.close()
        await broker.close()
