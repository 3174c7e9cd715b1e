"""Where settings are read from: variables (the environment's, or a test's) over a ``.env``.

pydantic-settings' environment source does the reading (names, the ``BROKER_`` prefix, the
aliases); it is handed a mapping instead of ``os.environ`` so that tests and the CLI share one
path and a test never sees the shell's variables.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, Final

from dotenv import dotenv_values
from pydantic import AliasChoices
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource

ENV_PREFIX: Final = "BROKER_"
ENV_FILE: Final = Path(".env")
"""Read from the working directory when settings come from the process environment."""


def variables(name: str, field: FieldInfo) -> tuple[str, ...]:
    """The variables field ``name`` is read from, the preferred first."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    if isinstance(alias, str):
        return (alias,)
    return (ENV_PREFIX + name.upper(),)


def read(
    settings_cls: type[BaseSettings],
    env: Mapping[str, str],
    env_file: Path | None,
    ignore: Collection[str] = (),
) -> dict[str, Any]:
    """The fields ``env`` sets, with ``env_file``'s variables where ``env`` has none.

    Variables named in ``ignore`` (any case) are left out, wherever they are set.
    """
    # An empty variable is an unset one (``BROKER_PORT=`` in a compose file), so a .env value
    # still applies under it.
    given = {name: value for name, value in env.items() if value != ""}
    merged = _dotenv(env_file) | given if env_file is not None else given
    ignored = {name.lower() for name in ignore}
    kept = {name: value for name, value in merged.items() if name.lower() not in ignored}
    return _Variables(settings_cls, kept)()


class _Variables(EnvSettingsSource):
    """The environment source, reading a given mapping instead of ``os.environ``."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Names are matched case-insensitively (pydantic-settings' default), hence lowered.
        return {name.lower(): value for name, value in self._env.items()}


def _dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    return {name: value for name, value in dotenv_values(path).items() if value}
