"""``Secret``: a string that never shows itself, for keys in settings and tool configs."""

from __future__ import annotations

import secrets
from typing import Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import CoreSchema, core_schema


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or a traceback's locals."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value: only for the one place that must send or compare it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and secrets.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        # A settings field typed ``Secret`` takes the variable's text and wraps it at once, so
        # no later validation step (or its error) holds the bare string.
        return core_schema.no_info_before_validator_function(
            _wrap, core_schema.is_instance_schema(cls)
        )


def _wrap(value: Any) -> Any:
    return Secret(value) if isinstance(value, str) else value
