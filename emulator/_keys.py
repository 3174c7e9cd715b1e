"""Typed application keys: every piece of app state lives behind one of these."""

from __future__ import annotations

from aiohttp import web

from .call_registry import CallRegistry
from .faults import Faults
from .secrets import ClientSecretStore
from .settings import EmulatorSettings

SETTINGS = web.AppKey("emulator_settings", EmulatorSettings)
CALL_REGISTRY = web.AppKey("emulator_call_registry", CallRegistry)
FAULTS = web.AppKey("emulator_faults", Faults)
CLIENT_SECRETS = web.AppKey("emulator_client_secrets", ClientSecretStore)
