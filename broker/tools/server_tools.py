"""A trusted session's own tools: run by its backend, decided by the broker like any other.

A trusted server session (:mod:`broker.session.trusted`) declares ``server_tools``. Their calls
go through the same pipeline as the registry's (:mod:`broker.tools.dispatch`: recorded once,
the allowlist, the schema, the kill switch, a breaker, the budget, audited), and only their
executor differs: it hands the call to the session's backend over its WebSocket
(:class:`broker.call.trusted_relay.TrustedRelay`). :class:`SessionTools` is the registry the
dispatcher decides such a session's calls with: the broker's tools plus the session's own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from broker.tools.breaker import CircuitBreakers
from broker.tools.executors import Executor
from broker.tools.registry import ToolRegistry, ToolSpec, parameters_validator

MAX_SERVER_TOOLS: Final = 32
MAX_SERVER_TOOL_TIMEOUT: Final = 300.0


class SessionTools(ToolRegistry):
    """The broker's registry with one session's server tools over it.

    Attributes:
        own: the server tools' names; the dispatcher adds them to the session's allowlist
            (the row's ``tools`` name registry tools only).
        breakers: the server tools' circuit breakers, the session's own: one backend's
            failures must not pause a same-named tool of another service's sessions.
    """

    def __init__(self, base: ToolRegistry, own: Mapping[str, ToolSpec]) -> None:
        super().__init__({**base, **own})
        self.own = frozenset(own)
        self.breakers = CircuitBreakers()


def server_tool_specs(
    definitions: Sequence[Mapping[str, Any]], executor: Executor, default_timeout: float
) -> dict[str, ToolSpec]:
    """The session's stored ``server_tools`` as tool specs run by ``executor``.

    The definitions were checked at creation (:class:`broker.session.trusted.ServerTool`).
    """
    specs: dict[str, ToolSpec] = {}
    for definition in definitions:
        name = str(definition["name"])
        parameters = definition.get("parameters") or {"type": "object", "properties": {}}
        timeout = definition.get("timeout")
        specs[name] = ToolSpec(
            name=name,
            description=str(definition.get("description") or ""),
            parameters=parameters,
            timeout=float(timeout) if timeout is not None else default_timeout,
            executor=executor,
            validator=parameters_validator(f"server tool {name!r}", parameters),
        )
    return specs
