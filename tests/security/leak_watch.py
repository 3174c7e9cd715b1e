"""A watch for secrets in everything a test made observable: log records, every broker
reply (body and headers) and every stored session event, tool call and session row."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from tests.support.broker_server import RunningBroker

MIN_SECRET_CHARS = 8


@dataclass
class Exposure:
    """One place a secret was seen: ``where`` names it, ``text`` is what was seen there."""

    where: str
    text: str


@dataclass
class LeakWatch:
    """Collects texts and secrets; :meth:`leaks` says which secret showed where.

    A secret is allowed in exactly one place: the reply that issued it (a new client secret
    in the create-session reply, a new API key in the key-creation reply).
    """

    secrets: dict[str, str] = field(default_factory=dict)  # value -> label
    issued_in: dict[str, int] = field(default_factory=dict)  # value -> index of its reply
    exposures: list[Exposure] = field(default_factory=list)
    brokers: list[RunningBroker] = field(default_factory=list)
    """The brokers started while the watch ran (their replies are read at the end)."""

    def add_secret(self, value: str | None, label: str) -> None:
        if value and len(value) >= MIN_SECRET_CHARS:
            self.secrets.setdefault(value, label)

    def add_text(self, where: str, text: str) -> None:
        self.exposures.append(Exposure(where, text))

    def add_replies(self, broker: RunningBroker) -> None:
        """Every reply of ``broker``; secrets it issued are learned from their reply."""
        for index, reply in enumerate(broker.replies):
            where = f"reply #{index} ({reply.status})"
            for value, label in _issued_secrets(reply.text):
                self.add_secret(value, label)
                self.issued_in.setdefault(value, len(self.exposures))
            self.add_text(where, reply.text)
            self.add_text(where + " headers", json.dumps(reply.headers))

    def leaks(self) -> list[str]:
        """``"<label> in <where>"`` for every secret seen outside its issuing reply."""
        found = []
        for value, label in self.secrets.items():
            for index, exposure in enumerate(self.exposures):
                if value in exposure.text and self.issued_in.get(value) != index:
                    found.append(f"{label} in {exposure.where}")
        return found


def _issued_secrets(text: str) -> list[tuple[str, str]]:
    try:
        body = json.loads(text)
    except ValueError:
        return []
    if not isinstance(body, dict):
        return []
    issued = []
    secret = body.get("client_secret")
    if isinstance(secret, dict) and isinstance(secret.get("value"), str):
        issued.append((secret["value"], "a client secret"))
    if isinstance(body.get("key"), str):
        issued.append((body["key"], "an API key"))
    return issued


class RecordingHandler(logging.Handler):
    """Keeps every record's final text, traceback included, as a handler would write it."""

    def __init__(self, watch: LeakWatch) -> None:
        super().__init__(logging.DEBUG)
        self._watch = watch
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a broken record must not hide the others
            text = repr(record.__dict__)
        self._watch.add_text(f"log {record.name}", text)


def stored_texts(rows: list[Any]) -> list[str]:
    """The stored rows (SQLAlchemy Row objects) as JSON-ish text."""
    return [json.dumps([str(v) for v in row], default=str) for row in rows]
