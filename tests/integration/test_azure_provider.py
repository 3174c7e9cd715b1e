"""``AzureOpenAIProvider`` alone, against the emulator's Azure flavour (or, for an answer the
emulator never gives, a stand-in provider on loopback), and every provider's capabilities."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from emulator import EmulatorSettings
from sideband import (
    ApiKeyCredential,
    AzureOpenAIProvider,
    CallNotFoundError,
    OpenAICompatibleProvider,
    ProviderCapabilities,
    ProviderError,
)
from tests.support.broker_server import PROVIDER_KEY
from tests.support.servers import RunningEmulator, serving, start_emulator

SESSION = {"type": "realtime", "model": "my-deployment"}


@pytest.fixture
async def azure() -> AsyncIterator[RunningEmulator]:
    running = await start_emulator(EmulatorSettings(api_key=PROVIDER_KEY, flavor="azure"))
    yield running
    await running.close()


AZURE_BASE = "https://my-resource.openai.azure.com/openai/v1"


async def test_every_provider_says_what_it_allows() -> None:
    async with aiohttp.ClientSession() as http:
        openai = OpenAICompatibleProvider("https://api.openai.com/v1", "sk-x", http)
        filtered = AzureOpenAIProvider(AZURE_BASE, ApiKeyCredential("k"), http)
        unfiltered = AzureOpenAIProvider(
            AZURE_BASE, ApiKeyCredential("k"), http, webrtc_filter=False
        )
    assert openai.capabilities == ProviderCapabilities(
        sideband=True,
        hangup=True,
        page_sees_function_calls=True,
        offer_needs_client_secret=False,
        websocket_sessions=True,
        out_of_band_responses=True,
        sip_calls=True,
    )
    # Azure serves WebSocket sessions and SIP at paths of its own this adapter does not build.
    assert filtered.capabilities == ProviderCapabilities(
        sideband=True,
        hangup=True,
        page_sees_function_calls=False,
        offer_needs_client_secret=True,
        websocket_sessions=False,
        out_of_band_responses=True,
        sip_calls=False,
    )
    assert unfiltered.capabilities.page_sees_function_calls
    assert unfiltered.capabilities.offer_needs_client_secret
    with pytest.raises(dataclasses.FrozenInstanceError):
        filtered.capabilities.sideband = False  # type: ignore[misc]


async def test_the_sideband_target_is_the_v1_path_with_a_credential_per_dial() -> None:
    async with aiohttp.ClientSession() as http:
        provider = AzureOpenAIProvider(AZURE_BASE + "/", ApiKeyCredential(PROVIDER_KEY), http)
        target = provider.sideband_target("rtc_0123")
        # No api-version, no model (docs/protocol.md §0).
        assert str(target.url) == (
            "wss://my-resource.openai.azure.com/openai/v1/realtime?call_id=rtc_0123"
        )
        assert dict(target.headers) == {}
        assert await target.dial_headers() == {"api-key": PROVIDER_KEY}
    for shown in (repr(provider), repr(target)):
        assert PROVIDER_KEY not in shown


async def test_hangup_of_an_unknown_call_is_call_not_found(azure: RunningEmulator) -> None:
    async with aiohttp.ClientSession() as http:
        provider = AzureOpenAIProvider(azure.base_url, ApiKeyCredential(PROVIDER_KEY), http)
        with pytest.raises(CallNotFoundError):
            await provider.hangup("rtc_" + "0" * 32)


async def test_a_wrong_key_is_refused_at_the_mint_and_named_by_status_only(
    azure: RunningEmulator,
) -> None:
    wrong = "wrong-resource-key-0123456789"
    async with aiohttp.ClientSession() as http:
        provider = AzureOpenAIProvider(azure.base_url, ApiKeyCredential(wrong), http)
        with pytest.raises(ProviderError) as raised:
            await provider.create_call("v=0\r\n", SESSION)
    error = raised.value
    assert (error.status, error.code, error.operation) == (401, "invalid_api_key", "client_secret")
    assert wrong not in str(error)
    assert azure.registry.calls == {}


@pytest.mark.parametrize(
    "minted",
    [{"nope": 1}, {"value": ""}, {"value": "ek_with space"}, {"value": 42}, "not json"],
)
async def test_a_mint_without_a_usable_secret_fails_before_any_call(
    minted: object,
) -> None:
    """An answer that is not ``{"value": "ek_…"}`` is the provider's error, and ``/calls``
    is never tried with something that is not a secret."""
    calls: list[str] = []

    async def client_secrets(request: web.Request) -> web.Response:
        if isinstance(minted, str):
            return web.Response(text=minted)
        return web.json_response(minted)

    async def create_call(request: web.Request) -> web.Response:
        calls.append(request.headers.get("Authorization", ""))
        return web.Response(status=500)

    app = web.Application()
    app.router.add_post("/openai/v1/realtime/client_secrets", client_secrets)
    app.router.add_post("/openai/v1/realtime/calls", create_call)
    async with serving(app) as root, aiohttp.ClientSession() as http:
        provider = AzureOpenAIProvider(root + "/openai/v1", ApiKeyCredential(PROVIDER_KEY), http)
        with pytest.raises(ProviderError) as raised:
            await provider.create_call("v=0\r\n", SESSION)
    assert (raised.value.code, raised.value.operation) == ("invalid_client_secret", "client_secret")
    assert calls == []
