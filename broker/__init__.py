"""The control plane: sessions, the SDP proxy, tool policy and execution, the HTTP API."""

from broker.app import create_app
from broker.auth.principals import ApiPrincipal, BrowserPrincipal, Scope
from broker.errors import BrokerError
from broker.settings import Secret, Settings, SettingsError

__all__ = [
    "ApiPrincipal",
    "BrokerError",
    "BrowserPrincipal",
    "Scope",
    "Secret",
    "Settings",
    "SettingsError",
    "create_app",
]
