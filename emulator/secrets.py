"""Ephemeral client secrets (``ek_…``) issued by ``POST /v1/realtime/client_secrets`` (§1.2).

A secret carries a session template and an expiry. It may start any number of calls until it
expires; expiry limits starting calls, not how long they last. Secrets are stored under
their SHA-256 digest, so looking one up never compares secret text and the store never
holds a value that could be logged.
"""

from __future__ import annotations

import copy
import hashlib
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ._ids import new_session_id
from ._session import SESSION_LIFETIME_S, merge_session

EPHEMERAL_PREFIX: Final = "ek_"


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, eq=False)  # identity semantics: the session is a dict
class ClientSecret:
    """What an ``ek_…`` value stands for (the value itself is not kept).

    Attributes:
        session: the effective session returned when the secret was issued; a template,
            never mutated.
        expires_at: unix seconds; from then on the secret starts no call.
    """

    session: Mapping[str, Any] = field(repr=False)
    expires_at: int

    def session_for_call(self, posted: Mapping[str, Any] | None) -> dict[str, Any]:
        """The effective session of a call started with this secret.

        A deep copy of the template with a fresh ``id`` and ``expires_at`` (the call's own
        60-minute lifetime), then ``posted`` (an already validated ``session`` part) merged
        in the way ``session.update`` merges; like there, ``model`` stays the secret's.
        """
        session = copy.deepcopy(dict(self.session))
        session["id"] = new_session_id()
        session["expires_at"] = int(time.time()) + SESSION_LIFETIME_S
        if posted:
            merge_session(session, posted)
        return session


class ClientSecretStore:
    """The live client secrets of one app, keyed by the digest of their value.

    Args:
        clock: returns unix seconds; tests replace :attr:`clock` to move time forward.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._secrets: dict[bytes, ClientSecret] = {}

    def __len__(self) -> int:
        return len(self._secrets)

    def issue(self, session: Mapping[str, Any], ttl_s: int) -> tuple[str, ClientSecret]:
        """Create a secret for ``session`` valid ``ttl_s`` seconds from now.

        Returns:
            The ``ek_…`` value (shown once, to the caller) and the stored record.
        """
        self._purge()
        value = EPHEMERAL_PREFIX + secrets.token_hex(16)
        record = ClientSecret(
            session=copy.deepcopy(dict(session)), expires_at=int(self.clock()) + ttl_s
        )
        self._secrets[_digest(value)] = record
        return value, record

    def lookup(self, value: str) -> ClientSecret | None:
        """The secret for ``value`` if it exists and has not expired, else ``None``."""
        record = self._secrets.get(_digest(value))
        if record is None or self.clock() >= record.expires_at:
            return None
        return record

    def _purge(self) -> None:
        # Expired secrets can never be used again; dropping them on issue bounds memory.
        now = self.clock()
        for digest in [d for d, r in self._secrets.items() if now >= r.expires_at]:
            del self._secrets[digest]
