"""Per-tool field redaction: a keyed hash where a value would show, a sealed copy where it must run.

A tool's config may name fields to redact (``redact = ["card_number"]``). Wherever the
broker stores or shows that tool's arguments or output (the audit trail, the ``tool_calls``
row, the event log, the API), each such field's value becomes::

    {"redacted": "hmac-sha256:<64 hex>"}

an HMAC of the value's canonical JSON under the broker's redaction key: a reviewer can match
two values ("the same card in both calls") without seeing either, and nobody without the key
can test guesses. The raw arguments, which a restarted broker needs to run or recover the
call, are kept **sealed** (AES-256-GCM under a key derived from the same secret, the call's
session and id as associated data) and only ever opened to run the tool.

The key comes from ``BROKER_REDACTION_KEY``, or, unset, is derived from the client-secret
signing key (every instance of a deployment shares that one already). Changing it breaks
matching across the change and the opening of calls sealed before it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from collections.abc import Collection
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.audit.canonical import canonical

__all__ = ["SEALED_PREFIX", "FieldRedactor", "SealError"]

SEALED_PREFIX: Final = "sealed:v1:"
HASH_PREFIX: Final = "hmac-sha256:"


class SealError(ValueError):
    """A sealed value that does not open under this key (another key, or altered)."""


def _derive(secret: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)


class FieldRedactor:
    """Keyed hashes and sealing under one secret (never shown: ``repr`` hides it)."""

    def __init__(self, secret: str) -> None:
        raw = secret.encode("utf-8")
        self._hash_key = _derive(raw, b"sideband-broker redaction hmac v1")
        self._seal = AESGCM(_derive(raw, b"sideband-broker redaction seal v1"))

    def __repr__(self) -> str:
        return "FieldRedactor(**********)"

    def keyed_hash(self, value: Any) -> str:
        try:
            data = canonical(value)
        except ValueError:
            data = repr(value).encode("utf-8", "replace")
        return HASH_PREFIX + hmac.new(self._hash_key, data, hashlib.sha256).hexdigest()

    def redact(self, value: Any, fields: Collection[str]) -> Any:
        """``value`` with every member named in ``fields`` replaced, at any depth."""
        if not fields:
            return value
        if isinstance(value, dict):
            return {
                key: (
                    {"redacted": self.keyed_hash(item)}
                    if key in fields
                    else self.redact(item, fields)
                )
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [self.redact(item, fields) for item in value]
        return value

    def redact_json_text(self, text: str, fields: Collection[str]) -> str:
        """A JSON document (a call's arguments, a tool's output) with its fields redacted.

        Text that is not JSON cannot be searched for the fields: it is replaced whole by its
        keyed hash, never kept (the model may stream half an object, or a tool answer text).
        """
        if not fields:
            return text
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            return json.dumps({"redacted": self.keyed_hash(text)})
        if not isinstance(parsed, dict | list):
            return text
        return json.dumps(self.redact(parsed, fields), separators=(",", ":"), ensure_ascii=False)

    def seal(self, text: str, context: str) -> str:
        """``text`` encrypted; ``context`` (e.g. the session and call id) must match to open."""
        nonce = os.urandom(12)
        sealed = self._seal.encrypt(nonce, text.encode("utf-8"), context.encode("utf-8"))
        return SEALED_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def unseal(self, value: str, context: str) -> str:
        """Raises SealError if ``value`` was not sealed with this key and ``context``."""
        if not value.startswith(SEALED_PREFIX):
            raise SealError("not a sealed value")
        try:
            blob = base64.urlsafe_b64decode(value[len(SEALED_PREFIX) :])
            return self._seal.decrypt(blob[:12], blob[12:], context.encode("utf-8")).decode()
        except (ValueError, InvalidTag) as exc:
            raise SealError("the sealed value does not open with this key") from exc
