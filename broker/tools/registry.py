"""The tool registry: what tools exist, their schemas, timeouts and executors, from TOML.

Format (``BROKER_CONFIG``)::

    [tools.lookup_order]
    description = "Look up an order by its id."
    timeout = 5.0                                  # seconds, default 10
    idempotent = false                             # safe to run twice? default false
    redact = ["card_number"]                       # never stored or shown in clear
    http = "https://tools.internal/lookup"         # or: python = "broker.tools.demo:lookup_order"
    secret_env = "LOOKUP_ORDER_SECRET"             # HTTP tools: the HMAC key's variable ...
    # secret = "..."                               # ... or inline (development only)
    # unsigned = true                              # ... or an explicit choice not to sign
    [tools.lookup_order.parameters]                # JSON Schema (2020-12) of the arguments
    type = "object"
    required = ["order_id"]
    properties.order_id = { type = "string" }

``redact = ["card_number", ...]`` names fields of the tool's arguments and output (at any
depth) that the broker never keeps or shows in clear: the ``tool_calls`` row, the API, the
event log and the audit trail hold a keyed hash (``{"redacted": "hmac-sha256:…"}``,
:mod:`broker.audit.redaction`) instead, so a reviewer can match values without seeing them.
The raw arguments (and output), which a restarted broker needs to run (or re-send) the call,
are stored sealed and opened only to run it; the tool itself always gets the raw arguments.

``approval = "required"`` holds every call for an operator's decision
(``POST /api/v1/approvals/{id}/approve|deny``) within ``approval_timeout`` seconds (default
300); the model is told at once that the call waits for approval. ``ack_after_ms`` (default
1500 for ``http_async`` tools, off for others) and ``ack_instructions``: a call still running
after that long makes the broker ask the model to tell the user it is working on it.

``dtmf = true`` (default false): on a phone call, the tool gets the keys the caller pressed so
far (``ToolContext.dtmf``; the ``X-DTMF-Digits`` header for HTTP tools;
:mod:`broker.tools.dtmf`). A tool that does not declare it never sees them: the keys may be
a PIN.

``http_async = "https://…"`` instead of ``http`` makes a long-running tool
(:mod:`broker.tools.async_executor`): the backend may answer ``200`` at once, or ``202`` with
a status URL (``Location`` or ``{"status_url": …}``) the broker polls every
``poll_interval`` seconds (default 0.5, within [0.05, 30]), or ``202`` and later POST the
output to the ``X-Callback-URL`` it was given (``/api/v1/tool-callbacks/{id}``, signed with
the tool's secret); all within ``timeout``. It signs (``secret``/``secret_env``/``unsigned``)
as an ``http`` tool does.

``idempotent = true`` declares that running a call twice does no more than running it once
(a lookup, or a backend that dedupes on ``Idempotency-Key``). Only such a tool may be run
again after a broker crash interrupted it; a non-idempotent one that was running then is
never re-run. HTTP tools get the ``Idempotency-Key`` header either way.

Every problem is reported at load, before the broker serves: an unknown key (a typo must not
silently drop a setting), an HTTP tool with no signing decision, a missing or short secret, a
schema that is invalid, names another draft, or has a ``$ref`` that leaves the schema.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import httpx
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError

from broker.settings import Secret
from broker.tools.async_executor import (
    DEFAULT_POLL_INTERVAL,
    MAX_POLL_INTERVAL,
    MIN_POLL_INTERVAL,
    CallbackStore,
    HttpAsyncExecutor,
)
from broker.tools.executors import Executor, HttpExecutor, PythonExecutor, PythonTool
from broker.tools.signing import MIN_SECRET_CHARS
from broker.webhooks.signature import MIN_KEY_BYTES, SECRET_PREFIX, signing_key

logger = logging.getLogger(__name__)

_NAME_RE: Final = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ENV_NAME_RE: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_TIMEOUT: Final = 10.0
MAX_TIMEOUT: Final = 300.0
SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
_KEYS: Final = frozenset(
    {
        "description",
        "parameters",
        "timeout",
        "idempotent",
        "python",
        "http",
        "http_async",
        "poll_interval",
        "secret",
        "secret_env",
        "unsigned",
        "redact",
        "approval",
        "approval_timeout",
        "ack_after_ms",
        "ack_instructions",
        "dtmf",
    }
)
DEFAULT_APPROVAL_TIMEOUT: Final = 300.0
"""Seconds an approval-gated call waits for an operator before it is denied as expired."""
MAX_APPROVAL_TIMEOUT: Final = 3600.0
DEFAULT_ACK_AFTER_MS: Final = 1500
"""Milliseconds a long-running (``http-async``) call runs before the model is asked to tell
the user it is working on it."""
DEFAULT_ACK_INSTRUCTIONS: Final = (
    "In one short sentence, tell the user you are working on their request and will have the"
    " answer in a moment. Do not call any tool and do not guess the answer."
)
CHECKED_FORMATS: Final = ("date", "email", "idn-email", "ipv4", "ipv6", "uuid")
"""``format`` values that are enforced. jsonschema checks some formats only when optional
packages happen to be installed; this fixed list needs none, so a schema means the same on
every install. Any other ``format`` is an annotation, as JSON Schema 2020-12 specifies."""
FORMAT_CHECKER: Final = FormatChecker(CHECKED_FORMATS)


class ToolConfigError(ValueError):
    """The tools file is invalid; the message names the file and the tool, never a secret."""


@dataclass(frozen=True)
class ToolSpec:
    """One tool the broker can run.

    Attributes:
        parameters: JSON Schema of the arguments object (sent to the provider as-is).
        validator: compiled from ``parameters`` once, at load (Draft 2020-12, with
            :data:`CHECKED_FORMATS` enforced).
        idempotent: running a call again does no harm (see the module docstring); only
            then may crash recovery re-run a call that was interrupted.
        redact: fields of the arguments and output (any depth) never stored or shown in
            clear (see the module docstring).
    """

    name: str
    description: str
    parameters: Mapping[str, Any]
    timeout: float
    executor: Executor
    validator: Draft202012Validator = field(repr=False, compare=False)
    idempotent: bool = False
    redact: frozenset[str] = frozenset()
    approval: bool = False
    """``approval = "required"``: a call waits for an operator (the model gets a pending
    output at once; the decision is injected when it comes)."""
    approval_timeout: float = DEFAULT_APPROVAL_TIMEOUT
    ack_after_ms: int | None = None
    """After this long still running, the model is asked to say it is working on it
    (``None``: never; ``http-async`` tools default to :data:`DEFAULT_ACK_AFTER_MS`)."""
    ack_instructions: str = DEFAULT_ACK_INSTRUCTIONS
    dtmf: bool = False
    """``dtmf = true``: a phone call's keys so far go with each call (see the module docstring)."""

    def provider_definition(self) -> dict[str, Any]:
        """The ``tools[]`` entry of a realtime session config."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
        }


class ToolRegistry(Mapping[str, ToolSpec]):
    """Tools by name; immutable after load."""

    def __init__(self, tools: Mapping[str, ToolSpec]) -> None:
        self._tools = dict(tools)

    def __getitem__(self, name: str) -> ToolSpec:
        return self._tools[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)


def load_registry(
    path: Path,
    http: httpx.AsyncClient,
    env: Mapping[str, str] | None = None,
    callbacks: CallbackStore | None = None,
    out_of_band_responses: bool = True,
) -> ToolRegistry:
    """Load and validate a tools file; every problem is reported before the broker starts.

    Args:
        path: the TOML file (``BROKER_CONFIG``).
        http: the client HTTP tools send with (owned by the caller).
        env: where ``secret_env`` names are looked up (default: the process environment).
        callbacks: where ``http_async`` tools' callbacks are kept (``None``: they offer none).
        out_of_band_responses: the provider's capability; without it no call is acknowledged
            (every ``ack_after_ms`` is off, logged once here).

    Raises:
        ToolConfigError: unreadable file, bad TOML, or an invalid tool entry.
    """
    env = os.environ if env is None else env
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ToolConfigError(f"{path}: cannot read tools config: {exc}") from exc
    tools = data.get("tools", {})
    if not isinstance(tools, dict):
        raise ToolConfigError(f"{path}: [tools] must be a table")
    specs = {name: _tool(path, name, entry, http, env, callbacks) for name, entry in tools.items()}
    acked = sorted(name for name, spec in specs.items() if spec.ack_after_ms is not None)
    if acked and not out_of_band_responses:
        # Not an error: the call still runs and is answered; the model just says nothing
        # while it does.
        logger.warning(
            "the provider lacks out_of_band_responses: tools are not acknowledged: %s",
            ", ".join(acked),
        )
        specs = {name: replace(spec, ack_after_ms=None) for name, spec in specs.items()}
    return ToolRegistry(specs)


def _tool(
    path: Path,
    name: str,
    entry: Any,
    http: httpx.AsyncClient,
    env: Mapping[str, str],
    callbacks: CallbackStore | None = None,
) -> ToolSpec:
    where = f"{path}: tool {name!r}"
    if not _NAME_RE.match(name):
        raise ToolConfigError(f"{where}: names are 1-64 of [a-zA-Z0-9_-]")
    if not isinstance(entry, dict):
        raise ToolConfigError(f"{where}: must be a table")
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ToolConfigError(f"{where}: unknown key(s): {', '.join(unknown)}")
    description = entry.get("description", "")
    parameters = entry.get("parameters", {"type": "object", "properties": {}})
    timeout = entry.get("timeout", DEFAULT_TIMEOUT)
    if not isinstance(description, str):
        raise ToolConfigError(f"{where}: description must be a string")
    if not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT:
        raise ToolConfigError(f"{where}: timeout must be in (0, {MAX_TIMEOUT:g}] seconds")
    idempotent = entry.get("idempotent", False)
    if not isinstance(idempotent, bool):
        raise ToolConfigError(f"{where}: idempotent must be true or false")
    redact = entry.get("redact", [])
    if not isinstance(redact, list) or not all(isinstance(x, str) and x for x in redact):
        raise ToolConfigError(f"{where}: redact must be a list of non-empty field names")
    validator = _validator(where, parameters)
    approval = entry.get("approval", "none")
    if approval not in ("none", "required"):
        raise ToolConfigError(f"{where}: approval must be 'none' or 'required'")
    approval_timeout = entry.get("approval_timeout", DEFAULT_APPROVAL_TIMEOUT)
    if (
        not isinstance(approval_timeout, int | float)
        or isinstance(approval_timeout, bool)
        or not 0 < approval_timeout <= MAX_APPROVAL_TIMEOUT
    ):
        raise ToolConfigError(
            f"{where}: approval_timeout must be in (0, {MAX_APPROVAL_TIMEOUT:g}] seconds"
        )
    ack_after_ms = entry.get("ack_after_ms", _default_ack_after_ms(entry))
    if ack_after_ms is not None and (
        not isinstance(ack_after_ms, int) or isinstance(ack_after_ms, bool) or ack_after_ms < 0
    ):
        raise ToolConfigError(f"{where}: ack_after_ms must be a whole number of milliseconds")
    ack_instructions = entry.get("ack_instructions", DEFAULT_ACK_INSTRUCTIONS)
    if not isinstance(ack_instructions, str) or not ack_instructions.strip():
        raise ToolConfigError(f"{where}: ack_instructions must be a non-empty string")
    dtmf = entry.get("dtmf", False)
    if not isinstance(dtmf, bool):
        raise ToolConfigError(f"{where}: dtmf must be true or false")
    return ToolSpec(
        name=name,
        description=description,
        parameters=parameters,
        timeout=float(timeout),
        executor=_executor(where, entry, http, float(timeout), env, callbacks),
        validator=validator,
        idempotent=idempotent,
        redact=frozenset(redact),
        approval=approval == "required",
        approval_timeout=float(approval_timeout),
        ack_after_ms=ack_after_ms,
        ack_instructions=ack_instructions,
        dtmf=dtmf,
    )


def _default_ack_after_ms(entry: dict[str, Any]) -> int | None:
    """Long-running tools acknowledge by default; others only when they ask to."""
    return DEFAULT_ACK_AFTER_MS if "http_async" in entry else None


def _validator(where: str, parameters: Any) -> Draft202012Validator:
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise ToolConfigError(f"{where}: parameters must be a JSON Schema with type 'object'")
    dialect = parameters.get("$schema", SCHEMA_DIALECT)
    if not isinstance(dialect, str) or dialect.rstrip("#") != SCHEMA_DIALECT:
        # The validator is 2020-12 whatever the schema says; another draft would be
        # silently read with the wrong rules.
        raise ToolConfigError(f"{where}: parameters must be JSON Schema 2020-12 ($schema)")
    try:
        # The metaschema check keeps its full format checker: it is what refuses a
        # ``pattern`` that is not a valid regex, which would otherwise fail on every call.
        Draft202012Validator.check_schema(parameters)
    except SchemaError as exc:
        raise ToolConfigError(f"{where}: invalid parameters schema: {exc.message}") from exc
    for ref in _refs(parameters):
        if not ref.startswith("#"):
            # Nothing is fetched at run time: a remote $ref would fail on every call.
            raise ToolConfigError(f"{where}: parameters may only $ref inside themselves")
    return Draft202012Validator(parameters, format_checker=FORMAT_CHECKER)


def _refs(schema: Any) -> Iterator[str]:
    """Every ``$ref``/``$dynamicRef`` string anywhere in the schema."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from _refs(value)


def _executor(
    where: str,
    entry: dict[str, Any],
    http: httpx.AsyncClient,
    timeout: float,
    env: Mapping[str, str],
    callbacks: CallbackStore | None = None,
) -> Executor:
    target, url, async_url = entry.get("python"), entry.get("http"), entry.get("http_async")
    if sum(value is not None for value in (target, url, async_url)) != 1:
        raise ToolConfigError(f"{where}: set exactly one of 'python', 'http' or 'http_async'")
    if "poll_interval" in entry and async_url is None:
        raise ToolConfigError(f"{where}: poll_interval is for http_async tools")
    if async_url is not None:
        if not isinstance(async_url, str) or not async_url.startswith(("http://", "https://")):
            raise ToolConfigError(f"{where}: http_async must be an http(s) URL")
        poll = entry.get("poll_interval", DEFAULT_POLL_INTERVAL)
        if (
            not isinstance(poll, int | float)
            or isinstance(poll, bool)
            or not MIN_POLL_INTERVAL <= poll <= MAX_POLL_INTERVAL
        ):
            raise ToolConfigError(
                f"{where}: poll_interval must be in [{MIN_POLL_INTERVAL:g},"
                f" {MAX_POLL_INTERVAL:g}] seconds"
            )
        secret = _secret(where, entry, env)
        return HttpAsyncExecutor(async_url, http, secret, timeout, float(poll), callbacks)
    if url is not None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ToolConfigError(f"{where}: http must be an http(s) URL")
        return HttpExecutor(url, http, _secret(where, entry, env), timeout)
    if any(key in entry for key in ("secret", "secret_env", "unsigned")):
        raise ToolConfigError(
            f"{where}: secret, secret_env and unsigned are for http tools (http, http_async)"
        )
    if not isinstance(target, str) or ":" not in target:
        raise ToolConfigError(f"{where}: python must be 'module:function'")
    module_name, _, attr = target.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ToolConfigError(f"{where}: cannot import {target}: {exc}") from exc
    if not callable(func) or not inspect.iscoroutinefunction(func):
        raise ToolConfigError(f"{where}: {target} must be an async function")
    tool: PythonTool = func
    return PythonExecutor(tool)


def _secret(where: str, entry: dict[str, Any], env: Mapping[str, str]) -> Secret | None:
    """The HTTP tool's signing key, or ``None`` when ``unsigned = true`` says so explicitly.

    Messages name the key or the variable, never a value.
    """
    # Wrapped at once so the value never sits in a plain local that a traceback could show.
    inline = Secret(entry["secret"]) if isinstance(entry.get("secret"), str) else None
    if "secret" in entry and inline is None:
        raise ToolConfigError(f"{where}: secret must be a string")
    variable, unsigned = entry.get("secret_env"), entry.get("unsigned", False)
    if not isinstance(unsigned, bool):
        raise ToolConfigError(f"{where}: unsigned must be true or false")
    chosen = sum((inline is not None, variable is not None, unsigned))
    if chosen != 1:
        raise ToolConfigError(
            f"{where}: http(_async) tools set exactly one of secret_env, secret, or unsigned = true"
        )
    if unsigned:
        return None
    if variable is not None:
        if not isinstance(variable, str) or not _ENV_NAME_RE.match(variable):
            raise ToolConfigError(f"{where}: secret_env must name an environment variable")
        value = env.get(variable)
        if not value:
            raise ToolConfigError(f"{where}: environment variable {variable} is not set")
        inline = Secret(value)
    assert inline is not None
    if len(inline.reveal()) < MIN_SECRET_CHARS:
        raise ToolConfigError(f"{where}: the secret must be at least {MIN_SECRET_CHARS} characters")
    if inline.reveal().startswith(SECRET_PREFIX):
        # The Standard Webhooks key of a whsec_ secret is its base64: refused here, at start,
        # rather than failing every call (or signing with a key the backend cannot derive).
        try:
            key = signing_key(inline.reveal())
        except ValueError:
            raise ToolConfigError(f"{where}: a whsec_ secret must be base64 after it") from None
        if len(key) < MIN_KEY_BYTES:
            raise ToolConfigError(
                f"{where}: a whsec_ secret must hold at least {MIN_KEY_BYTES} bytes"
            )
    return inline


def parameters_validator(where: str, parameters: Any) -> Draft202012Validator:
    """The validator of a tool's ``parameters``, checked as a tools file's are.

    For tools defined elsewhere than the tools file (a trusted session's server tools).

    Raises:
        ToolConfigError: as at load (not an object schema, another draft, invalid, a
            ``$ref`` that leaves the schema).
    """
    return _validator(where, parameters)
