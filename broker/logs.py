"""Logging setup, with the one filter that keeps secrets out of every log line."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Final

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


def configure_logging(level: str, secrets: Iterable[Secret | None]) -> None:
    """Readable console logs for ``broker serve`` (the handler, not each logger, filters)."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    handler.addFilter(SecretRedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # aioice/aiortc log every candidate pair at INFO; useful only when debugging ICE.
    for noisy in ("aioice", "aiortc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
