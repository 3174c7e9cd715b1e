"""Local emulator of the OpenAI Realtime API (GA) over WebRTC with sideband WebSockets.

See ``emulator/README.md`` for what is emulated and every [inferred] choice.
"""

from ._keys import CALL_REGISTRY
from .app import create_app
from .calls import Call, CallRegistry, ReceivedClientEvent
from .settings import EmulatorSettings

__all__ = [
    "CALL_REGISTRY",
    "Call",
    "CallRegistry",
    "EmulatorSettings",
    "ReceivedClientEvent",
    "create_app",
]
