"""Typed application keys: every piece of app state lives behind one of these."""

from __future__ import annotations

from aiohttp import web

from .calls import CallRegistry
from .settings import EmulatorSettings

SETTINGS = web.AppKey("emulator_settings", EmulatorSettings)
CALL_REGISTRY = web.AppKey("emulator_call_registry", CallRegistry)
