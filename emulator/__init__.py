"""Local emulator of the OpenAI Realtime API (GA) over WebRTC with sideband WebSockets.

See ``emulator/README.md`` for what is emulated and every [inferred] choice.
"""

from ._keys import CALL_REGISTRY, CLIENT_SECRETS, FAULTS
from ._recorder import ReceivedClientEvent
from .app import create_app
from .call_registry import CallRegistry
from .calls import Call
from .faults import CallErrorFault, FaultConfig, Faults, SessionUpdateErrorFault
from .secrets import ClientSecret, ClientSecretStore
from .settings import EmulatorSettings

__all__ = [
    "CALL_REGISTRY",
    "CLIENT_SECRETS",
    "Call",
    "CallErrorFault",
    "CallRegistry",
    "ClientSecret",
    "ClientSecretStore",
    "EmulatorSettings",
    "FAULTS",
    "FaultConfig",
    "Faults",
    "ReceivedClientEvent",
    "SessionUpdateErrorFault",
    "create_app",
]
