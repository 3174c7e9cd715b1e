"""A verified ``realtime.call.incoming``, and how its caller and SIP headers are stored.

The webhook intake (:mod:`broker.sip.calls`) audits the caller and the accept
(:mod:`broker.sip.accept`) stores caller and headers on the session row: both redact through
here, so what a line hashes is decided in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from broker.audit.redaction import FieldRedactor
from broker.sip.lines import Line, caller_number


@dataclass(frozen=True)
class Delivery:
    """A verified ``realtime.call.incoming``."""

    webhook_id: str
    call_id: str
    sip_headers: list[dict[str, str]]


def stored_caller(
    redactor: FieldRedactor, line: Line | None, headers: Sequence[Mapping[str, str]]
) -> str | None:
    """The caller's number as stored: a keyed hash if the line redacts it (or no line)."""
    caller = caller_number(headers)
    if caller is None:
        return None
    if line is None or line.redact_caller:
        return redactor.keyed_hash(caller)
    return caller


def stored_headers(
    redactor: FieldRedactor, line: Line, headers: Sequence[Mapping[str, str]]
) -> list[dict[str, str]]:
    """The call's SIP headers as stored: those the line names hashed, the rest as sent."""
    hashed = line.hashed_headers()
    return [
        {
            "name": h["name"],
            "value": (
                redactor.keyed_hash(h["value"]) if h["name"].lower() in hashed else h["value"]
            ),
        }
        for h in headers
    ]
