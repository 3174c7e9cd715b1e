"""``SettingsError``; the checks no field type expresses; each setting's rule put in words.

One phrasing serves the error that refuses a value and the README's settings table, so the
two cannot disagree. A refusal names the variable and its rule, never the value: a mistyped
key would otherwise land in a terminal, a log pipeline or a CI transcript.
"""

from __future__ import annotations

import enum
import re
import shlex
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from broker.settings.sources import variables
from broker.webhooks.signature import SECRET_PREFIX, signing_key

MIN_WEBHOOK_SECRET_CHARS: Final = 32
MIN_WEBHOOK_KEY_BYTES: Final = 24
"""A ``whsec_`` secret's key, base64-decoded (the Standard Webhooks minimum)."""

Quote = Callable[[str], str]


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable, never its value."""


# --- checks: each raises ValueError saying what is wrong, for the variable's name to lead ----


def at_least(value: str, chars: int) -> None:
    if len(value) < chars:
        raise ValueError(f"must be at least {chars} characters")


def exact_origins(value: str | Iterable[Any]) -> frozenset[str]:
    """Comma-separated (or a set of) exact origins; no wildcard: ``*`` allows anyone."""
    raw = value.split(",") if isinstance(value, str) else value
    return frozenset(_origin(item) for item in raw if not isinstance(item, str) or item.strip())


def _origin(raw: Any) -> str:
    if not isinstance(raw, str):
        raise ValueError("must list origins as text")
    origin = raw.strip().lower()
    parsed = urlsplit(origin)
    try:
        parsed.port  # noqa: B018 - a malformed port raises here
    except ValueError:
        raise ValueError("has a malformed port") from None
    if (
        parsed.scheme not in ("http", "https")
        or not parsed.hostname
        or "*" in origin
        or parsed.username is not None
        or f"{parsed.scheme}://{parsed.netloc}" != origin
    ):
        raise ValueError(
            "must list exact origins like https://app.example.com "
            "(scheme, host and optional port; no path, no wildcard)"
        )
    return origin


def public_url(url: str) -> str:
    """The broker's absolute public base URL, without a trailing slash.

    Pages on other origins post to the URLs built from it, so it must be absolute; a path
    (a reverse proxy's prefix) is allowed, a query, fragment or credentials are not.
    """
    parsed = urlsplit(url.strip())
    try:
        parsed.port  # noqa: B018 - a malformed port raises here
    except ValueError:
        raise ValueError("has a malformed port") from None
    if (
        parsed.scheme not in ("http", "https")
        or not parsed.hostname
        or parsed.username is not None
        or parsed.query
        or parsed.fragment
        or "?" in url
        or "#" in url
    ):
        raise ValueError(
            "must be an absolute http:// or https:// URL like https://broker.example.com"
            " (an optional path; no query, fragment or credentials)"
        )
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/')}"


def command_line(value: str) -> None:
    """A command line split like a shell would (it runs without one), naming a program."""
    try:
        argv = shlex.split(value)
    except ValueError:
        raise ValueError("is not a valid command line (unbalanced quotes)") from None
    if not argv:
        raise ValueError("names no program")


AZURE_API_PATH: Final = "/openai/v1"


def azure_base_url(url: str) -> str:
    """An Azure resource endpoint as the API base: ``https://{resource}…`` + ``/openai/v1``."""
    parsed = urlsplit(url.strip())
    try:
        parsed.port  # noqa: B018 - a malformed port raises here
    except ValueError:
        raise ValueError("has a malformed port") from None
    path = parsed.path.rstrip("/")
    if (
        parsed.scheme not in ("http", "https")
        or not parsed.hostname
        or parsed.username is not None
        or parsed.query
        or parsed.fragment
        or path not in ("", AZURE_API_PATH)
    ):
        raise ValueError(
            "must be the resource endpoint https://{resource}.openai.azure.com (optionally"
            f" ending in {AZURE_API_PATH}), with no credentials or query"
        )
    return f"{parsed.scheme}://{parsed.netloc}{AZURE_API_PATH}"


def webhook_url(url: str) -> None:
    parsed = urlsplit(url)
    try:
        parsed.port  # noqa: B018 - a malformed port raises here
    except ValueError:
        raise ValueError("has a malformed port") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError("must be an http:// or https:// URL")
    if parsed.username is not None or parsed.password is not None:
        # The URL is logged (its host); credentials belong in the signature's secret.
        raise ValueError("must not carry credentials")


MODEL_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,99}")
"""A provider's model (or Azure deployment) name, sent to the provider as is."""


def model_name(value: str) -> None:
    if MODEL_NAME.fullmatch(value) is None:
        raise ValueError("must be a model name: up to 100 letters, digits and . _ : - (or off)")


def webhook_secret(secret: str) -> None:
    if not secret.startswith(SECRET_PREFIX):
        at_least(secret, MIN_WEBHOOK_SECRET_CHARS)
        return
    try:
        key = signing_key(secret)
    except ValueError:
        raise ValueError("is whsec_ but not base64 after it") from None
    if len(key) < MIN_WEBHOOK_KEY_BYTES:
        raise ValueError(f"(whsec_) must hold at least {MIN_WEBHOOK_KEY_BYTES} bytes")


# --- refusals ---------------------------------------------------------------------------------


def refused(exc: ValidationError, fields: Mapping[str, FieldInfo]) -> SettingsError:
    """One message per refused value, naming variables only (never ``exc``'s inputs)."""
    by_key = {
        key: name for name, field in fields.items() for key in (name, *variables(name, field))
    }
    messages = []
    for error in exc.errors(include_url=False, include_input=False):
        key = str(error["loc"][0]) if error["loc"] else ""
        name = by_key.get(key)
        field = fields[name] if name is not None else None
        variable = " / ".join(variables(name, fields[name])) if name is not None else key
        messages.append(_refusal(variable, error, field))
    return SettingsError("; ".join(dict.fromkeys(messages)))


def _refusal(variable: str, error: ErrorDetails, field: FieldInfo | None) -> str:
    kind = error["type"]
    if kind == "value_error":
        cause = error.get("ctx", {}).get("error")
        # A check that names its variables itself (a pair that goes together, the key file)
        # says it in full; a field's own check says only what is wrong with it.
        return str(cause) if isinstance(cause, SettingsError) else f"{variable} {cause}"
    if kind == "missing":
        return f"{variable} is required"
    if kind == "extra_forbidden":
        return f"{variable} is not a setting"
    if kind.startswith("int_"):
        return f"{variable} must be an integer"
    if kind.startswith("float_"):
        return f"{variable} must be a number"
    if kind == "finite_number":
        return f"{variable} must be a finite number"
    rule = allowed(field) if field is not None else None
    return f"{variable} must be {rule}" if rule else f"{variable} is not valid"


# --- rules in words ---------------------------------------------------------------------------


def _plain(text: str) -> str:
    return text


def allowed(field: FieldInfo, quote: Quote = _plain) -> str | None:
    """What ``field`` accepts ("between 30 and 3600", "json or console"); ``None``: any text."""
    kind = _value_type(field.annotation)
    if kind is bool:
        yes, no = ("1", "true", "yes"), ("0", "false", "no")
        return f"{'/'.join(map(quote, yes))} or {'/'.join(map(quote, no))}"
    choices = _choices(kind)
    if choices:
        return _one_of([quote(choice) for choice in choices])
    if kind in (int, float):
        return _range(field, kind)
    return None


def _range(field: FieldInfo, kind: type) -> str | None:
    bounds: dict[str, Any] = {}
    for rule in field.metadata:
        for name in ("gt", "ge", "lt", "le"):
            if getattr(rule, name, None) is not None:
                bounds[name] = getattr(rule, name)

    def number(value: Any) -> str:
        return str(value) if kind is int else f"{value:g}"

    if "ge" in bounds and "le" in bounds:
        return f"between {number(bounds['ge'])} and {number(bounds['le'])}"
    if bounds.get("gt") == 0:
        return f"positive, at most {number(bounds['le'])}" if "le" in bounds else "positive"
    if "le" in bounds:
        return f"at most {number(bounds['le'])}"
    return None


def _value_type(annotation: Any) -> Any:
    """The annotation without ``| None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        present = [arg for arg in get_args(annotation) if arg is not type(None)]
        return present[0] if len(present) == 1 else annotation
    return annotation


def _choices(kind: Any) -> list[str]:
    if get_origin(kind) is Literal:
        return [str(arg) for arg in get_args(kind)]
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return [str(member.value) for member in kind]
    return []


def _one_of(choices: list[str]) -> str:
    return " or ".join(choices) if len(choices) <= 2 else "one of " + ", ".join(choices)
