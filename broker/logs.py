"""Logging setup: JSON lines or console text, secrets redacted, call context attached.

Every record gets ``session_id`` and ``call_id`` from the context it was logged in: a
supervised call's task (and every task it starts, tools included) binds both, and a request
to a session's route binds its ``session_id``. ``broker serve`` writes one JSON object per
line (for log pipelines); ``broker serve --dev`` writes readable text.
"""

from __future__ import annotations

import contextvars
import enum
import json
import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, Final

from broker.settings import Secret

REDACTED = "[REDACTED]"
_FORMATTER = logging.Formatter()
# Secrets minted at run time cannot be listed up front, so their shapes are redacted too:
# client secrets (JWTs: three base64url parts, the first a JSON header), API keys (``bk_``)
# and the provider's ephemeral keys (``ek_``).
_SHAPES: Final = re.compile(
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"
    r"|\bbk_[A-Za-z0-9_-]{16,}"
    r"|\bek_[A-Za-z0-9_-]{16,}"
)


class SecretRedactingFilter(logging.Filter):
    """Replaces known secrets, and anything shaped like a token or key, in every record.

    A last line of defence: code should never log a secret in the first place.
    """

    def __init__(self, secrets: Iterable[Secret | None]) -> None:
        super().__init__()
        self._values = [s.reveal() for s in secrets if s is not None and len(s.reveal()) >= 8]

    def _redact(self, text: str) -> str:
        for value in self._values:
            text = text.replace(value, REDACTED)
        return _SHAPES.sub(REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        # Formatters reuse a cached exc_text (another handler may have set it already), so
        # the cached traceback text is what gets redacted.
        text = record.exc_text
        if not text and record.exc_info:
            text = _FORMATTER.formatException(record.exc_info)
        if text:
            record.exc_text = self._redact(text)
        return True


_SESSION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "broker_log_session_id", default=None
)
_CALL_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "broker_log_call_id", default=None
)
CONTEXT_FIELDS: Final = ("session_id", "call_id")


def bind_call(session_id: str, call_id: str | None = None) -> None:
    """Tag every later record of the current task, and of tasks it starts, with the call.

    For a task that belongs to one call for its whole life (a supervised sideband); a
    request handler uses :func:`bound` so a kept-alive connection's next request is clean.
    """
    _SESSION_ID.set(session_id)
    _CALL_ID.set(call_id)


@contextmanager
def bound(session_id: str | None) -> Iterator[None]:
    """Tag records logged inside the block with ``session_id``."""
    token = _SESSION_ID.set(session_id)
    try:
        yield
    finally:
        _SESSION_ID.reset(token)


class ContextFilter(logging.Filter):
    """Adds ``session_id`` / ``call_id`` from the logging context (``extra`` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "session_id", None) is None:
            record.session_id = _SESSION_ID.get()
        if getattr(record, "call_id", None) is None:
            record.call_id = _CALL_ID.get()
        return True


_JSON_UNSAFE: Final = re.compile("[\x7f-\x9f\u2028\u2029]")


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line.

    Fields: ``ts`` (UTC, ISO 8601, milliseconds), ``level``, ``logger``, ``message``,
    ``session_id`` and ``call_id`` when known, ``exc`` (the traceback) when there is one.
    The message is the already-redacted text (the redacting filter runs first).
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        # json escapes C0 controls but, with ensure_ascii off, leaves DEL, the C1 controls (NEL
        # among them) and U+2028/U+2029 raw: line breaks to str.splitlines and many log
        # shippers, so a page-chosen string could still split a record. They can only occur
        # inside JSON strings, where a \u escape means the same character.
        return _JSON_UNSAFE.sub(_json_escape, json.dumps(line, ensure_ascii=False, default=str))


_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_control(text: str) -> str:
    r"""Control characters as visible escapes (``\\r``, ``\\x1b``): one record, one line.

    Messages carry text a page chose (a tool name from a URL, a call id): a CR/LF in it
    would forge a log line, an ANSI escape would rewrite the terminal.
    """
    return _CONTROL.sub(lambda m: json.dumps(m.group())[1:-1], text)


_CONTINUATION: Final = "  "
"""Before every line of a console record after its first: only a record starts a line."""


class ConsoleFormatter(logging.Formatter):
    """``12:00:01 INFO    broker.call.supervisor: message [session_id=… call_id=…]``.

    The message (and context values) are escaped (:func:`escape_control`); only a
    traceback keeps its line breaks, each of its lines escaped and indented: an exception's
    message may quote a page's text, and no line of it may pass for a record of its own.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = escape_control(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = [
            f"{name}={escape_control(str(value))}"
            for name in CONTEXT_FIELDS
            if (value := getattr(record, name, None)) is not None
            and f"{name}=" not in record.getMessage()  # already in the message
        ]
        first, newline, rest = text.partition("\n")
        if rest:
            rest = "\n".join(_CONTINUATION + escape_control(line) for line in rest.split("\n"))
        if context:
            first = f"{first} [{' '.join(context)}]"
        return f"{first}{newline}{rest}"


class LogFormat(enum.StrEnum):
    JSON = "json"
    CONSOLE = "console"


def configure_logging(
    level: str, secrets: Iterable[Secret | None], fmt: LogFormat = LogFormat.CONSOLE
) -> None:
    """Route every logger to stderr in ``fmt`` (the handler, not each logger, filters)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt is LogFormat.JSON else ConsoleFormatter())
    handler.addFilter(SecretRedactingFilter(secrets))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aioice/aiortc log every candidate pair at INFO; useful only when debugging ICE.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # aiosqlite logs every statement with its parameters at DEBUG, and SQLAlchemy's engine
    # loggers echo statements: parameters hold tool arguments and outputs, transcripts and key
    # hashes, so these stay quiet at every level (the engine also hides parameters).
    for chatty in ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
