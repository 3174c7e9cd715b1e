"""Every setting, read once at start from ``BROKER_*`` variables (or ``.env``), typed, checked.

``model`` declares the settings; ``sources`` reads the variables; ``rules`` holds the checks
and words each refusal (naming the variable, never its value); ``key_file`` keeps the
development signing key; ``secret`` is the type keys travel in; ``doc`` writes the README's
settings table from ``model``.
"""

from broker.settings.model import DEFAULT_DATABASE_URL, DEFAULT_TOOLS_CONFIG, Settings
from broker.settings.rules import SettingsError
from broker.settings.secret import Secret

__all__ = ["DEFAULT_DATABASE_URL", "DEFAULT_TOOLS_CONFIG", "Secret", "Settings", "SettingsError"]
